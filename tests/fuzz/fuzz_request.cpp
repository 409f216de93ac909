// fuzz_request: client bytes through the same steps as ClientSession (run, handle,
// exchange), without I/O. A request_parser<buffer_body> with the header limit reads
// the head, check_request_framing / has_own_via / Router::route decide, and
// prepare_upstream_request builds the upstream head; the body is then read in
// buffer_body pieces. Pipelined: the next request starts where the last ended, while
// the session would keep the connection (framing ok, keep-alive).
//
// Invariants once check_request_framing() == ok (any violation aborts):
//  - at most one Content-Length, at most one Transfer-Encoding, never both; the
//    parser's framing (chunked / content_length) agrees with those fields;
//  - every field name is a token, no value carries CR, LF, NUL or another CTL;
//  - a routed request's path and Host carry no CTL or whitespace;
//  - the upstream head has no hop-by-hop field (bar TE: trailers and the
//    Transfer-Encoding: chunked the session sets), one Host, our Via last, and
//    serialised by Beast it re-parses to the same method, target, fields and framing
//    (and passes check_request_framing again);
//  - a Content-Length body delivers exactly that many bytes.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>

#include <boost/asio/buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/write.hpp>

#include "config.hpp"
#include "http_rules.hpp"
#include "router.hpp"

namespace {

namespace http = boost::beast::http;
using RequestParser = http::request_parser<http::buffer_body>;

[[noreturn]] void fail(const char* what, std::string_view detail = {}) {
  std::fprintf(stderr, "fuzz_request invariant violated: %s\n%.*s\n", what,
               static_cast<int>(detail.size()), detail.data());
  std::abort();
}

#define CHECK(cond, detail)                  \
  do {                                       \
    if (!(cond)) fail(#cond, (detail));      \
  } while (0)

std::string_view sv(boost::beast::string_view s) { return {s.data(), s.size()}; }

bool is_tchar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool has_ctl(std::string_view v, bool allow_htab) {
  for (char c : v) {
    auto u = static_cast<unsigned char>(c);
    if ((u < 0x20 && !(allow_htab && c == '\t')) || u == 0x7f) return true;
  }
  return false;
}

bool has_ctl_or_space(std::string_view v) {
  for (char c : v) {
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7f) return true;
  }
  return false;
}

std::string head_text(const http::request_header<>& h) {
  std::ostringstream os;
  os << h;
  return os.str();
}

void check_fields_clean(const http::fields& f, const std::string& ctx) {
  for (const auto& fld : f) {
    auto name = sv(fld.name_string());
    auto value = sv(fld.value());
    CHECK(!name.empty(), ctx);
    for (char c : name) CHECK(is_tchar(c), ctx);
    CHECK(!has_ctl(value, true), ctx);
  }
}

const upkeep::Router& router() {
  static const upkeep::Router r(std::make_shared<const upkeep::Config>());
  return r;
}

// Parses one head from `rest`; false when it is incomplete or malformed (the session
// would wait / answer 400 or 431 and close).
bool parse_head(RequestParser& p, std::string_view& rest) {
  while (!p.is_header_done()) {
    boost::beast::error_code ec;
    auto n = p.put(boost::asio::buffer(rest.data(), rest.size()), ec);
    if (ec) return false;  // need_more at the end of input, or a parse error
    if (n == 0) return false;
    rest.remove_prefix(n);
  }
  return true;
}

void check_upstream(const http::request_header<>& req, const RequestParser& p,
                    const upkeep::RouteDecision& d) {
  const std::string ctx = head_text(req);
  CHECK(!d.path.empty(), ctx);
  CHECK(d.path.front() == '/' || d.path == "*", ctx + "path=" + d.path);
  CHECK(!has_ctl_or_space(d.path), ctx + "path=" + d.path);
  CHECK(!d.host_header.empty(), ctx);
  CHECK(!has_ctl_or_space(d.host_header), ctx + "host=" + d.host_header);

  const bool has_body = !p.is_done();
  http::request_header<> up = req;
  upkeep::prepare_upstream_request(up, d.path, d.host_header);
  if (has_body && p.chunked()) up.set(http::field::transfer_encoding, "chunked");

  const std::string uctx = ctx + "--- upstream:\n" + head_text(up);
  check_fields_clean(up, uctx);
  for (auto f : {http::field::connection, http::field::proxy_connection, http::field::keep_alive,
                 http::field::upgrade, http::field::proxy_authorization}) {
    CHECK(up.count(f) == 0, uctx);
  }
  CHECK(up.count(http::field::te) == 0 || up[http::field::te] == "trailers", uctx);
  CHECK(up.count(http::field::transfer_encoding) == (has_body && p.chunked() ? 1u : 0u), uctx);
  CHECK(up.count(http::field::host) == 1 && sv(up[http::field::host]) == d.host_header, uctx);
  CHECK(up.count(http::field::via) == 1, uctx);
  CHECK(sv(up[http::field::via]).ends_with(" upkeep"), uctx);
  CHECK(upkeep::has_own_via(up), uctx);

  // What goes on the wire parses back to the same request.
  const std::string wire = head_text(up);
  RequestParser again;
  again.header_limit(1u << 30);
  again.body_limit(boost::none);
  std::string_view w = wire;
  CHECK(parse_head(again, w), uctx + "(does not re-parse)");
  CHECK(w.empty(), uctx + "(bytes left after the re-parsed head)");
  const auto& r = again.get();
  CHECK(r.method() == up.method() && r.method_string() == up.method_string(), uctx);
  CHECK(sv(r.target()) == d.path, uctx);
  CHECK(r.version() == 11, uctx);
  CHECK(again.chunked() == (has_body && p.chunked()), uctx);
  if (has_body) CHECK(again.content_length() == p.content_length(), uctx);
  // Without a body the upstream must not announce one either.
  if (!has_body) {
    CHECK(again.is_done() || again.content_length() == boost::optional<std::uint64_t>(0), uctx);
  }
  auto a = up.begin();
  auto b = r.begin();
  for (; a != up.end() && b != r.end(); ++a, ++b) {
    CHECK(sv(a->name_string()) == sv(b->name_string()), uctx);
    CHECK(sv(a->value()) == sv(b->value()), uctx);
  }
  CHECK(a == up.end() && b == r.end(), uctx + "(field count changed)");
  CHECK(upkeep::check_request_framing(r) == upkeep::errc::ok, uctx + "(upstream head fails our own check)");
}

// One request; returns whether the session would read another from the same bytes.
bool one_request(std::string_view& rest, std::size_t chunk, char* body_buf) {
  RequestParser p;
  p.header_limit(static_cast<std::uint32_t>(upkeep::Limits{}.max_header_bytes));
  p.body_limit(boost::none);
  if (!parse_head(p, rest)) return false;

  auto& req = p.get();
  if (upkeep::check_request_framing(req) != upkeep::errc::ok) return false;

  const std::string ctx = head_text(req);
  std::size_t te = 0, cl = 0;
  for (const auto& f : req) {
    if (f.name() == http::field::transfer_encoding) ++te;
    if (f.name() == http::field::content_length) ++cl;
  }
  CHECK(te <= 1 && cl <= 1 && !(te && cl), ctx);
  check_fields_clean(req, ctx);
  CHECK(!p.chunked() || te == 1, ctx);
  CHECK(!p.content_length() || cl == 1 || p.is_done(), ctx);
  CHECK(req.count(http::field::host) <= 1, ctx);
  CHECK(req.version() >= 11 || te == 0, ctx);
  (void)upkeep::keep_alive_timeout(req);
  if (auto it = req.find(http::field::proxy_authorization); it != req.end()) {
    static const std::vector<std::string> users{"alice:s3cret", "bob:x\r"};
    (void)upkeep::basic_credentials_ok(sv(it->value()), users);
  }

  const bool own_via = upkeep::has_own_via(req);
  const bool body_pending = !p.is_done();
  if (req.method() == http::verb::connect) {
    (void)router().route_connect(sv(req.target()));
    return false;  // a tunnel, or an error and close: nothing after it is HTTP
  }
  if (!own_via) {
    auto it = req.find(http::field::host);
    auto routed = router().route(sv(req.target()), it == req.end() ? std::string_view{} : sv(it->value()));
    if (auto* d = std::get_if<upkeep::RouteDecision>(&routed)) check_upstream(req, p, *d);
  }

  // The body, in buffer_body pieces as relay_request_body reads it.
  std::uint64_t got_total = 0;
  const auto want = p.content_length();
  const std::size_t budget = rest.size() * 2 + 16;  // every step consumes or delivers
  for (std::size_t guard = 0; !p.is_done(); ++guard) {
    if (guard > budget) fail("body loop makes no progress", ctx);
    auto& body = p.get().body();
    body.data = body_buf;
    body.size = chunk;
    boost::beast::error_code ec;
    auto n = p.put(boost::asio::buffer(rest.data(), rest.size()), ec);
    if (ec == http::error::need_buffer) ec = {};
    if (ec) return false;  // need_more: the client stalls; or bad chunking: 400 + close
    rest.remove_prefix(n);
    const std::size_t got = chunk - body.size;
    CHECK(got <= chunk, ctx);
    got_total += got;
    if (n == 0 && got == 0 && !p.is_done()) return false;
  }
  if (want && body_pending) CHECK(got_total == *want, ctx);
  return req.keep_alive();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static constexpr std::size_t kChunks[] = {64 * 1024, 1, 7, 512};
  static char body_buf[64 * 1024];
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  const std::size_t chunk = kChunks[size % 4];
  for (int i = 0; i < 64 && !rest.empty(); ++i) {
    if (!one_request(rest, chunk, body_buf)) break;
  }
  return 0;
}
