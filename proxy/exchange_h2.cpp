#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include "client_session_impl.hpp"
#include "http_rules.hpp"
#include "log.hpp"
#include "text.hpp"

namespace upkeep::downstream {

namespace {

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

}  // namespace

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
  bool has_length = rh.count(http::field::content_length) != 0;
  // A length leaves no room for trailers in HTTP/1.1; a client that asked for them
  // gets the body chunked (SPEC.md "Trailers").
  if (has_length && x.client_trailers && !no_body) {
    rh.erase(http::field::content_length);
    has_length = false;
  }
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

}  // namespace upkeep::downstream
