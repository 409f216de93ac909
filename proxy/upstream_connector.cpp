#include "upstream_connector.hpp"

#include <algorithm>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "tls_context.hpp"

namespace upkeep {
namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
using tcp = asio::ip::tcp;

}  // namespace

std::vector<uint8_t> address_bytes(const asio::ip::address& a) {
  if (a.is_v4()) {
    auto b = a.to_v4().to_bytes();
    return {b.begin(), b.end()};
  }
  auto b = a.to_v6().to_bytes();
  return {b.begin(), b.end()};
}

asio::awaitable<ConnectOutcome> connect_upstream(asio::any_io_executor ex, const Origin& origin,
                                                 const UpstreamSettings& settings,
                                                 std::shared_ptr<const Router> deny,
                                                 uint64_t conn_id) {
  ConnectOutcome out;
  const std::string dial_host = origin.connect_to ? origin.connect_to->host : origin.host;
  const uint16_t dial_port = origin.connect_to ? origin.connect_to->port : origin.port;
  const auto deadline = std::chrono::steady_clock::now() + settings.connect_timeout;

  // Resolution is not covered by tcp_stream's timeout; a timer cancels it.
  tcp::resolver resolver(ex);
  asio::steady_timer timer(ex);
  timer.expires_at(deadline);
  bool timed_out = false;
  timer.async_wait([&resolver, &timed_out](error_code ec) {
    if (!ec) {
      timed_out = true;
      resolver.cancel();
    }
  });
  auto [rec, results] = co_await resolver.async_resolve(dial_host, std::to_string(dial_port),
                                                        tcp::resolver::numeric_service, use_tuple);
  timer.cancel();
  if (rec) {
    out.error = timed_out ? errc::connect_timeout : errc::dns_failed;
    out.detail = timed_out ? "resolving " + dial_host + " timed out" : rec.message();
    co_return out;
  }
  std::vector<tcp::endpoint> endpoints;
  for (const auto& r : results) {
    if (deny && deny->address_denied(address_bytes(r.endpoint().address()))) continue;
    endpoints.push_back(r.endpoint());
  }
  if (endpoints.empty()) {
    out.error = errc::network_denied;
    out.detail = dial_host + " resolves only to denied networks";
    co_return out;
  }

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
  stream->expires_at(deadline);
  if (auto cec = co_await stream->connect(endpoints)) {
    out.error = cec == beast::error::timeout ? errc::connect_timeout : errc::connect_failed;
    out.detail = cec.message();
    co_return out;
  }

  std::string protocol = "http/1.1";
  if (origin.tls) {
    SSL* ssl = stream->ssl();
    std::string why;
    if (!configure_tls_peer(ssl, origin.host, origin.sni, origin.verify, why)) {
      out.error = errc::tls_failed;
      out.detail = why;
      co_return out;
    }
    auto wire = alpn_wire(origin.protocols);
    SSL_set_alpn_protos(ssl, reinterpret_cast<const unsigned char*>(wire.data()),
                        static_cast<unsigned>(wire.size()));
    if (auto hec = co_await stream->handshake()) {
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
  out.conn = std::make_shared<UpstreamConn>(conn_id, std::move(stream), protocol);
  co_return out;
}

}  // namespace upkeep
