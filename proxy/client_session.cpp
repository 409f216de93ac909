#include "client_session.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/http/read.hpp>

#include "client_session_impl.hpp"
#include "http_rules.hpp"
#include "log.hpp"
#include "metrics.hpp"
#include "thread_cache.hpp"
#include "tunnel.hpp"

namespace upkeep::downstream {

namespace {

bool looks_like_tls(const beast::flat_buffer& b) {
  auto d = static_cast<const unsigned char*>(b.data().data());
  return b.size() >= 3 && d[0] == 0x16 && d[1] == 0x03 && d[2] <= 0x04;
}

// The access log shows a request from inside an intercepted CONNECT as the https://
// URL the client asked for.
std::string intercepted_url(std::string_view target, const HostPort& connect) {
  if (target.empty() || target.front() != '/') return std::string(target);
  const bool v6 = connect.host.find(':') != std::string::npos;
  std::string url = "https://";
  url += v6 ? "[" + connect.host + "]" : connect.host;
  if (connect.port != 443) url += ":" + std::to_string(connect.port);
  url += target;
  return url;
}

}  // namespace

bool is_parse_error(const error_code& ec) {
  return ec.category() == http::make_error_code(http::error::bad_chunk).category();
}

ThreadRoute& thread_route() {
  thread_local ThreadRoute t;
  return t;
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
      // Held while the client idles: 2 KiB, a size thread_cache hands out exactly.
      // Most request heads fit; a longer one grows the buffer in read_header (one
      // more read, its bytes already in the socket). 4 KiB here was half of an idle
      // client connection's memory (massif, 2,000 idle clients: 4,088 of ~7,500 B).
      constexpr std::size_t kIdleRead =
          thread_cache::class_size(thread_cache::class_for_request(2048 - 8));
      static_assert(kIdleRead == 2048 - 8);
      auto [ec, n] = co_await stream_.async_read_some(buffer_.prepare(kIdleRead), use_tuple);
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
    error_code ec = co_await read_header(parser);
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

// What http::async_read_header does, without its composed operation when the head
// is already in buffer_ (nearly always: it came with the read that ended the idle
// wait): the parser runs on the buffered bytes at once, and the socket is read only
// for a head that is not all there yet.
asio::awaitable<error_code> ClientSession::read_header(RequestParser& parser) {
  error_code ec;
  for (;;) {
    if (buffer_.size() > 0) {
      const std::size_t used = parser.put(buffer_.data(), ec);
      buffer_.consume(used);
      if (!ec && parser.is_header_done()) co_return ec;
      if (ec && ec != http::error::need_more) co_return ec;
      const bool more = !ec && used > 0;  // taken in parts: parse the rest
      ec = {};
      if (more) continue;
    }
    const std::size_t room = beast::read_size(buffer_, 65536);
    if (room == 0) co_return http::error::buffer_overflow;
    auto [rec, n] = co_await stream_.async_read_some(buffer_.prepare(room), use_tuple);
    if (rec == asio::error::eof) {
      if (!parser.got_some()) co_return http::error::end_of_stream;
      parser.put_eof(ec);
      co_return ec ? ec : http::error::partial_message;
    }
    if (rec) co_return rec;
    buffer_.commit(n);
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
  // Inside an intercepted CONNECT the client authenticated with the CONNECT.
  if (!intercepted_ && !snap.router->config().access.auth.empty()) {
    auto it = req.find(http::field::proxy_authorization);
    if (it == req.end() || !basic_credentials_ok(it->value(), snap.auth_lines)) {
      co_await send_error(errc::auth_required, version, body_pending, e);
      co_return !body_pending && req.keep_alive();
    }
  }
  if (req.method() == http::verb::connect) co_return co_await connect(parser, snap, e);
  auto it_host = req.find(http::field::host);
  const std::string_view host =
      it_host == req.end() ? std::string_view() : std::string_view(it_host->value());
  if (intercepted_) e.url = intercepted_url(req.target(), *intercepted_);
  auto routed = route_cached(last_route_, snap.router, req.target(), host,
                             intercepted_ ? &*intercepted_ : nullptr, &thread_route().route);
  if (auto* err = std::get_if<errc>(&routed)) {
    // A 400 always closes (SPEC.md): after a malformed request nothing that follows
    // on the connection can be trusted to be framed as the client meant.
    const bool close = body_pending || *err == errc::bad_request;
    co_await send_error(*err, version, close, e);
    co_return !close && req.keep_alive();
  }
  co_return co_await exchange(parser, snap, *std::get<RouteDecision*>(routed), e);
}

}  // namespace upkeep::downstream

namespace upkeep {

void start_client_session(asio::ip::tcp::socket socket, const asio::ip::tcp::endpoint& peer,
                          std::shared_ptr<Runtime> rt) {
  auto ex = socket.get_executor();  // the acceptor gave it its own strand
  auto session =
      std::make_shared<downstream::ClientSession>(std::move(socket), peer, std::move(rt));
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
