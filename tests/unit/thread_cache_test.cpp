#include "thread_cache.hpp"

#include <doctest/doctest.h>

#include <malloc.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace tc = upkeep::thread_cache;

namespace {

std::size_t class_count() {
  std::size_t n = 0;
  while (tc::class_size(n) != tc::kMaxClassSize)
    ++n;
  return n + 1;
}

}  // namespace

TEST_CASE("every request size gets the smallest class that holds it") {
  const std::size_t classes = class_count();
  for (std::size_t c = 1; c < classes; ++c)
    REQUIRE(tc::class_size(c) > tc::class_size(c - 1));
  for (std::size_t n = 0; n <= tc::kMaxClassSize; ++n) {
    const std::size_t c = tc::class_for_request(n);
    REQUIRE(c < classes);
    REQUIRE(tc::class_size(c) >= n);
    if (c > 0) REQUIRE(tc::class_size(c - 1) < n);
  }
  CHECK(tc::class_for_request(tc::kMaxClassSize + 1) == tc::kNoClass);
}

TEST_CASE("a block's usable size names the largest class it can serve") {
  const std::size_t classes = class_count();
  for (std::size_t c = 0; c < classes; ++c)
    REQUIRE(tc::class_for_usable(tc::class_size(c)) == c);
  CHECK(tc::class_for_usable(tc::class_size(0) - 1) == tc::kNoClass);
  for (std::size_t u = tc::class_size(0); u < tc::kMaxClassSize + 4096; ++u) {
    const std::size_t c = tc::class_for_usable(u);
    REQUIRE(tc::class_size(c) <= u);
    if (c + 1 < classes) REQUIRE(tc::class_size(c + 1) > u);
  }
}

TEST_CASE("malloc hands out every class size exactly") {
  // What keeps freeing cheap: the usable size of a class block maps back to it.
  for (std::size_t c = 0; c < class_count(); ++c) {
    void* p = std::malloc(tc::class_size(c));
    REQUIRE(p != nullptr);
    CHECK(malloc_usable_size(p) == tc::class_size(c));
    std::free(p);
  }
}

TEST_CASE("a freed block serves the next request of its class") {
  void* p = tc::allocate(100);
  REQUIRE(p != nullptr);
  const auto before = tc::kept();
  tc::deallocate(p);
  CHECK(tc::kept().blocks == before.blocks + 1);
  REQUIRE(tc::class_for_request(100) == tc::class_for_request(102));
  void* q = tc::allocate(102);
  CHECK(q == p);
  CHECK(tc::kept().blocks == before.blocks);
  tc::deallocate(q, 102);
  void* r = tc::allocate(97);
  CHECK(r == p);
  tc::deallocate(r);
  // Well past the largest class: straight to malloc and back.
  void* big = tc::allocate(tc::kMaxClassSize + 4096);
  REQUIRE(big != nullptr);
  const auto with_big = tc::kept();
  tc::deallocate(big);
  CHECK(tc::kept().bytes == with_big.bytes);
}

TEST_CASE("what a thread keeps stays bounded") {
  std::vector<void*> blocks;
  for (int i = 0; i < 4000; ++i)
    blocks.push_back(tc::allocate(4000 + static_cast<std::size_t>(i % 9000)));
  for (void* p : blocks)
    tc::deallocate(p);
  const auto k = tc::kept();
  CHECK(k.bytes <= tc::kMaxKeptBytes);
  CHECK(k.bytes > tc::kMaxKeptBytes / 2);  // it does keep
  blocks.clear();
  for (int i = 0; i < 4000; ++i)
    blocks.push_back(tc::allocate(24));
  for (void* p : blocks)
    tc::deallocate(p);
  CHECK(tc::kept().bytes <= tc::kMaxKeptBytes);
}

TEST_CASE("reallocate keeps the bytes and frees the old block") {
  auto* p = static_cast<char*>(tc::allocate(50));
  std::memcpy(p, "0123456789", 10);
  auto* q = static_cast<char*>(tc::reallocate(p, 20000));
  REQUIRE(q != nullptr);
  CHECK(std::string(q, 10) == "0123456789");
  q[19999] = 'x';
  CHECK(tc::reallocate(q, 100) == q);  // shrinking keeps the block
  tc::deallocate(q);
}

TEST_CASE(
    "a block freed on another thread is kept there, and a thread's blocks go back "
    "when it ends") {
  std::vector<void*> mine;
  for (int i = 0; i < 40; ++i)  // within one class's share
    mine.push_back(tc::allocate(3000));
  const std::size_t in_use_before = mallinfo2().uordblks;
  std::size_t kept_there = 0;
  std::thread t([&] {
    for (void* p : mine)
      tc::deallocate(p);
    kept_there = tc::kept().blocks;
  });
  t.join();
  CHECK(kept_there == mine.size());
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  // The thread's cache was flushed at its end: the 40 blocks (120 KiB) are free.
  // (A sanitizer's allocator does not report through mallinfo2.)
  const std::size_t in_use_after = mallinfo2().uordblks;
  CHECK(in_use_after + 100 * 1024 < in_use_before);
#else
  (void)in_use_before;
#endif
}
