#include "tunnel.hpp"

#include <array>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include "dial.hpp"
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
                                 metrics::TunnelReason reason, std::string& detail, bool answered) {
  using namespace asio::experimental::awaitable_operators;
  auto ex = client.get_executor();
  const auto& settings = snap.router->settings_for(target.host, target.port);
  tcp::socket upstream(ex);
  auto dialled = co_await dial(upstream, target.host, target.port, settings, snap.router.get(),
                               std::chrono::steady_clock::now() + settings.connect_timeout);
  if (dialled.error != errc::ok) {
    detail = std::move(dialled.detail);
    co_return dialled.error;
  }
  error_code ignored;
  upstream.set_option(tcp::no_delay(true), ignored);

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
    auto [pec, pn] = co_await asio::async_write(upstream, pending.data(), use_tuple);
    pending.consume(pending.size());
    if (pec) co_return errc::ok;
  }
  uint64_t up_bytes = 0;
  uint64_t down_bytes = 0;
  co_await (pump(client.socket(), upstream, up_bytes) &&
            pump(upstream, client.socket(), down_bytes));
  e.bytes = down_bytes;
  co_return errc::ok;
}

}  // namespace upkeep
