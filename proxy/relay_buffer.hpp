// 64 KiB body relay buffers, recycled per thread.
//
// An exchange takes one when its body starts moving and gives it back when its
// client goes idle or away, at request rate (S2 and S5 open a client connection per
// request). glibc serves blocks this size from its unsorted and large bins, with
// splitting and consolidation, not from its per-thread cache; a short free list
// makes the round trip two pointer moves.
#pragma once

#include <array>
#include <cstddef>
#include <memory>

namespace upkeep {

class RelayBuffer {
 public:
  static constexpr std::size_t kSize = 64 * 1024;

  RelayBuffer() = default;
  RelayBuffer(const RelayBuffer&) = delete;
  RelayBuffer& operator=(const RelayBuffer&) = delete;
  ~RelayBuffer() { reset(); }

  char* get() {
    if (!p_) p_ = take();
    return p_;
  }
  // Gives the block back to this thread's free list (or to the allocator when full).
  void reset() noexcept {
    if (p_) give(p_);
    p_ = nullptr;
  }

 private:
  // Enough for the exchanges one thread has in flight at once in the benchmarks;
  // beyond it blocks go back to malloc, so an idle proxy holds at most 1 MiB here.
  static constexpr std::size_t kKept = 16;
  struct FreeList {
    std::array<char*, kKept> blocks{};
    std::size_t n = 0;
    ~FreeList() {
      while (n > 0)
        delete[] blocks[--n];
    }
  };
  static FreeList& free_list() noexcept {
    thread_local FreeList list;
    return list;
  }
  static char* take() {
    auto& l = free_list();
    if (l.n > 0) return l.blocks[--l.n];
    return new char[kSize];
  }
  static void give(char* p) noexcept {
    auto& l = free_list();
    if (l.n < kKept) {
      l.blocks[l.n++] = p;
      return;
    }
    delete[] p;
  }

  char* p_ = nullptr;
};

}  // namespace upkeep
