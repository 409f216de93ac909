// The minted leaves, by host (SPEC.md: "Kept in an LRU of cert_cache entries;
// concurrent handshakes for one host share one mint"). A leaf per host rather than
// an SSL_CTX per host: a leaf is a few KiB, a context hundreds (DESIGN.md).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <future>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "intercept/cert_mint.hpp"

namespace upkeep::intercept {

// Thread-safe. The lock guards only the index: a mint runs outside it, so a slow
// mint for one host never stalls handshakes for others.
class CertCache {
 public:
  using Clock = LeafMinter::Clock;

  // capacity >= 1 (intercept.cert_cache). `clock` (tests) defaults to the minter's.
  CertCache(std::shared_ptr<const LeafMinter> minter, std::size_t capacity, Clock clock = {});

  // The cached leaf for `name`, or a new one. A leaf is re-minted once less than a
  // third of its lifetime is left (10 of its 30 days), so a client never sees one
  // about to expire; until the new one is ready, other callers keep getting the old,
  // still valid, one. Callers asking for a name whose mint is running wait for that
  // mint instead of starting another. Throws MintError (the name refused, the CA
  // expired); failures are not cached.
  std::shared_ptr<const Leaf> get(const CertName& name);

  // Whether `leaf` should be replaced at `now`: expired, or in its last third and a
  // new one would live longer (not when both would end with the CA).
  bool needs_refresh(const Leaf& leaf, std::chrono::system_clock::time_point now) const;

  std::size_t size() const;  // entries, including mints still running
  std::size_t capacity() const noexcept { return capacity_; }
  // upkeep_intercept_certs_minted_total
  std::uint64_t minted_total() const noexcept { return minted_.load(std::memory_order_relaxed); }

 private:
  using LeafPtr = std::shared_ptr<const Leaf>;
  struct Entry {
    std::string key;
    LeafPtr leaf;                         // null until the first mint is done
    std::shared_future<LeafPtr> pending;  // valid while a mint for it runs
    std::uint64_t generation = 0;         // which mint may fill this entry in
  };
  using List = std::list<Entry>;

  LeafPtr finish_mint(const std::string& key, std::uint64_t generation, const CertName& name,
                      std::promise<LeafPtr>& done);

  std::shared_ptr<const LeafMinter> minter_;
  std::size_t capacity_;
  Clock clock_;
  mutable std::mutex mu_;
  List lru_;  // most recently used first
  std::unordered_map<std::string, List::iterator> index_;
  std::uint64_t next_generation_ = 0;
  std::atomic<std::uint64_t> minted_{0};
};

}  // namespace upkeep::intercept
