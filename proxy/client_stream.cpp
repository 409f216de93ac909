#include "client_stream.hpp"

#include <openssl/err.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace upkeep {

ClientStream::~ClientStream() {
  if (ssl_) SSL_free(ssl_);
}

boost::asio::awaitable<error_code> ClientStream::accept(SSL* ssl) {
  namespace asio = boost::asio;
  ssl_ = ssl;
  tls_tune(ssl_);
  error_code ec;
  socket_.non_blocking(true, ec);  // SSL_accept below must not block the loop
  if (ec) co_return ec;
  if (SSL_set_fd(ssl_, socket_.native_handle()) != 1) {
    co_return error_code{static_cast<int>(ERR_get_error()), asio::error::get_ssl_category()};
  }
  for (;;) {
    ERR_clear_error();
    const int rv = SSL_accept(ssl_);
    if (rv == 1) {
      handshaken_ = true;
      co_return error_code{};
    }
    IoWait w = IoWait::none;
    ec = tls_error(ssl_, rv, w);
    if (ec) co_return ec;
    if (timed_out()) co_return asio::error::timed_out;
    auto [wec] = co_await socket_.async_wait(
        w == IoWait::write ? socket_type::wait_write : socket_type::wait_read,
        asio::as_tuple(asio::use_awaitable));
    if (wec) co_return timed_out() ? error_code(asio::error::timed_out) : wec;
  }
}

void ClientStream::shutdown_tls() noexcept {
  if (!ssl_ || !handshaken_) return;
  handshaken_ = false;
  ERR_clear_error();
  SSL_shutdown(ssl_);  // one non-blocking attempt: the alert is small
  ERR_clear_error();
}

}  // namespace upkeep
