// What every session shares: the current config snapshot (swapped whole on reload,
// so an exchange always sees one consistent version), the pools and the drain flag.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "connection_pool.hpp"
#include "router.hpp"

namespace upkeep {

struct Snapshot {
  std::shared_ptr<const Router> router;
  std::vector<std::string> auth_lines;  // "user:password" from access.auth
};

struct Runtime {
  explicit Runtime(asio::io_context& ioc) : ioc(ioc), pools(ioc) {}
  asio::io_context& ioc;
  PoolRegistry pools;
  std::atomic<std::shared_ptr<const Snapshot>> snapshot;
  std::atomic<bool> draining{false};
  std::atomic<uint64_t> client_connections{0};

  std::shared_ptr<const Snapshot> current() const { return snapshot.load(); }
};

// Reads access.auth; throws ConfigError naming the key.
std::vector<std::string> load_auth_lines(const std::string& path);

}  // namespace upkeep
