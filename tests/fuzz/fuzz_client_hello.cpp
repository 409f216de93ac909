// fuzz_client_hello: hostile peeked bytes through parse_client_hello, as the CONNECT
// interception path feeds them: the whole input, and every prefix up to 64 bytes
// (what an early recv(MSG_PEEK) may see).
//
// Invariants (any violation traps):
//  - need_more: n < need <= kMaxClientHelloBytes for an n-byte input; and an input
//    of kMaxClientHelloBytes or more is never need_more;
//  - a result other than ok carries no data (only status and need);
//  - ok: sni is 1..255 bytes iff has_sni; alpn names are 1..255 bytes, present iff
//    has_alpn; legacy_version is 3.x;
//  - the same bytes parse to the same result twice, and appending bytes after an ok
//    hello does not change it;
//  - a terminal status (not_tls, malformed, ok) of a prefix is the whole input's, and
//    the same result when ok.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <span>
#include <vector>

#include "intercept/client_hello.hpp"

namespace {

using upkeep::intercept::ClientHello;
using upkeep::intercept::HelloStatus;
using upkeep::intercept::kMaxClientHelloBytes;
using upkeep::intercept::parse_client_hello;

[[noreturn]] void fail(const char* what, std::size_t n) {
  std::fprintf(stderr, "fuzz_client_hello invariant violated: %s (input of %zu bytes)\n", what, n);
  __builtin_trap();
}

#define CHECK(cond, n)           \
  do {                           \
    if (!(cond)) fail(#cond, n); \
  } while (0)

void check_one(const ClientHello& h, std::size_t n) {
  CHECK(h.status == HelloStatus::need_more || h.need == 0, n);
  if (h.status == HelloStatus::need_more) {
    CHECK(h.need > n, n);
    CHECK(h.need <= kMaxClientHelloBytes, n);
  }
  if (h.status != HelloStatus::ok) {
    ClientHello bare;
    bare.status = h.status;
    bare.need = h.need;
    CHECK(h == bare, n);
    return;
  }
  CHECK(h.has_sni == !h.sni.empty(), n);
  CHECK(h.sni.size() <= 255, n);
  CHECK(h.has_alpn == !h.alpn.empty(), n);
  for (const auto& p : h.alpn) {
    CHECK(!p.empty() && p.size() <= 255, n);
    CHECK(h.offers_alpn(p), n);
  }
  CHECK(h.legacy_version >> 8 == 3, n);
}

bool terminal(HelloStatus s) {
  return s != HelloStatus::need_more;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> bytes(data, size);
  const ClientHello whole = parse_client_hello(bytes);
  check_one(whole, size);
  CHECK(parse_client_hello(bytes) == whole, size);
  if (size >= kMaxClientHelloBytes) CHECK(whole.status != HelloStatus::need_more, size);

  for (std::size_t n = 0; n <= size && n <= 64; ++n) {
    const ClientHello h = parse_client_hello(bytes.first(n));
    check_one(h, n);
    if (terminal(h.status)) {
      CHECK(h.status == whole.status, n);
      if (h.status == HelloStatus::ok) CHECK(h == whole, n);
    }
  }

  if (whole.status == HelloStatus::ok) {
    std::vector<std::uint8_t> longer(bytes.begin(), bytes.end());
    longer.insert(longer.end(), {0x14, 0x03, 0x03, 0x00, 0x01, 0x01});
    CHECK(parse_client_hello(longer) == whole, size);
  }
  return 0;
}
