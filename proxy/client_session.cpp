#include "client_session.hpp"

#include <array>
#include <string>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include "access_log.hpp"
#include "http_rules.hpp"
#include "log.hpp"
#include "metrics.hpp"
#include "tunnel.hpp"

namespace upkeep {
namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
using tcp = asio::ip::tcp;
constexpr std::size_t kBodyChunk = 64 * 1024;

// Body relay outcome: which side failed decides what happens to the upstream.
enum class BodyResult { ok, client_failed, client_malformed, upstream_failed };

bool is_parse_error(const error_code& ec) {
  return ec.category() == http::make_error_code(http::error::bad_chunk).category();
}

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
  asio::awaitable<void> drain(std::shared_ptr<ConnectionPool> pool,
                              std::shared_ptr<UpstreamConn> conn, const UpstreamSettings& s);
  asio::awaitable<bool> send_interim(const http::response_header<>& h);
  asio::awaitable<void> send_error(errc e, unsigned version, bool close, AccessEntry& entry,
                                   std::string_view detail = {});

  beast::tcp_stream stream_;
  std::shared_ptr<Runtime> rt_;
  std::string client_ = "-";
  bool idle_ = false;  // waiting for the first byte of a request; only the strand touches it
  beast::flat_buffer buffer_;
  // Allocated for an exchange and freed while the client idles, so an idle
  // keep-alive connection costs a few hundred bytes, not a body buffer.
  std::unique_ptr<char[]> body_buf_;
  char* body_buf() {
    if (!body_buf_) body_buf_ = std::make_unique_for_overwrite<char[]>(kBodyChunk);
    return body_buf_.get();
  }
};

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

  for (;;) {
    Lease lease = co_await pool->async_acquire(fresh_only, asio::use_awaitable);
    e.queue_wait += lease.waited;
    if (lease.error != errc::ok) {
      co_await send_error(lease.error, version, has_body, e);
      co_return !has_body && client_keep_alive;
    }
    auto conn = std::move(lease.conn);
    e.conn_id = conn->id();
    e.reused = lease.reused;
    e.protocol = conn->protocol();
    om.requests_h1.inc();
    if (lease.reused) om.reused.inc();

    http::request_header<> copy = up;
    error_code ec = co_await conn->write_header(std::move(copy), has_body);
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
    http::response<http::buffer_body> down{std::move(rh)};
    if (!no_body && !upstream_has_length && version < 11) close_client = true;
    prepare_downstream_response(down, version, !close_client);
    if (!no_body && !upstream_has_length && version >= 11) down.chunked(true);
    e.status = static_cast<int>(status);

    http::response_serializer<http::buffer_body> sr{down};
    stream_.expires_after(snap.router->config().limits.client_idle_timeout);
    if (no_body) {
      auto [wec, wn] = co_await http::async_write_header(stream_, sr, use_tuple);
      stream_.expires_never();
      const bool reusable = conn->reusable();
      pool->release(conn, reusable, pool::CloseReason::error, hint);
      write_access_log(e);
      co_return !wec && !close_client;
    }
    down.body().data = nullptr;
    down.body().more = true;
    // The head goes out on its own first, so a slow or streamed body (long poll,
    // server-sent events) does not hold it back.
    for (bool head_only = true;; head_only = false) {
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
        // An empty buffer must be passed as null: Beast would emit a zero-size chunk,
        // which is the chunked terminator, and then terminate the body again.
        down.body().data = n ? body_buf() : nullptr;
        down.body().size = n;
        down.body().more = !last;
      }
      stream_.expires_after(snap.router->config().limits.client_idle_timeout);
      auto [wec, wn] = head_only ? co_await http::async_write_header(stream_, sr, use_tuple)
                                 : co_await http::async_write(stream_, sr, use_tuple);
      if (wec == http::error::need_buffer) wec = {};
      if (wec) {
        stream_.expires_never();
        e.error = "client_closed";
        write_access_log(e);
        co_await drain(pool, conn, s);
        co_return false;
      }
      e.bytes += n;
      if (last) break;
    }
    stream_.expires_never();
    const bool reusable = conn->reusable();
    pool->release(
        conn, reusable,
        conn->response_until_close() ? pool::CloseReason::server_closed : pool::CloseReason::error,
        hint);
    write_access_log(e);
    co_return !close_client;
  }
}

asio::awaitable<BodyResult> ClientSession::relay_request_body(RequestParser& parser,
                                                              UpstreamConn& conn) {
  const auto& limits = rt_->current()->router->config().limits;
  while (!parser.is_done()) {
    auto& body = parser.get().body();
    body.data = body_buf();
    body.size = kBodyChunk;
    stream_.expires_after(limits.client_idle_timeout);
    auto [ec, n] = co_await http::async_read_some(stream_, buffer_, parser, use_tuple);
    stream_.expires_never();
    if (ec == http::error::need_buffer) ec = {};
    if (ec) co_return is_parse_error(ec) ? BodyResult::client_malformed : BodyResult::client_failed;
    const std::size_t got = kBodyChunk - body.size;
    const bool last = parser.is_done();
    if (got == 0 && !last) continue;
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

// 1xx heads go to HTTP/1.1 clients only (RFC 9110 §15.2: not to 1.0 clients).
asio::awaitable<bool> ClientSession::send_interim(const http::response_header<>& h) {
  std::string out = "HTTP/1.1 " + std::to_string(h.result_int()) + " " +
                    std::string(h.reason().empty() ? obsolete_reason(h.result()) : h.reason()) +
                    "\r\n";
  for (const auto& f : h) {
    out += f.name_string();
    out += ": ";
    out += f.value();
    out += "\r\n";
  }
  out += "\r\n";
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
