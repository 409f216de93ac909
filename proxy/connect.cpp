// CONNECT (SPEC.md "Requests it accepts", 3): answered 403 by policy, relayed blindly,
// or, with access.connect: intercept, answered 200 and the client's TLS terminated
// here with a certificate for the host, so the requests inside go through the pool.
//
// "Peek, then decide": the ClientHello is read with MSG_PEEK, so until the TLS
// handshake starts not one byte has been consumed and the same socket can still be
// relayed blindly to the origin, whatever the client sent.
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <cerrno>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include "client_session_impl.hpp"
#include "intercept/client_hello.hpp"
#include "intercept/host_name.hpp"
#include "intercept/interceptor.hpp"
#include "log.hpp"
#include "metrics.hpp"
#include "tunnel.hpp"

namespace upkeep::downstream {
namespace {

using metrics::HandshakeFailure;
using metrics::TunnelReason;

struct Peeked {
  enum class Kind { hello, not_tls, gone, timeout } kind;
  intercept::ClientHello hello;
};

// Peeks until one whole ClientHello is there (or it cannot be one), within `limit`.
// A readable socket stays readable while peeked bytes sit in it, so a hello that has
// only partly arrived is peeked again after a short, growing pause rather than on
// readiness; that is rare (a hello is usually one segment) and bounded.
asio::awaitable<Peeked> peek_client_hello(ClientStream& stream,
                                          std::chrono::steady_clock::duration limit) {
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + limit;
  std::vector<std::uint8_t> buf(intercept::kMaxClientHelloBytes);
  auto pause = std::chrono::milliseconds(1);
  asio::steady_timer timer(stream.get_executor());
  for (;;) {
    const ssize_t n =
        ::recv(stream.socket().native_handle(), buf.data(), buf.size(), MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) co_return Peeked{Peeked::Kind::gone, {}};
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      co_return Peeked{Peeked::Kind::gone, {}};
    }
    if (n > 0) {
      auto hello = intercept::parse_client_hello(
          std::span<const std::uint8_t>(buf.data(), static_cast<std::size_t>(n)));
      switch (hello.status) {
        case intercept::HelloStatus::ok:
          co_return Peeked{Peeked::Kind::hello, std::move(hello)};
        case intercept::HelloStatus::not_tls:
        case intercept::HelloStatus::malformed:
          co_return Peeked{Peeked::Kind::not_tls, {}};
        case intercept::HelloStatus::need_more:
          break;
      }
      if (static_cast<std::size_t>(n) >= buf.size()) co_return Peeked{Peeked::Kind::not_tls, {}};
    }
    if (clock::now() >= deadline) co_return Peeked{Peeked::Kind::timeout, {}};
    error_code ec;
    if (n <= 0) {
      // Nothing yet: wait for the first bytes on readiness.
      stream.expires_after(deadline - clock::now());
      std::tie(ec) = co_await stream.socket().async_wait(asio::ip::tcp::socket::wait_read,
                                                         asio::as_tuple(asio::use_awaitable));
      stream.expires_never();
      if (ec)
        co_return Peeked{clock::now() >= deadline ? Peeked::Kind::timeout : Peeked::Kind::gone, {}};
      continue;
    }
    timer.expires_after(std::min<clock::duration>(pause, deadline - clock::now()));
    std::tie(ec) = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    pause = std::min(pause * 2, std::chrono::milliseconds(50));
  }
}

// A failed server handshake, by who is to blame. A client that does not trust the
// CA says so with one of these alerts (OpenSSL, Go, Node, Python, Java), or just
// hangs up once it has seen the certificate.
HandshakeFailure classify_handshake(const error_code& ec) {
  if (ec == asio::error::timed_out) return HandshakeFailure::timeout;
  if (ec == asio::error::eof || ec == asio::ssl::error::stream_truncated ||
      ec == asio::error::connection_reset) {
    return HandshakeFailure::untrusted;
  }
  if (ec.category() == asio::error::get_ssl_category()) {
    switch (ERR_GET_REASON(static_cast<unsigned long>(ec.value()))) {
      case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
      case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
      case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
      case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
      case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
        return HandshakeFailure::untrusted;
      default:
        break;
    }
  }
  return HandshakeFailure::protocol;
}

}  // namespace

asio::awaitable<bool> ClientSession::connect(RequestParser& parser, const Snapshot& snap,
                                             AccessEntry& e) {
  auto& req = parser.get();
  const unsigned version = req.version();
  const bool body_pending = !parser.is_done();
  if (intercepted_) {
    // A CONNECT from inside an intercepted one: there is no origin to pool it for.
    co_await send_error(errc::method_not_supported, version, true, e,
                        "CONNECT inside an intercepted connection");
    co_return false;
  }
  auto routed = snap.router->route_connect(req.target());
  if (auto* err = std::get_if<errc>(&routed)) {
    const bool close = body_pending || *err == errc::bad_request;
    co_await send_error(*err, version, close, e);
    co_return !close && req.keep_alive();
  }
  const HostPort target = std::get<HostPort>(std::move(routed));
  e.protocol = "tunnel";
  e.origin = target.to_string();
  if (body_pending) {  // a CONNECT carries no body; one that claims to is malformed
    co_await send_error(errc::bad_request, version, true, e);
    co_return false;
  }
  std::optional<TunnelReason> reason = TunnelReason::connect;
  if (snap.router->config().access.connect == ConnectMode::intercept && snap.interceptor) {
    reason = snap.interceptor->policy(target.host);
  }
  // Bytes the client sent before our 200 cannot be peeked; such a client is relayed.
  if (!reason && buffer_.size() > 0) reason = TunnelReason::not_tls;
  if (!reason) co_return co_await intercept(target, snap, e);
  std::string detail;
  if (auto terr = co_await run_tunnel(stream_, buffer_, target, snap, e, *reason, detail);
      terr != errc::ok) {
    co_await send_error(terr, version, true, e,
                        terr == errc::parent_proxy_failed ? std::string_view(detail) : "");
    co_return false;
  }
  write_access_log(e);
  co_return false;
}

asio::awaitable<bool> ClientSession::intercept(const HostPort& target, const Snapshot& snap,
                                               AccessEntry& e) {
  auto& reg = metrics::Registry::get();
  auto& icp = *snap.interceptor;
  const auto& limits = snap.router->config().limits;
  static constexpr std::string_view established = "HTTP/1.1 200 Connection established\r\n\r\n";
  stream_.expires_after(limits.client_header_timeout);
  auto [wec, wn] = co_await asio::async_write(stream_, asio::buffer(established), use_tuple);
  stream_.expires_never();
  if (wec) co_return false;

  auto tunnel = [&](TunnelReason why) -> asio::awaitable<bool> {
    // The client has its 200: a failed connect can only close the connection.
    std::string detail;
    co_await run_tunnel(stream_, buffer_, target, snap, e, why, detail, true);
    write_access_log(e);
    co_return false;
  };
  const auto peeked = co_await peek_client_hello(stream_, limits.client_header_timeout);
  if (peeked.kind == Peeked::Kind::gone) co_return false;
  if (peeked.kind == Peeked::Kind::timeout) {
    // Silent after its 200 (a client waiting for the server to speak first, as
    // some protocols do): relay it, the origin may be what it waits for.
    co_return co_await tunnel(TunnelReason::not_tls);
  }
  if (peeked.kind == Peeked::Kind::not_tls) co_return co_await tunnel(TunnelReason::not_tls);
  const auto& hello = peeked.hello;
  // An HTTP/2-only client (gRPC) would get nothing it can speak from us.
  if (hello.has_alpn && !hello.offers_alpn("http/1.1"))
    co_return co_await tunnel(TunnelReason::alpn);
  auto name = intercept::normalize_host(hello.has_sni ? std::string_view(hello.sni)
                                                      : std::string_view(target.host));
  if (!name) co_return co_await tunnel(TunnelReason::name);
  SSL* ssl = icp.new_ssl(*name);
  if (!ssl) co_return co_await tunnel(TunnelReason::name);

  stream_.expires_after(limits.client_header_timeout);
  const error_code hec = co_await stream_.accept(ssl);
  stream_.expires_never();
  if (hec) {
    const auto why = classify_handshake(hec);
    reg.handshake_failed(why);
    if (why == HandshakeFailure::untrusted && icp.client_rejected(target.host)) {
      log::warn(
          "a client rejected upkeep's certificate: it does not trust upkeep's CA; run "
          "`upkeep ca env` (or `upkeep ca install`) for it. Until then this host is tunnelled "
          "blindly, unpooled, for fallback_ttl (0: not at all)",
          {{"host", target.host},
           {"client", client_},
           {"fallback_ttl_s", std::to_string(std::chrono::duration_cast<std::chrono::seconds>(
                                                 icp.settings().fallback_ttl)
                                                 .count())},
           {"error", hec.message()}});
    } else {
      log::debug("intercepted TLS handshake failed",
                 {{"host", target.host}, {"client", client_}, {"error", hec.message()}});
    }
    co_return false;
  }
  reg.intercepted.inc();
  intercepted_ = target;
  log::debug("intercepted", {{"host", target.host},
                             {"client", client_},
                             {"resumed", SSL_session_reused(stream_.ssl()) ? "true" : "false"}});
  co_return true;
}

}  // namespace upkeep::downstream
