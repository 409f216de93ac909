#include "thread_cache.hpp"

#include <malloc.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace upkeep::thread_cache {

namespace {

using detail::kClasses;
using detail::kPerGroup;
using detail::kSizes;
using detail::kSmall;
using detail::kSmallMax;

// One class may take this much of what a thread keeps (at least two blocks).
constexpr std::size_t kMaxClassBytes = 128 * 1024;
// ... that is, this many blocks: a compare on the free path instead of a multiply.
constexpr auto kMaxCount = [] {
  std::array<std::uint32_t, kClasses> a{};
  for (std::size_t c = 0; c < kClasses; ++c)
    a[c] = static_cast<std::uint32_t>(std::max<std::size_t>(2, kMaxClassBytes / kSizes[c]));
  return a;
}();
// Lists::bytes of a thread that is ending: over any budget, so keep() frees.
constexpr std::size_t kDeadBytes = std::size_t{1} << 62;
// glibc may hand out a chunk up to one minimum chunk larger than asked for.
constexpr std::size_t kSlack = 32;

struct Node {
  Node* next;
};

// Trivial, so it is usable at any point of a thread's life, its teardown included.
struct Lists {
  std::array<Node*, kClasses> head;
  std::array<std::uint32_t, kClasses> count;
  std::size_t bytes;  // kDeadBytes once the thread is ending: all goes to malloc
  bool registered;    // the Flusher below exists for this thread
};
constinit thread_local Lists lists{};

void flush(Lists& l) noexcept {
  for (std::size_t c = 0; c < kClasses; ++c) {
    while (Node* b = l.head[c]) {
      l.head[c] = b->next;
      std::free(b);
    }
    l.count[c] = 0;
  }
  l.bytes = 0;
}

struct Flusher {
  ~Flusher() {
    flush(lists);
    lists.bytes = kDeadBytes;
  }
};

void register_flusher() noexcept {
  static thread_local Flusher flusher;
  (void)flusher;
  lists.registered = true;
}

}  // namespace

std::size_t class_for_usable(std::size_t usable) noexcept {
  if (usable < kSizes[0]) return kNoClass;
  if (usable < kSizes[kSmall]) {
    return usable <= kSmallMax ? (usable - 8) / 16 - 1 : kSmall - 1;
  }
  if (usable >= kMaxClassSize) return kClasses - 1;
  const std::size_t chunk = usable + 8;                  // >= 1152
  const std::size_t g = std::bit_width(chunk) - 1 - 10;  // base <= chunk < 2 base
  const std::size_t base = std::size_t{1024} << g;
  const std::size_t j = (chunk - base) / (base / kPerGroup);  // 0..kPerGroup-1
  return j == 0 ? kSmall + kPerGroup * (g - 1) + (kPerGroup - 1) : kSmall + kPerGroup * g + (j - 1);
}

void* allocate(std::size_t n) noexcept {
  const std::size_t c = class_for_request(n);
  if (c == kNoClass) return std::malloc(n);
  Lists& l = lists;
  if (Node* b = l.head[c]) {
    l.head[c] = b->next;
    --l.count[c];
    l.bytes -= kSizes[c];
    return b;
  }
  return std::malloc(kSizes[c]);
}

namespace {

// Every free on the request path comes through here (tens per request): inlined.
[[gnu::always_inline]] inline void keep(void* p, std::size_t c) noexcept {
  Lists& l = lists;
  if (l.bytes + kSizes[c] > kMaxKeptBytes || l.count[c] >= kMaxCount[c]) {
    std::free(p);
    return;
  }
  if (!l.registered) register_flusher();
  auto* b = static_cast<Node*>(p);
  b->next = l.head[c];
  l.head[c] = b;
  ++l.count[c];
  l.bytes += kSizes[c];
}

}  // namespace

void deallocate(void* p) noexcept {
  if (p == nullptr) return;
  const std::size_t usable = malloc_usable_size(p);
  const std::size_t c = class_for_usable(usable);
  if (c == kNoClass || usable - kSizes[c] > kSlack) {
    std::free(p);
    return;
  }
  keep(p, c);
}

void deallocate(void* p, std::size_t n) noexcept {
  if (p == nullptr) return;
  const std::size_t c = class_for_request(n);
  if (c == kNoClass) {
    std::free(p);
    return;
  }
  keep(p, c);
}

void* reallocate(void* p, std::size_t n) noexcept {
  if (p == nullptr) return allocate(n);
  const std::size_t usable = malloc_usable_size(p);
  if (n <= usable) return p;
  void* q = allocate(n);
  if (q == nullptr) return nullptr;
  std::memcpy(q, p, usable);
  deallocate(p);
  return q;
}

Kept kept() noexcept {
  Kept k;
  for (std::size_t c = 0; c < kClasses; ++c)
    k.blocks += lists.count[c];
  k.bytes = lists.bytes == kDeadBytes ? 0 : lists.bytes;
  return k;
}

}  // namespace upkeep::thread_cache
