#include <optional>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/read.hpp>

#include "client_session_impl.hpp"
#include "http_rules.hpp"
#include "log.hpp"
#include "metrics.hpp"

namespace upkeep::downstream {

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
  // The one retry is safe only for an idempotent method or a request carrying an
  // Idempotency-Key (the client declared a repeat safe), and only with its body, if
  // any, still in hand: a small body (known length, no Expect) is read whole first
  // for that. A POST without a key is never sent twice.
  const bool repeatable =
      s.retry_idempotent && (is_idempotent(method) || req.count("Idempotency-Key") != 0);
  bool buffered = false;  // the whole body is in h2x.kept
  H2Exchange h2x;
  if (repeatable && has_body && !expect_continue) {
    if (auto len = parser.content_length(); len && *len <= kReplayKeep) {
      while (!parser.is_done()) {
        auto [r, got, last] = co_await read_client_chunk(parser);
        if (r == BodyResult::client_malformed) {
          co_await send_error(errc::bad_request, version, true, e, "invalid request body framing");
          co_return false;
        }
        if (r != BodyResult::ok) {
          e.error = "client_closed";
          write_access_log(e);
          co_return false;
        }
        h2x.kept.append(body_buf(), got);
      }
      buffered = true;
    }
  }
  const bool may_retry = repeatable && (!has_body || buffered);
  // Trailers can reach an HTTP/1.1 client that asked for them (RFC 9110 §6.5).
  const bool client_trailers = version >= 11 && accepts_trailers(req);

  http::request_header<> up = req.base();  // kept whole: a retry sends it again
  prepare_upstream_request(up, d.path, d.host_header);
  if (has_body && parser.chunked()) up.set(http::field::transfer_encoding, "chunked");

  // The pool of the last exchange while the route is the same decision.
  if (!last_pool_ || last_pool_route_ != last_route_.generation || last_pool_->retired()) {
    ThreadRoute& tr = thread_route();
    const bool seeded =
        last_route_.seed_generation != 0 && last_route_.seed_generation == tr.route.generation;
    last_pool_ = seeded && tr.pool_generation == tr.route.generation ? tr.pool.lock() : nullptr;
    if (!last_pool_ || last_pool_->retired()) {
      last_pool_ = rt_->pools.get(d.origin, s, snap.router, req.target(), req[http::field::host]);
      if (seeded) {
        tr.pool = last_pool_;
        tr.pool_generation = tr.route.generation;
      }
    }
    last_pool_route_ = last_route_.generation;
  }
  const std::shared_ptr<ConnectionPool> pool = last_pool_;
  auto& om = pool->metrics();
  e.origin = om.label;
  bool fresh_only = false;
  int replays = 0;
  const auto started = std::chrono::steady_clock::now();
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
  h2x.client_trailers = client_trailers;

  const auto session_ex = co_await asio::this_coro::executor;
  for (;;) {
    Lease lease;
    if (!pool->try_acquire_now(fresh_only, session_ex, lease))
      lease = co_await pool->async_acquire(fresh_only, asio::use_awaitable);
    e.queue_wait += lease.waited;
    if (lease.error != errc::ok) {
      co_await send_error(lease.error, version, has_body, e, lease.detail);
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
      BodyResult r = BodyResult::ok;
      if (buffered) {
        if (co_await conn->write_body(h2x.kept.data(), h2x.kept.size(), true)) {
          r = BodyResult::upstream_failed;
        }
      } else {
        r = co_await relay_request_body(parser, *conn);
      }
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
    if (chunked) conn->mark_trailer_start();

    stream_.expires_after(snap.router->config().limits.client_idle_timeout);
    // The upstream's part is over before the client sees the last byte, so the
    // connection goes back first: a client that sends its next request the moment
    // this response ends must find it in the pool, not open another one.
    auto release_done = [&]() {
      pool->release(conn, conn->reusable(),
                    conn->response_until_close() || conn->server_closing()
                        ? pool::CloseReason::server_closed
                        : pool::CloseReason::error,
                    hint);
    };
    std::vector<H2Field> trailers;  // taken before the connection goes back
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
        if (last) {
          if (chunked) trailers = conn->trailers();
          release_done();
        }
      }
      stream_.expires_after(snap.router->config().limits.client_idle_timeout);
      auto wec = co_await write_piece(first ? std::string_view(head_text) : std::string_view(),
                                      {body_buf(), n}, chunked, last, &trailers);
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

}  // namespace upkeep::downstream
