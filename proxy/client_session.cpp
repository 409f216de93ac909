#include "client_session.hpp"

#include <array>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include "access_log.hpp"
#include "client_stream.hpp"
#include "http_rules.hpp"
#include "log.hpp"
#include "metrics.hpp"
#include "relay_buffer.hpp"
#include "tunnel.hpp"
#include "upstream_h2.hpp"

namespace upkeep {
namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
using tcp = asio::ip::tcp;
constexpr std::size_t kBodyChunk = RelayBuffer::kSize;

// Body relay outcome: which side failed decides what happens to the upstream.
enum class BodyResult { ok, client_failed, client_malformed, upstream_failed };

bool is_parse_error(const error_code& ec) {
  return ec.category() == http::make_error_code(http::error::bad_chunk).category();
}

// What one attempt on an HTTP/2 connection left to do.
enum class H2Attempt {
  finished_keep,   // answered; the client connection may carry another request
  finished_close,  // answered (or the client is gone); close the client connection
  replay,          // the server never processed the stream: send it again
  retry_fresh,     // a reused connection died before any response byte (idempotent only)
};

// Upload bytes taken from the client are kept (up to a cap) so a stream the server
// refused can be sent again in full, even a POST (RFC 9113 §8.7).
constexpr std::size_t kReplayKeep = 64 * 1024;
// A request whose streams keep being refused (each GOAWAY'd connection taking a
// few) is replayed up to this often, and never for longer than queue.timeout.
constexpr int kMaxReplays = 100;

// The per-request state an HTTP/2 attempt needs and that survives a replay.
struct H2Exchange {
  const Snapshot* snap = nullptr;
  const RouteDecision* d = nullptr;
  AccessEntry* e = nullptr;
  ConnectionPool* pool = nullptr;
  const http::request_header<>* up = nullptr;
  http::request_parser<http::buffer_body>* parser = nullptr;
  bool reused = false;
  bool fresh_only = false;
  bool may_retry = false;
  unsigned version = 11;
  bool head = false;
  bool has_body = false;
  bool client_keep_alive = true;
  bool expect_continue = false;
  bool sent_continue = false;  // we answered Expect: 100-continue ourselves
  std::string kept;            // upload bytes read from the client so far
  bool kept_all = true;        // false once they outgrew kReplayKeep
  // Per attempt: the two halves of a full-duplex exchange tell each other.
  BodyResult upload = BodyResult::ok;  // how reading the client's body went
  bool upload_over = false;            // the upload half has finished
  bool response_over = false;          // the response half has finished
  bool response_started = false;       // a response byte went to the client
  std::shared_ptr<H2Conn> leased;      // the attempt's connection until released
  void release_stream() {
    if (leased) pool->release(std::exchange(leased, nullptr));
  }
};

class ClientSession : public std::enable_shared_from_this<ClientSession> {
 public:
  ClientSession(tcp::socket socket, std::shared_ptr<Runtime> rt)
      : stream_(std::move(socket)), rt_(std::move(rt)) {
    error_code ec;
    auto ep = stream_.socket().remote_endpoint(ec);
    if (!ec) client_ = ep.address().to_string() + ":" + std::to_string(ep.port());
    stream_.socket().set_option(tcp::no_delay(true), ec);
  }

  asio::awaitable<void> run();

 private:
  using RequestParser = http::request_parser<http::buffer_body>;

  asio::awaitable<bool> handle(RequestParser& parser, const Snapshot& snap);
  asio::awaitable<bool> exchange(RequestParser& parser, const Snapshot& snap, RouteDecision& d,
                                 AccessEntry& e);
  asio::awaitable<BodyResult> relay_request_body(RequestParser& parser, UpstreamConn& conn);
  // One client body chunk into body_buf(): {result, bytes, last}.
  asio::awaitable<std::tuple<BodyResult, std::size_t, bool>> read_client_chunk(
      RequestParser& parser);
  asio::awaitable<H2Attempt> exchange_h2(H2Exchange& x, std::shared_ptr<H2Conn> h2);
  asio::awaitable<void> upload_h2(H2Exchange& x, std::shared_ptr<H2Stream> st);
  asio::awaitable<H2Attempt> respond_h2(H2Exchange& x, std::shared_ptr<H2Stream> st);
  asio::awaitable<void> drain(std::shared_ptr<ConnectionPool> pool,
                              std::shared_ptr<UpstreamConn> conn, const UpstreamSettings& s);
  asio::awaitable<bool> send_interim(const http::response_header<>& h);
  // One gathered write of a response piece: the head when given, the body bytes
  // (chunk-framed when chunked) and, after the last, the chunked terminator with any
  // trailers. Writes nothing when there is nothing to send.
  asio::awaitable<error_code> write_piece(std::string_view head, std::span<const char> body,
                                          bool chunked, bool last,
                                          const std::vector<H2Field>* trailers = nullptr);
  asio::awaitable<void> send_error(errc e, unsigned version, bool close, AccessEntry& entry,
                                   std::string_view detail = {});

  ClientStream stream_;
  std::shared_ptr<Runtime> rt_;
  std::string client_ = "-";
  bool idle_ = false;  // waiting for the first byte of a request; only the strand touches it
  beast::flat_buffer buffer_;
  // Taken for an exchange and given back while the client idles, so an idle
  // keep-alive connection costs a few hundred bytes, not a body buffer.
  RelayBuffer body_buf_;
  char* body_buf() { return body_buf_.get(); }
  // The response half of a full-duplex HTTP/2 exchange, while body_buf() uploads.
  RelayBuffer resp_buf_;
  char* resp_buf() { return resp_buf_.get(); }
};

// The status line and fields of an HTTP/1.x head.
std::string serialize_head(const http::response_header<>& h, unsigned version) {
  std::string out;
  out.reserve(256);
  out += version >= 11 ? "HTTP/1.1 " : "HTTP/1.0 ";
  out += std::to_string(h.result_int());
  out += ' ';
  out += h.reason().empty() ? http::obsolete_reason(h.result()) : h.reason();
  out += "\r\n";
  append_fields(out, h);
  return out;
}

bool looks_like_tls(const beast::flat_buffer& b) {
  auto d = static_cast<const unsigned char*>(b.data().data());
  return b.size() >= 3 && d[0] == 0x16 && d[1] == 0x03 && d[2] <= 0x04;
}

asio::awaitable<void> ClientSession::run() {
  auto& reg = metrics::Registry::get();
  reg.downstream_connections.inc();
  reg.downstream_active.add(1);
  struct Active {
    std::shared_ptr<Runtime> rt;
    ~Active() {
      metrics::Registry::get().downstream_active.add(-1);
      rt->client_connections.fetch_sub(1);
    }
  } active{rt_};
  struct Hook {
    std::shared_ptr<Runtime> rt;
    uint64_t id;
    ~Hook() { rt->remove_drain_hook(id); }
  } hook{rt_, rt_->add_drain_hook([weak = weak_from_this()]() {
           if (auto self = weak.lock()) {
             asio::post(self->stream_.get_executor(), [self]() {
               if (self->idle_) self->stream_.socket().cancel();
             });
           }
         })};

  bool first = true;
  for (;;) {
    auto snap = rt_->current();
    const auto& limits = snap->router->config().limits;
    if (buffer_.max_size() == std::numeric_limits<std::size_t>::max()) {
      buffer_ = beast::flat_buffer(limits.max_header_bytes + kBodyChunk + 4096);
    }
    // Between requests a client may stay silent up to client_idle_timeout; once the
    // first byte arrives the whole header must follow within client_header_timeout.
    if (buffer_.size() == 0) {
      if (rt_->draining.load()) co_return;
      body_buf_.reset();
      resp_buf_.reset();
      buffer_.shrink_to_fit();
      stream_.expires_after(first ? limits.client_header_timeout : limits.client_idle_timeout);
      idle_ = true;
      auto [ec, n] = co_await stream_.async_read_some(buffer_.prepare(4096), use_tuple);
      idle_ = false;
      if (ec) co_return;
      buffer_.commit(n);
      if (first && looks_like_tls(buffer_)) {
        log::warn(
            "TLS ClientHello on the plain proxy port: the client was given https:// as its "
            "proxy URL; use http://",
            {{"client", client_}});
        co_return;
      }
    }
    first = false;
    RequestParser parser;
    parser.header_limit(static_cast<std::uint32_t>(limits.max_header_bytes));
    parser.body_limit(boost::none);
    stream_.expires_after(limits.client_header_timeout);
    auto [ec, n] = co_await http::async_read_header(stream_, buffer_, parser, use_tuple);
    stream_.expires_never();
    if (ec) {
      if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
          ec.category() != http::make_error_code(http::error::header_limit).category()) {
        co_return;  // closed, timed out, or a socket error: nobody to answer
      }
      AccessEntry e;
      e.client = client_;
      e.method = "-";
      e.url = "-";
      metrics::Registry::get().downstream_requests.inc();
      co_await send_error(
          ec == http::error::header_limit ? errc::header_too_large : errc::bad_request, 11, true, e,
          ec.message());
      co_return;
    }
    metrics::Registry::get().downstream_requests.inc();
    if (!co_await handle(parser, *snap)) co_return;
  }
}

// Returns whether the client connection may carry another request.
asio::awaitable<bool> ClientSession::handle(RequestParser& parser, const Snapshot& snap) {
  auto& req = parser.get();
  AccessEntry e;
  e.client = client_;
  e.method = std::string(req.method_string());
  e.url = std::string(req.target());
  const unsigned version = req.version();
  const bool body_pending = !parser.is_done();

  if (auto err = check_request_framing(req); err != errc::ok) {
    co_await send_error(err, version, true, e);
    co_return false;
  }
  if (has_own_via(req)) {
    co_await send_error(errc::loop_detected, version, body_pending, e);
    co_return !body_pending && req.keep_alive();
  }
  if (!snap.router->config().access.auth.empty()) {
    auto it = req.find(http::field::proxy_authorization);
    if (it == req.end() || !basic_credentials_ok(it->value(), snap.auth_lines)) {
      co_await send_error(errc::auth_required, version, body_pending, e);
      co_return !body_pending && req.keep_alive();
    }
  }
  if (req.method() == http::verb::connect) {
    auto routed = snap.router->route_connect(req.target());
    if (auto* err = std::get_if<errc>(&routed)) {
      const bool close = body_pending || *err == errc::bad_request;
      co_await send_error(*err, version, close, e);
      co_return !close && req.keep_alive();
    }
    e.protocol = "tunnel";
    e.origin = std::get<HostPort>(routed).to_string();
    if (body_pending) {  // a CONNECT carries no body; one that claims to is malformed
      co_await send_error(errc::bad_request, version, true, e);
      co_return false;
    }
    if (auto terr = co_await run_tunnel(stream_, buffer_, std::get<HostPort>(routed), snap, e);
        terr != errc::ok) {
      co_await send_error(terr, version, true, e);
      co_return false;
    }
    write_access_log(e);
    co_return false;
  }
  auto it_host = req.find(http::field::host);
  auto routed = snap.router->route(req.target(), it_host == req.end() ? "" : it_host->value());
  if (auto* err = std::get_if<errc>(&routed)) {
    // A 400 always closes (SPEC.md): after a malformed request nothing that follows
    // on the connection can be trusted to be framed as the client meant.
    const bool close = body_pending || *err == errc::bad_request;
    co_await send_error(*err, version, close, e);
    co_return !close && req.keep_alive();
  }
  co_return co_await exchange(parser, snap, std::get<RouteDecision>(routed), e);
}

asio::awaitable<bool> ClientSession::exchange(RequestParser& parser, const Snapshot& snap,
                                              RouteDecision& d, AccessEntry& e) {
  auto& req = parser.get();
  const auto& s = *d.settings;
  const unsigned version = req.version();
  const http::verb method = req.method();
  const bool head = method == http::verb::head;
  const bool has_body = !parser.is_done();
  const bool client_keep_alive = req.keep_alive();
  const bool expect_continue = has_body && beast::iequals(req[http::field::expect], "100-continue");
  // The one retry is safe only when nothing of the client's body has been consumed
  // and the method is idempotent; a POST is never sent twice.
  const bool may_retry = s.retry_idempotent && is_idempotent(method) && !has_body;

  http::request_header<> up = req.base();  // kept whole: a retry sends it again
  prepare_upstream_request(up, d.path, d.host_header);
  if (has_body && parser.chunked()) up.set(http::field::transfer_encoding, "chunked");

  auto pool = rt_->pools.get(d.origin, s, snap.router, req.target(), req[http::field::host]);
  auto& om = pool->metrics();
  e.origin = om.label;
  bool fresh_only = false;
  int replays = 0;
  const auto started = std::chrono::steady_clock::now();
  H2Exchange h2x;
  h2x.snap = &snap;
  h2x.d = &d;
  h2x.e = &e;
  h2x.pool = pool.get();
  h2x.up = &up;
  h2x.parser = &parser;
  h2x.may_retry = may_retry;
  h2x.version = version;
  h2x.head = head;
  h2x.has_body = has_body;
  h2x.client_keep_alive = client_keep_alive;
  h2x.expect_continue = expect_continue;

  for (;;) {
    Lease lease = co_await pool->async_acquire(fresh_only, asio::use_awaitable);
    e.queue_wait += lease.waited;
    if (lease.error != errc::ok) {
      co_await send_error(lease.error, version, has_body, e);
      co_return !has_body && client_keep_alive;
    }
    if (lease.h2) {
      H2Exchange& x = h2x;
      x.reused = lease.reused;
      x.fresh_only = fresh_only;
      auto r = co_await exchange_h2(x, std::move(lease.h2));
      if (r == H2Attempt::finished_keep) co_return true;
      if (r == H2Attempt::finished_close) co_return false;
      if (r == H2Attempt::retry_fresh) {
        fresh_only = true;
        metrics::Registry::get().retries.inc();
      } else if (++replays > kMaxReplays ||
                 std::chrono::steady_clock::now() - started > s.queue.timeout) {
        // Refused streams are always safe to send again, but a server that refuses
        // everything must not keep a request going round forever.
        co_await send_error(errc::upstream_closed, version, has_body, e,
                            "stream refused repeatedly");
        co_return false;
      }
      continue;
    }
    auto conn = std::move(lease.conn);
    e.conn_id = conn->id();
    e.reused = lease.reused;
    e.protocol = conn->protocol();
    om.requests_h1.inc();
    if (lease.reused) om.reused.inc();

    error_code ec = co_await conn->write_header(up, has_body);
    bool body_sent = !has_body;
    // Sends the request body; false when the exchange is over (already answered).
    auto send_body = [&]() -> asio::awaitable<bool> {
      auto r = co_await relay_request_body(parser, *conn);
      if (r == BodyResult::client_failed || r == BodyResult::client_malformed) {
        // HTTP/1.1 cannot abandon a request mid-body: the connection must go.
        pool->release(conn, false, pool::CloseReason::client_abort);
        if (r == BodyResult::client_malformed) {
          co_await send_error(errc::bad_request, version, true, e, "invalid request body framing");
        } else {
          e.error = "client_closed";
          write_access_log(e);
        }
        co_return false;
      }
      if (r == BodyResult::upstream_failed) ec = asio::error::broken_pipe;
      body_sent = true;
      co_return true;
    };
    // With Expect: 100-continue the body waits for the origin's 100, but only a
    // second (as curl does, RFC 9110 §10.1.1): an origin that ignores Expect would
    // otherwise wait for a body we hold back until response_timeout.
    if (!ec && has_body &&
        (!expect_continue || !co_await conn->wait_response(std::chrono::seconds(1)))) {
      if (!co_await send_body()) co_return false;
    }

    // Response head, relaying 1xx (RFC 9110 §15.2) and sending an expected body after 100.
    bool request_abandoned = false;  // final answer before the body was sent
    while (!ec) {
      ec = co_await conn->read_header(head, s.response_timeout);
      if (ec) break;
      const unsigned status = conn->response().result_int();
      if (status >= 200 || status == 101) break;
      if (version >= 11 && !co_await send_interim(conn->response())) {
        pool->release(conn, false, pool::CloseReason::client_abort);
        co_return false;
      }
      if (status == 100 && !body_sent && !co_await send_body()) co_return false;
    }
    if (!ec && !body_sent) request_abandoned = true;

    if (ec) {
      const bool stale = lease.reused && !conn->got_response_bytes() && ec != beast::error::timeout;
      pool->release(conn, false,
                    stale ? pool::CloseReason::server_closed : pool::CloseReason::error);
      if (stale && may_retry && !fresh_only) {
        fresh_only = true;
        metrics::Registry::get().retries.inc();
        log::debug("retrying on a fresh connection", {{"origin", e.origin}, {"url", e.url}});
        continue;
      }
      const errc err = ec == beast::error::timeout  ? errc::response_timeout
                       : conn->got_response_bytes() ? errc::upstream_protocol
                                                    : errc::upstream_closed;
      co_await send_error(err, version, !body_sent || has_body, e);
      co_return body_sent && !has_body && client_keep_alive;
    }

    // Final response.
    auto& rh = conn->response();
    const unsigned status = rh.result_int();
    std::optional<std::chrono::steady_clock::duration> hint;
    if (auto ka = keep_alive_timeout(rh)) {
      // Give the connection back a second before the server's own deadline so the
      // pool never hands out one the server is about to close.
      hint = *ka > std::chrono::seconds(1) ? *ka - std::chrono::seconds(1)
                                           : std::chrono::steady_clock::duration::zero();
    }
    const bool no_body = head || status == 204 || status == 304 || conn->response_done();
    const bool upstream_has_length = rh.count(http::field::content_length) != 0;
    bool close_client =
        !client_keep_alive || request_abandoned || rt_->draining.load() || status == 101;
    if (!no_body && !upstream_has_length && version < 11) close_client = true;
    prepare_downstream_response(rh, version, !close_client);
    const bool chunked = !no_body && !upstream_has_length && version >= 11;
    if (chunked) rh.set(http::field::transfer_encoding, "chunked");
    e.status = static_cast<int>(status);
    const std::string head_text = serialize_head(rh, version);

    stream_.expires_after(snap.router->config().limits.client_idle_timeout);
    // The upstream's part is over before the client sees the last byte, so the
    // connection goes back first: a client that sends its next request the moment
    // this response ends must find it in the pool, not open another one.
    auto release_done = [&]() {
      pool->release(conn, conn->reusable(),
                    conn->response_until_close() ? pool::CloseReason::server_closed
                                                 : pool::CloseReason::error,
                    hint);
    };
    if (no_body) {
      release_done();
      auto wec = co_await write_piece(head_text, {}, false, false);
      stream_.expires_never();
      write_access_log(e);
      co_return !wec && !close_client;
    }
    // The head goes out on its own first, so a slow or streamed body (long poll,
    // server-sent events) does not hold it back; unless body bytes came with it,
    // which then share its write (one syscall for a small response).
    for (bool first = true, head_only = !conn->has_buffered_bytes();; first = head_only = false) {
      std::size_t n = 0;
      bool last = false;
      if (!head_only) {
        auto [rec, got] = co_await conn->read_body(body_buf(), kBodyChunk);
        if (rec) {
          // The response is cut short upstream; the client can only learn it from the
          // connection closing before the framing completes.
          stream_.expires_never();
          pool->release(conn, false, pool::CloseReason::error);
          e.error = "upstream_closed";
          write_access_log(e);
          co_return false;
        }
        n = got;
        last = conn->response_done();
        if (last) release_done();
      }
      stream_.expires_after(snap.router->config().limits.client_idle_timeout);
      auto wec = co_await write_piece(first ? std::string_view(head_text) : std::string_view(),
                                      {body_buf(), n}, chunked, last);
      if (wec) {
        stream_.expires_never();
        e.error = "client_closed";
        write_access_log(e);
        if (!last) co_await drain(pool, conn, s);  // else it is back in the pool already
        co_return false;
      }
      e.bytes += n;
      if (last) break;
    }
    stream_.expires_never();
    write_access_log(e);
    co_return !close_client;
  }
}

asio::awaitable<std::tuple<BodyResult, std::size_t, bool>> ClientSession::read_client_chunk(
    RequestParser& parser) {
  const auto& limits = rt_->current()->router->config().limits;
  for (;;) {
    auto& body = parser.get().body();
    body.data = body_buf();
    body.size = kBodyChunk;
    stream_.expires_after(limits.client_idle_timeout);
    auto [ec, n] = co_await http::async_read_some(stream_, buffer_, parser, use_tuple);
    stream_.expires_never();
    if (ec == http::error::need_buffer) ec = {};
    if (ec) {
      co_return std::tuple{
          is_parse_error(ec) ? BodyResult::client_malformed : BodyResult::client_failed,
          std::size_t{0}, false};
    }
    const std::size_t got = kBodyChunk - body.size;
    const bool last = parser.is_done();
    if (got == 0 && !last) continue;
    co_return std::tuple{BodyResult::ok, got, last};
  }
}

asio::awaitable<BodyResult> ClientSession::relay_request_body(RequestParser& parser,
                                                              UpstreamConn& conn) {
  while (!parser.is_done()) {
    auto [r, got, last] = co_await read_client_chunk(parser);
    if (r != BodyResult::ok) co_return r;
    if (auto wec = co_await conn.write_body(body_buf(), got, last); wec) {
      co_return BodyResult::upstream_failed;
    }
  }
  co_return BodyResult::ok;
}

// The client stopped reading: finish reading the upstream body within the drain caps
// so the connection can go back to the pool instead of being thrown away.
asio::awaitable<void> ClientSession::drain(std::shared_ptr<ConnectionPool> pool,
                                           std::shared_ptr<UpstreamConn> conn,
                                           const UpstreamSettings& s) {
  auto& reg = metrics::Registry::get();
  if (conn->response_until_close()) {
    pool->release(conn, false, pool::CloseReason::client_abort);
    co_return;
  }
  if (auto rem = conn->content_length_remaining(); rem && *rem > s.drain.max_bytes) {
    reg.drain_aborted.inc();
    pool->release(conn, false, pool::CloseReason::drain_limit);
    co_return;
  }
  conn->expires_after(s.drain.max_time);
  uint64_t drained = 0;
  bool failed = false;
  while (!conn->response_done()) {
    auto [ec, n] = co_await conn->read_body(body_buf(), kBodyChunk);
    drained += n;
    if (ec || drained > s.drain.max_bytes) {
      failed = true;
      break;
    }
  }
  conn->expires_never();
  // Counted once the pool has the connection back, so whoever sees the counter move
  // can count on the drained connection being reusable already.
  const bool reused = !failed && conn->reusable();
  pool->release(conn, reused, pool::CloseReason::drain_limit, std::nullopt, [drained, reused]() {
    auto& r = metrics::Registry::get();
    r.drained_bytes.inc(drained);
    if (!reused) r.drain_aborted.inc();
  });
}

// An HTTP/1.1 request head as HTTP/2 fields (RFC 9113 §8.3.1): pseudo-headers
// first, Host as :authority, nothing connection-specific (§8.2.2). The body's
// framing is DATA frames, so Transfer-Encoding goes; Expect is answered here.
std::vector<H2Field> h2_request_fields(const http::request_header<>& up, bool tls,
                                       std::string_view path) {
  std::vector<H2Field> out;
  out.reserve(8 + static_cast<std::size_t>(std::distance(up.begin(), up.end())));
  out.push_back({":method", std::string(up.method_string())});
  out.push_back({":scheme", tls ? "https" : "http"});
  out.push_back({":authority", std::string(up[http::field::host])});
  out.push_back({":path", path.empty() ? std::string("/") : std::string(path)});
  for (const auto& f : up) {
    switch (f.name()) {
      case http::field::host:
      case http::field::transfer_encoding:
      case http::field::expect:
      case http::field::connection:
      case http::field::keep_alive:
      case http::field::proxy_connection:
      case http::field::upgrade:
        continue;
      default:
        break;
    }
    out.push_back({to_ascii_lower(f.name_string()), std::string(f.value())});
  }
  return out;
}

asio::awaitable<H2Attempt> ClientSession::exchange_h2(H2Exchange& x, std::shared_ptr<H2Conn> h2) {
  using namespace asio::experimental::awaitable_operators;
  auto& e = *x.e;
  auto& pool = *x.pool;
  auto& om = pool.metrics();
  e.conn_id = h2->id();
  e.reused = x.reused;
  e.protocol = "h2";
  om.requests_h2.inc();
  if (x.reused) om.reused.inc();
  x.upload = BodyResult::ok;
  x.upload_over = !x.has_body;
  x.response_over = false;
  x.response_started = false;

  auto st = h2->open(h2_request_fields(*x.up, x.d->origin.tls, x.d->path), x.has_body);
  // Every way out gives the stream back to the pool exactly once; respond_h2 does it
  // as soon as the origin's part is over (see the HTTP/1.1 path for why).
  x.leased = h2;
  struct Release {
    H2Exchange& x;
    ~Release() { x.release_stream(); }
  } release{x};

  H2Attempt r;
  if (!x.has_body) {
    st->start_response_timer(x.d->settings->response_timeout);
    r = co_await respond_h2(x, st);
  } else {
    if (x.expect_continue && !x.sent_continue && x.version >= 11) {
      // The body goes up as DATA at once; tell the client to send it now rather
      // than after its own Expect timeout.
      static constexpr std::string_view k100 = "HTTP/1.1 100 Continue\r\n\r\n";
      auto [wec, wn] = co_await asio::async_write(stream_, asio::buffer(k100), use_tuple);
      if (wec) {
        st->cancel();
        co_return H2Attempt::finished_close;
      }
      x.sent_continue = true;
    }
    // Full duplex (RFC 9113 §8.1): the response may begin, even end, before the
    // request body does; an origin that echoes would otherwise stall on its
    // flow-control window while we wait to finish the upload.
    auto both = co_await (upload_h2(x, st) && respond_h2(x, st));
    r = both;
  }
  const bool upload_done = x.parser->is_done();
  if (x.upload == BodyResult::client_malformed && !x.response_started) {
    co_await send_error(errc::bad_request, x.version, true, e, "invalid request body framing");
    co_return H2Attempt::finished_close;
  }
  if (x.upload != BodyResult::ok) {
    if (!x.response_started && x.upload == BodyResult::client_failed) {
      e.error = "client_closed";
      write_access_log(e);
    }
    co_return H2Attempt::finished_close;
  }
  if (r == H2Attempt::replay && x.has_body && !x.kept_all) {
    co_await send_error(errc::upstream_closed, x.version, true, e,
                        "stream refused after more of the body than upkeep keeps for a replay");
    co_return H2Attempt::finished_close;
  }
  if (r == H2Attempt::finished_keep && !upload_done) co_return H2Attempt::finished_close;
  co_return r;
}

// The request body, client to stream; runs beside respond_h2 on the session strand.
asio::awaitable<void> ClientSession::upload_h2(H2Exchange& x, std::shared_ptr<H2Stream> st) {
  auto& parser = *x.parser;
  H2Outcome wo = H2Outcome::ok;
  if (!x.kept.empty() || parser.is_done()) {
    // A replay: what the client already sent goes first.
    wo = co_await st->async_write_body(x.kept.data(), x.kept.size(), parser.is_done(),
                                       asio::use_awaitable);
  }
  while (wo == H2Outcome::ok && !parser.is_done() && !x.response_over) {
    auto [r, got, last] = co_await read_client_chunk(parser);
    if (r != BodyResult::ok) {
      // The response half ended the exchange and stopped this read; or the client
      // went away mid-body: RFC 9113 §8.1, reset only this stream.
      if (!x.response_over) {
        x.upload = r;
        st->cancel();
      }
      break;
    }
    if (x.kept_all) {
      if (x.kept.size() + got <= kReplayKeep) {
        x.kept.append(body_buf(), got);
      } else {
        x.kept_all = false;
        std::string().swap(x.kept);
      }
    }
    wo = co_await st->async_write_body(body_buf(), got, last, asio::use_awaitable);
  }
  if (wo == H2Outcome::ok && parser.is_done()) {
    st->start_response_timer(x.d->settings->response_timeout);
  }
  x.upload_over = true;
}

// The response, stream to client. Decides the attempt's outcome; exchange_h2 may
// still overrule it once the upload half is known.
asio::awaitable<H2Attempt> ClientSession::respond_h2(H2Exchange& x, std::shared_ptr<H2Stream> st) {
  auto& e = *x.e;
  struct Over {
    H2Exchange& x;
    ClientSession& self;
    ~Over() {
      x.response_over = true;
      // An upload still reading from the client has nowhere to go now.
      if (!x.upload_over) {
        error_code ignored;
        self.stream_.socket().cancel(ignored);
      }
    }
  } over{x, *this};

  // Response head, relaying 1xx to HTTP/1.1 clients (RFC 9110 §15.2).
  H2Head hd;
  for (;;) {
    hd = co_await st->async_read_head(asio::use_awaitable);
    if (hd.outcome != H2Outcome::ok) break;
    const unsigned status = hd.head.result_int();
    if (status >= 200) break;
    if (status == 101 || (status == 100 && x.sent_continue) || x.version < 11) continue;
    x.response_started = true;
    if (!co_await send_interim(hd.head)) {
      st->cancel();
      co_return H2Attempt::finished_close;
    }
  }
  if (hd.outcome != H2Outcome::ok) {
    st->cancel();
    if (x.upload != BodyResult::ok) co_return H2Attempt::finished_close;  // exchange_h2 answers
    if (hd.outcome == H2Outcome::refused) {
      log::debug("stream refused; sending it again", {{"origin", e.origin}, {"url", e.url}});
      co_return H2Attempt::replay;
    }
    if (hd.outcome == H2Outcome::conn_lost && x.reused && !hd.got_response_bytes && x.may_retry &&
        !x.fresh_only) {
      co_return H2Attempt::retry_fresh;
    }
    const errc err = hd.outcome == H2Outcome::timeout ? errc::response_timeout
                     : hd.got_response_bytes          ? errc::upstream_protocol
                                                      : errc::upstream_closed;
    x.response_started = true;
    const bool upload_done = x.parser->is_done();
    co_await send_error(err, x.version, !upload_done, e,
                        hd.outcome == H2Outcome::reset ? "stream reset by the origin" : "");
    co_return upload_done&& x.client_keep_alive ? H2Attempt::finished_keep
                                                : H2Attempt::finished_close;
  }

  auto& rh = hd.head;
  const unsigned status = rh.result_int();
  const bool no_body = x.head || status == 204 || status == 304;
  const bool has_length = rh.count(http::field::content_length) != 0;
  // A response that starts before the upload ends closes the client connection: the
  // rest of the request body would otherwise be read as the next request.
  bool close_client = !x.client_keep_alive || !x.parser->is_done() || rt_->draining.load();
  if (!no_body && !has_length && x.version < 11) close_client = true;
  prepare_downstream_response(rh, x.version, !close_client);
  const bool chunked = !no_body && !has_length && x.version >= 11;
  if (chunked) rh.set(http::field::transfer_encoding, "chunked");
  e.status = static_cast<int>(status);
  x.response_started = true;

  const auto client_timeout = x.snap->router->config().limits.client_idle_timeout;
  auto client_gone = [&]() {
    stream_.expires_never();
    st->cancel();
    e.error = "client_closed";
    write_access_log(e);
    return H2Attempt::finished_close;
  };
  // The head shares its write with whatever body bytes are already here, and goes
  // out alone otherwise, so a slow or streamed body does not hold it back.
  std::string head_text = serialize_head(rh, x.version);
  if (no_body) {
    x.release_stream();
    stream_.expires_after(client_timeout);
    if (auto wec = co_await write_piece(head_text, {}, false, false); wec) co_return client_gone();
  } else {
    char* buf = x.has_body ? resp_buf() : body_buf();
    for (bool first = true;; first = false) {
      auto rd = co_await st->async_read_body(buf, kBodyChunk, !first, asio::use_awaitable);
      if (rd.outcome != H2Outcome::ok) {
        // Cut short upstream: the client can only learn it from the connection
        // closing before the framing completes.
        stream_.expires_never();
        e.error = "upstream_reset";
        write_access_log(e);
        co_return H2Attempt::finished_close;
      }
      if (rd.eof) x.release_stream();
      stream_.expires_after(client_timeout);
      if (auto wec = co_await write_piece(first ? std::string_view(head_text) : std::string_view(),
                                          {buf, rd.n}, chunked, rd.eof, &st->trailers());
          wec)
        co_return client_gone();
      e.bytes += rd.n;
      if (rd.eof) break;
    }
  }
  stream_.expires_never();
  write_access_log(e);
  co_return close_client ? H2Attempt::finished_close : H2Attempt::finished_keep;
}

asio::awaitable<error_code> ClientSession::write_piece(std::string_view head,
                                                       std::span<const char> body, bool chunked,
                                                       bool last,
                                                       const std::vector<H2Field>* trailers) {
  std::array<asio::const_buffer, 4> bufs;
  std::size_t nb = 0;
  if (!head.empty()) bufs[nb++] = asio::buffer(head.data(), head.size());
  std::optional<ChunkFrame> frame;
  if (chunked) {
    std::string trailer_lines;
    if (last && trailers) {
      for (const auto& t : *trailers) {
        trailer_lines += t.name;
        trailer_lines += ": ";
        trailer_lines += t.value;
        trailer_lines += "\r\n";
      }
    }
    frame.emplace(body.size(), last, trailer_lines);
    if (!body.empty()) {
      bufs[nb++] = asio::buffer(frame->size_line().data(), frame->size_line().size());
    }
  }
  if (!body.empty()) bufs[nb++] = asio::buffer(body.data(), body.size());
  if (frame && !frame->tail.empty()) bufs[nb++] = asio::buffer(frame->tail);
  if (nb == 0) co_return error_code{};
  auto [ec, n] = co_await asio::async_write(stream_, std::span(bufs.data(), nb), use_tuple);
  co_return ec;
}

// 1xx heads go to HTTP/1.1 clients only (RFC 9110 §15.2: not to 1.0 clients).
asio::awaitable<bool> ClientSession::send_interim(const http::response_header<>& h) {
  std::string out = serialize_head(h, 11);
  auto [ec, n] = co_await asio::async_write(stream_, asio::buffer(out), use_tuple);
  co_return !ec;
}

asio::awaitable<void> ClientSession::send_error(errc err, unsigned version, bool close,
                                                AccessEntry& e, std::string_view detail) {
  const int status = http_status(err);
  e.status = status;
  e.error = std::string(reason_token(err));
  if (status != 0) {
    http::response<http::string_body> res{static_cast<http::status>(status),
                                          version >= 11 ? 11u : 10u};
    res.set(http::field::content_type, "text/plain; charset=utf-8");
    res.set("Upkeep-Error", reason_token(err));
    res.set(http::field::via, version >= 11 ? "1.1 upkeep" : "1.0 upkeep");
    if (err == errc::queue_full || err == errc::shutting_down)
      res.set(http::field::retry_after, "1");
    if (err == errc::auth_required) {
      res.set(http::field::proxy_authenticate, "Basic realm=\"upkeep\"");
    }
    std::string body = "upkeep: " + make_error_code(err).message();
    if (!detail.empty()) {
      body += " (";
      body += detail;
      body += ')';
    }
    res.body() = body + "\n";
    res.keep_alive(!close);
    res.prepare_payload();
    e.bytes = res.body().size();
    stream_.expires_after(std::chrono::seconds(10));
    co_await http::async_write(stream_, res, use_tuple);
    stream_.expires_never();
  }
  write_access_log(e);
}

}  // namespace

void start_client_session(tcp::socket socket, std::shared_ptr<Runtime> rt) {
  auto ex = socket.get_executor();  // the acceptor gave it its own strand
  auto session = std::make_shared<ClientSession>(std::move(socket), std::move(rt));
  asio::co_spawn(
      ex, [session]() { return session->run(); },
      [](std::exception_ptr ep) {
        if (!ep) return;
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& ex2) {
          log::error("client session failed", {{"error", ex2.what()}});
        }
      });
}

}  // namespace upkeep
