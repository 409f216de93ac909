#include "tunnel.hpp"

#include <array>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/tcp_stream.hpp>

#include "metrics.hpp"

namespace upkeep {
namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
using tcp = asio::ip::tcp;

// One direction. On EOF it half-closes the destination so the peer sees the end
// of this direction while the other one keeps flowing.
asio::awaitable<void> pump(tcp::socket& from, tcp::socket& to, uint64_t& counter) {
  std::array<char, 16 * 1024> buf;
  for (;;) {
    auto [ec, n] = co_await from.async_read_some(asio::buffer(buf), use_tuple);
    if (n > 0) {
      auto [wec, wn] = co_await asio::async_write(to, asio::buffer(buf.data(), n), use_tuple);
      if (wec) {
        error_code ignored;
        from.shutdown(tcp::socket::shutdown_receive, ignored);
        to.close(ignored);
        co_return;
      }
      counter += n;
    }
    if (ec) {
      error_code ignored;
      if (ec == asio::error::eof) {
        to.shutdown(tcp::socket::shutdown_send, ignored);
      } else {
        to.close(ignored);
        from.close(ignored);
      }
      co_return;
    }
  }
}

}  // namespace

asio::awaitable<errc> run_tunnel(ClientStream& client, beast::flat_buffer& pending,
                                 const HostPort& target, const Snapshot& snap, AccessEntry& e,
                                 metrics::TunnelReason reason, bool answered) {
  using namespace asio::experimental::awaitable_operators;
  auto ex = client.get_executor();
  const auto& settings = snap.router->config().upstream;
  tcp::resolver resolver(ex);
  auto [rec, results] = co_await resolver.async_resolve(target.host, std::to_string(target.port),
                                                        tcp::resolver::numeric_service, use_tuple);
  if (rec) co_return errc::dns_failed;
  std::vector<tcp::endpoint> endpoints;
  for (const auto& r : results) {
    if (!snap.router->address_denied(address_bytes(r.endpoint().address()))) {
      endpoints.push_back(r.endpoint());
    }
  }
  if (endpoints.empty()) co_return errc::network_denied;
  beast::tcp_stream upstream(ex);
  upstream.expires_after(settings.connect_timeout);
  auto [cec, ep] = co_await upstream.async_connect(endpoints, use_tuple);
  upstream.expires_never();
  if (cec) co_return cec == beast::error::timeout ? errc::connect_timeout : errc::connect_failed;
  error_code ignored;
  upstream.socket().set_option(tcp::no_delay(true), ignored);

  metrics::Registry::get().tunnel(reason);
  e.status = 200;
  if (!answered) {
    static constexpr std::string_view established = "HTTP/1.1 200 Connection established\r\n\r\n";
    client.expires_after(std::chrono::seconds(10));
    auto [wec, wn] = co_await asio::async_write(client, asio::buffer(established), use_tuple);
    client.expires_never();
    if (wec) co_return errc::ok;
  }
  // Bytes the client sent after the CONNECT head (a TLS ClientHello, typically).
  if (pending.size() > 0) {
    auto [pec, pn] = co_await asio::async_write(upstream.socket(), pending.data(), use_tuple);
    pending.consume(pending.size());
    if (pec) co_return errc::ok;
  }
  uint64_t up_bytes = 0;
  uint64_t down_bytes = 0;
  co_await (pump(client.socket(), upstream.socket(), up_bytes) &&
            pump(upstream.socket(), client.socket(), down_bytes));
  e.bytes = down_bytes;
  co_return errc::ok;
}

}  // namespace upkeep
