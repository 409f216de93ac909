#include "relay_buffer.hpp"

#include <doctest/doctest.h>

#include <cstddef>
#include <string>
#include <vector>

using upkeep::BlockQueue;
using upkeep::relay_block::kSize;

namespace {
std::string pattern(std::size_t n, std::size_t seed) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i)
    s[i] = static_cast<char>('a' + (i * 7 + seed) % 26);
  return s;
}
}  // namespace

TEST_CASE("BlockQueue keeps bytes in order across block boundaries") {
  BlockQueue q;
  // Pieces sized like HTTP/2 DATA chunks, enough to span several blocks.
  std::string in;
  for (std::size_t i = 0; i < 20; ++i) {
    auto piece = pattern(16384 - 9 + i * 3, i);
    q.append(piece.data(), piece.size());
    in += piece;
  }
  CHECK(q.size() == in.size());
  REQUIRE(in.size() > 4 * kSize);

  // Taken out in reads of odd sizes, some crossing block edges.
  std::string out;
  std::vector<char> buf(kSize + 1000);
  for (std::size_t want : {std::size_t{1}, std::size_t{999}, kSize, kSize + 1000, std::size_t{7}}) {
    const std::size_t got = q.take(buf.data(), want);
    CHECK(got == want);
    out.append(buf.data(), got);
    CHECK(q.size() == in.size() - out.size());
  }
  // Appends after partial reads land behind what is left.
  auto tail = pattern(5000, 99);
  q.append(tail.data(), tail.size());
  in += tail;
  for (;;) {
    const std::size_t got = q.take(buf.data(), buf.size());
    if (got == 0) break;
    out.append(buf.data(), got);
  }
  CHECK(q.size() == 0);
  CHECK(out == in);
}

TEST_CASE("BlockQueue take is bounded by what is queued; clear empties it") {
  BlockQueue q;
  char buf[64];
  CHECK(q.take(buf, sizeof buf) == 0);
  q.append("hello", 5);
  CHECK(q.take(buf, sizeof buf) == 5);
  CHECK(std::string(buf, 5) == "hello");
  auto big = pattern(3 * kSize, 1);
  q.append(big.data(), big.size());
  CHECK(q.size() == big.size());
  q.clear();
  CHECK(q.size() == 0);
  CHECK(q.take(buf, sizeof buf) == 0);
  // Usable after clear.
  q.append("x", 1);
  CHECK(q.take(buf, 1) == 1);
  CHECK(buf[0] == 'x');
}
