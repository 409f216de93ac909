#include "intercept/cert_cache.hpp"

#include <stdexcept>

namespace upkeep::intercept {

CertCache::CertCache(std::shared_ptr<const LeafMinter> minter, std::size_t capacity, Clock clock)
    : minter_(std::move(minter)), capacity_(capacity), clock_(std::move(clock)) {
  if (!minter_) throw std::invalid_argument("CertCache: no minter");
  if (capacity_ == 0) throw std::invalid_argument("CertCache: capacity must be at least 1");
  if (!clock_) clock_ = [m = minter_.get()] { return m->now(); };
}

bool CertCache::needs_refresh(const Leaf& leaf, std::chrono::system_clock::time_point now) const {
  if (now >= leaf.not_after()) return true;
  const auto lifetime = leaf.not_after() - leaf.not_before();
  if (leaf.not_after() - now >= lifetime / 3) return false;
  return leaf.not_after() < minter_->ca().not_after();
}

std::size_t CertCache::size() const {
  std::lock_guard lk(mu_);
  return lru_.size();
}

std::shared_ptr<const Leaf> CertCache::get(const CertName& name) {
  // Refused before any entry is made: names that can never be minted must not evict
  // ones that were.
  minter_->check(name);
  // DNS names always hold a letter and no ':', IPv4 literals no letter: the prefix
  // only makes the separation explicit.
  std::string key = (name.is_ip ? "ip:" : "dns:") + name.name;
  const auto now = clock_();
  std::promise<LeafPtr> done;
  std::uint64_t generation = 0;
  {
    std::unique_lock lk(mu_);
    auto found = index_.find(key);
    if (found != index_.end()) {
      Entry& e = *found->second;
      lru_.splice(lru_.begin(), lru_, found->second);
      if (e.leaf && !needs_refresh(*e.leaf, now)) return e.leaf;
      if (e.pending.valid()) {
        if (e.leaf && now < e.leaf->not_after()) return e.leaf;  // refresh under way
        auto wait_for = e.pending;
        lk.unlock();
        return wait_for.get();
      }
    } else {
      lru_.push_front(Entry{key, nullptr, {}, 0});
      index_.emplace(key, lru_.begin());
      // An evicted entry whose mint still runs is fine: its waiters hold the future.
      while (lru_.size() > capacity_) {
        index_.erase(lru_.back().key);
        lru_.pop_back();
      }
    }
    Entry& e = *lru_.begin();
    generation = ++next_generation_;
    e.generation = generation;
    e.pending = done.get_future().share();
  }
  return finish_mint(key, generation, name, done);
}

// Mints with no lock held, then fills the entry in if it is still the one this mint
// was started for (it may have been evicted, or evicted and made anew, meanwhile).
std::shared_ptr<const Leaf> CertCache::finish_mint(const std::string& key, std::uint64_t generation,
                                                   const CertName& name,
                                                   std::promise<LeafPtr>& done) {
  LeafPtr leaf;
  try {
    leaf = minter_->mint(name);
  } catch (...) {
    {
      std::lock_guard lk(mu_);
      if (auto it = index_.find(key); it != index_.end() && it->second->generation == generation) {
        if (it->second->leaf) {
          it->second->pending = {};  // keep the old leaf; the next caller retries
        } else {
          lru_.erase(it->second);
          index_.erase(it);
        }
      }
    }
    done.set_exception(std::current_exception());
    throw;
  }
  minted_.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard lk(mu_);
    if (auto it = index_.find(key); it != index_.end() && it->second->generation == generation) {
      it->second->leaf = leaf;
      it->second->pending = {};
    }
  }
  done.set_value(leaf);
  return leaf;
}

}  // namespace upkeep::intercept
