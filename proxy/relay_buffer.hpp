// 64 KiB body relay blocks, recycled per thread.
//
// An exchange takes one when its body starts moving and gives it back when its
// client goes idle or away, at request rate (S2 and S5 open a client connection per
// request); an HTTP/2 stream queues the DATA its client has not taken yet in them.
// glibc serves blocks this size from its unsorted and large bins, with splitting,
// consolidation and heap trimming, not from its per-thread cache; a short free list
// makes the round trip two pointer moves and keeps the pages resident.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>
#include <vector>

namespace upkeep {

namespace relay_block {

inline constexpr std::size_t kSize = 64 * 1024;

// Enough for what one thread has in flight at once in the benchmarks (S4: 16
// streams); beyond it blocks go back to malloc, so an idle thread keeps <= 4 MiB.
inline constexpr std::size_t kKept = 64;

struct FreeList {
  std::array<char*, kKept> blocks{};
  std::size_t n = 0;
  ~FreeList() {
    while (n > 0)
      delete[] blocks[--n];
  }
};

inline FreeList& free_list() noexcept {
  thread_local FreeList list;
  return list;
}

inline char* take() {
  auto& l = free_list();
  if (l.n > 0) return l.blocks[--l.n];
  return new char[kSize];
}

inline void give(char* p) noexcept {
  auto& l = free_list();
  if (l.n < kKept) {
    l.blocks[l.n++] = p;
    return;
  }
  delete[] p;
}

}  // namespace relay_block

// One block, taken on first use.
class RelayBuffer {
 public:
  static constexpr std::size_t kSize = relay_block::kSize;

  RelayBuffer() = default;
  RelayBuffer(const RelayBuffer&) = delete;
  RelayBuffer& operator=(const RelayBuffer&) = delete;
  ~RelayBuffer() { reset(); }

  char* get() {
    if (!p_) p_ = relay_block::take();
    return p_;
  }
  void reset() noexcept {
    if (p_) relay_block::give(p_);
    p_ = nullptr;
  }

 private:
  char* p_ = nullptr;
};

// A byte queue in blocks: its memory follows what is queued, and each block goes
// back to the free list as soon as it has been read out.
class BlockQueue {
 public:
  BlockQueue() = default;
  BlockQueue(const BlockQueue&) = delete;
  BlockQueue& operator=(const BlockQueue&) = delete;
  ~BlockQueue() { clear(); }

  std::size_t size() const noexcept { return size_; }

  void append(const char* data, std::size_t n) {
    while (n > 0) {
      if (blocks_.empty() || blocks_.back().end == relay_block::kSize)
        blocks_.push_back({relay_block::take(), 0, 0});
      auto& b = blocks_.back();
      const std::size_t k = std::min(n, relay_block::kSize - b.end);
      std::memcpy(b.p + b.end, data, k);
      b.end += k;
      data += k;
      n -= k;
      size_ += k;
    }
  }

  // Moves up to n bytes from the front into out; returns how many.
  std::size_t take(char* out, std::size_t n) {
    std::size_t got = 0;
    std::size_t done = 0;  // blocks emptied
    for (auto& b : blocks_) {
      if (got == n) break;
      const std::size_t k = std::min(n - got, b.end - b.begin);
      std::memcpy(out + got, b.p + b.begin, k);
      b.begin += k;
      got += k;
      if (b.begin < b.end) break;
      relay_block::give(b.p);
      ++done;
    }
    blocks_.erase(blocks_.begin(), blocks_.begin() + static_cast<std::ptrdiff_t>(done));
    size_ -= got;
    return got;
  }

  void clear() noexcept {
    for (auto& b : blocks_)
      relay_block::give(b.p);
    blocks_.clear();
    size_ = 0;
  }

 private:
  struct Block {
    char* p;
    std::size_t begin;
    std::size_t end;
  };
  std::vector<Block> blocks_;
  std::size_t size_ = 0;
};

}  // namespace upkeep
