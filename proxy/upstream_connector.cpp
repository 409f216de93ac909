#include "upstream_connector.hpp"

#include <algorithm>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <boost/asio/ip/tcp.hpp>

#include "tls_context.hpp"

namespace upkeep {

asio::awaitable<ConnectOutcome> connect_upstream(asio::any_io_executor ex, const Origin& origin,
                                                 const UpstreamSettings& settings,
                                                 std::shared_ptr<const Router> deny,
                                                 std::shared_ptr<TlsSessions> sessions,
                                                 uint64_t conn_id) {
  ConnectOutcome out;
  const std::string dial_host = origin.connect_to ? origin.connect_to->host : origin.host;
  const uint16_t dial_port = origin.connect_to ? origin.connect_to->port : origin.port;
  const auto deadline = std::chrono::steady_clock::now() + settings.connect_timeout;

  std::shared_ptr<asio::ssl::context> ctx;
  try {
    ctx = client_tls_context(settings);
  } catch (const std::exception& e) {
    out.error = errc::tls_failed;
    out.detail = e.what();
    co_return out;
  }
  std::unique_ptr<UpstreamStream> stream;
  try {
    stream = std::make_unique<UpstreamStream>(ex, ctx, origin.tls);
  } catch (const std::bad_alloc&) {
    out.error = errc::tls_failed;
    out.detail = "cannot create a TLS session";
    co_return out;
  }
  auto dialled =
      co_await dial(stream->socket(), dial_host, dial_port, settings, deny.get(), deadline);
  if (dialled.error != errc::ok) {
    out.error = dialled.error;
    out.detail = std::move(dialled.detail);
    co_return out;
  }
  if (auto sec = stream->connected()) {
    out.error = errc::connect_failed;
    out.detail = sec.message();
    co_return out;
  }
  stream->expires_at(deadline);

  std::string protocol = "http/1.1";
  if (origin.tls) {
    SSL* ssl = stream->ssl();
    std::string why;
    if (!configure_tls_peer(ssl, origin.host, origin.sni, origin.verify, why)) {
      out.error = errc::tls_failed;
      out.detail = why;
      co_return out;
    }
    stream->resume_from(sessions);
    auto wire = alpn_wire(origin.protocols);
    SSL_set_alpn_protos(ssl, reinterpret_cast<const unsigned char*>(wire.data()),
                        static_cast<unsigned>(wire.size()));
    if (auto hec = co_await stream->handshake()) {
      // A session the server no longer takes could fail every later attempt too.
      if (sessions) sessions->forget();
      if (hec == beast::error::timeout) {
        out.error = errc::connect_timeout;
        out.detail = "TLS handshake timed out";
      } else {
        out.error = errc::tls_failed;
        long vr = SSL_get_verify_result(ssl);
        out.detail = vr != X509_V_OK ? X509_verify_cert_error_string(vr) : hec.message();
      }
      co_return out;
    }
    const unsigned char* sel = nullptr;
    unsigned sel_len = 0;
    out.resumed = SSL_session_reused(ssl) == 1;
    SSL_get0_alpn_selected(ssl, &sel, &sel_len);
    if (sel_len > 0) protocol.assign(reinterpret_cast<const char*>(sel), sel_len);
    // A server without ALPN speaks HTTP/1.1 (RFC 7301 §3.2); anything we did not
    // offer is a broken server.
    if (std::find(origin.protocols.begin(), origin.protocols.end(), protocol) ==
        origin.protocols.end()) {
      out.error = errc::tls_failed;
      out.detail = "server selected unsupported ALPN protocol " + protocol;
      co_return out;
    }
  }
  stream->expires_never();
  stream->tune_for(protocol);
  out.conn = std::make_shared<UpstreamConn>(conn_id, std::move(stream), protocol);
  co_return out;
}

}  // namespace upkeep
