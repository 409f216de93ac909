// Per-thread free lists in front of malloc, for the blocks the request path takes
// and gives back at request rate: coroutine frames, Beast's header fields and read
// buffers, nghttp2's stream state. glibc's own per-thread cache holds 7 blocks of
// each size up to 1 KiB; past that, each malloc and free walks its bins (splitting,
// coalescing, consolidation), which callgrind put at a fifth of an HTTP/2
// request's instructions.
//
// Blocks are plain malloc blocks sized to a class (so free() can always take one,
// from any thread), and a block freed on another thread joins that thread's lists.
// What a thread keeps is bounded (kMaxKeptBytes), and goes back to malloc when the
// thread ends.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>

// Sanitizer builds leave the process's allocations to the sanitizer's allocator,
// which must see every block to find misuse.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UPKEEP_UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define UPKEEP_UNDER_SANITIZER 1
#endif
#endif

namespace upkeep::thread_cache {

#ifdef UPKEEP_UNDER_SANITIZER
inline constexpr bool kInUse = false;
#else
inline constexpr bool kInUse = true;
#endif

// Blocks larger than this go straight to malloc.
// Larger blocks are few and long-lived (nghttp2's 16 KiB frame buffer per
// connection, say): exact sizes from malloc waste nothing.
inline constexpr std::size_t kMaxClassSize = 16 * 1024 - 8;
// What one thread keeps on its free lists, at most.
inline constexpr std::size_t kMaxKeptBytes = 1024 * 1024;

// A block of at least n bytes (16-aligned); nullptr when malloc fails.
void* allocate(std::size_t n) noexcept;
// A block from allocate() or malloc(), or nullptr.
void deallocate(void* p) noexcept;
// The same, for a block allocate(n) gave: the class comes from n, not the block.
void deallocate(void* p, std::size_t n) noexcept;
// Like realloc(p, n) for a block from allocate().
void* reallocate(void* p, std::size_t n) noexcept;

// Size classes. They are sizes glibc hands out exactly (usable = 16k + 8 on
// 64-bit), so a block's malloc_usable_size() names its class again when it is
// freed: 64 classes 16 bytes apart up to 1032, then eight per doubling up to
// 16 KiB - 8 (at most 12.5% rounding).
inline constexpr std::size_t kNoClass = static_cast<std::size_t>(-1);

namespace detail {
inline constexpr std::size_t kSmall = 64;
inline constexpr std::size_t kSmallMax = 16 * kSmall + 8;  // 1032
inline constexpr std::size_t kGroups = 4;                  // chunk bases 1 KiB .. 8 KiB
inline constexpr std::size_t kPerGroup = 8;
inline constexpr std::size_t kClasses = kSmall + kPerGroup * kGroups;

constexpr std::size_t size_of_class(std::size_t c) {
  if (c < kSmall) return 16 * (c + 1) + 8;
  const std::size_t g = (c - kSmall) / kPerGroup;
  const std::size_t j = (c - kSmall) % kPerGroup + 1;
  const std::size_t base = std::size_t{1024} << g;
  return base + j * (base / kPerGroup) - 8;
}

inline constexpr auto kSizes = [] {
  std::array<std::uint32_t, kClasses> a{};
  for (std::size_t c = 0; c < kClasses; ++c)
    a[c] = static_cast<std::uint32_t>(size_of_class(c));
  return a;
}();
static_assert(kSizes[kSmall - 1] == kSmallMax);
static_assert(kSizes[kClasses - 1] == kMaxClassSize);
}  // namespace detail

constexpr std::size_t class_size(std::size_t cls) noexcept {
  return detail::kSizes[cls];
}

// The smallest class that holds n bytes.
constexpr std::size_t class_for_request(std::size_t n) noexcept {
  using namespace detail;
  if (n <= kSmallMax) return n <= 24 ? 0 : (n - 8 + 15) / 16 - 1;
  if (n > kMaxClassSize) return kNoClass;
  const std::size_t chunk = n + 8;                           // > 1040
  const std::size_t g = std::bit_width(chunk - 1) - 1 - 10;  // base < chunk <= 2 base
  const std::size_t base = std::size_t{1024} << g;
  const std::size_t step = base / kPerGroup;
  const std::size_t j = (chunk - base + step - 1) / step;  // 1..kPerGroup
  return kSmall + kPerGroup * g + (j - 1);
}

// The largest class a block with `usable` bytes can serve.
std::size_t class_for_usable(std::size_t usable) noexcept;

// What the calling thread keeps now: blocks and bytes.
struct Kept {
  std::size_t blocks = 0;
  std::size_t bytes = 0;
};
Kept kept() noexcept;

}  // namespace upkeep::thread_cache
