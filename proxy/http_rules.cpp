#include "http_rules.hpp"
