#include "pool_core.hpp"
