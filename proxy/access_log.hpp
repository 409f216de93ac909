// One line per request (SPEC.md, "Access log"), text key=value or JSON.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace upkeep {

struct AccessEntry {
  std::chrono::system_clock::time_point start = std::chrono::system_clock::now();
  std::chrono::steady_clock::time_point start_mono = std::chrono::steady_clock::now();
  std::string client;
  std::string method;
  std::string url;
  int status = 0;
  uint64_t bytes = 0;    // response body bytes sent to the client
  std::string origin;    // "-" when no upstream was involved
  std::string protocol;  // h2, http/1.1, tunnel or "-"
  uint64_t conn_id = 0;
  bool reused = false;
  std::chrono::steady_clock::duration queue_wait{};
  std::string error;  // Upkeep-Error token, or empty
};

void write_access_log(const AccessEntry& e);

}  // namespace upkeep
