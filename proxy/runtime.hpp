// What every session shares: the current config snapshot (swapped whole on reload,
// so an exchange always sees one consistent version), the pools and the drain flag.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "connection_pool.hpp"
#include "router.hpp"

namespace upkeep {

namespace intercept {
class Interceptor;
}

struct Snapshot {
  std::shared_ptr<const Router> router;
  std::vector<std::string> auth_lines;  // "user:password" from access.auth
  // Set when access.connect is intercept.
  std::shared_ptr<intercept::Interceptor> interceptor;
};

struct Runtime {
  Runtime(asio::io_context& ioc, unsigned threads)
      : ioc(ioc), pools(ioc, threads), threads(threads) {}
  asio::io_context& ioc;
  PoolRegistry pools;
  std::atomic<std::shared_ptr<const Snapshot>> snapshot;
  std::atomic<bool> draining{false};
  std::atomic<uint64_t> client_connections{0};
  const unsigned threads;  // event-loop threads (fixed for the process)

  std::shared_ptr<const Snapshot> current() const { return snapshot.load(); }

  // Sessions register a hook that closes them if they sit idle between requests, so
  // a drain is not held up by keep-alive clients that have nothing in flight.
  uint64_t add_drain_hook(std::function<void()> fn) {
    std::lock_guard lock(hooks_mu_);
    hooks_.emplace(++next_hook_, std::move(fn));
    return next_hook_;
  }
  void remove_drain_hook(uint64_t id) {
    std::lock_guard lock(hooks_mu_);
    hooks_.erase(id);
  }
  void run_drain_hooks() {
    std::lock_guard lock(hooks_mu_);
    for (auto& [id, fn] : hooks_)
      fn();
  }

 private:
  std::mutex hooks_mu_;
  std::unordered_map<uint64_t, std::function<void()>> hooks_;
  uint64_t next_hook_ = 0;
};

// Reads access.auth; throws ConfigError naming the key.
std::vector<std::string> load_auth_lines(const std::string& path);

}  // namespace upkeep
