// The process: io_context threads, the proxy and admin listeners, signals and the
// two-stage shutdown (stop accepting and let exchanges finish, then cut what is
// left after shutdown_grace).
#pragma once

#include <string>

#include "config.hpp"

namespace upkeep {

// Runs until shutdown; returns the process exit code. config_path ("" for the
// embedded default) and overrides are kept for SIGHUP reloads.
int run_server(Config cfg, const std::string& config_path, const Overrides& overrides);

// systemd notification ($NOTIFY_SOCKET), without libsystemd. No-op when unset.
void sd_notify_state(const std::string& state);

}  // namespace upkeep
