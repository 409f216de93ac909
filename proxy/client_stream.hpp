// A client connection's socket with a deadline: what beast::tcp_stream gave the
// client session, without its timer operation around every read and write. After
// an intercepted CONNECT it speaks TLS as the server, OpenSSL straight on the socket
// (tls_io.hpp), the same way UpstreamStream speaks it to origins.
#pragma once

#include <chrono>
#include <span>
#include <utility>

#include <openssl/ssl.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "deadline.hpp"
#include "tls_io.hpp"

namespace upkeep {

class ClientStream {
 public:
  using executor_type = boost::asio::any_io_executor;
  using socket_type = boost::asio::ip::tcp::socket;

  explicit ClientStream(socket_type socket)
      : socket_(std::move(socket)), deadline_(socket_.get_executor(), socket_) {}
  ~ClientStream();
  ClientStream(const ClientStream&) = delete;
  ClientStream& operator=(const ClientStream&) = delete;

  executor_type get_executor() noexcept { return socket_.get_executor(); }
  socket_type& socket() noexcept { return socket_; }
  bool tls() const noexcept { return ssl_ != nullptr; }
  SSL* ssl() noexcept { return ssl_; }

  // On expiry the pending operations fail with operation_aborted and the socket is
  // shut down.
  void expires_after(std::chrono::steady_clock::duration d) { deadline_.expires_after(d); }
  void expires_never() { deadline_.expires_never(); }

  // From now on the connection is TLS with upkeep as the server: runs the handshake
  // (within the deadline) on `ssl`, which carries the certificate and is owned here
  // from this call on, whatever the outcome.
  boost::asio::awaitable<error_code> accept(SSL* ssl);
  // Sends close_notify if the handshake was done, without waiting for the peer's.
  void shutdown_tls() noexcept;

  template <class MutableBuffers, class Token>
  auto async_read_some(const MutableBuffers& b, Token&& token) {
    if (ssl_) {
      return boost::asio::async_compose<Token, void(error_code, std::size_t)>(
          NbOp<ClientStream, MutableBuffers, false>{this, b}, token, socket_);
    }
    return socket_.async_read_some(b, std::forward<Token>(token));
  }
  template <class ConstBuffers, class Token>
  auto async_write_some(const ConstBuffers& b, Token&& token) {
    if (ssl_) {
      return boost::asio::async_compose<Token, void(error_code, std::size_t)>(
          NbOp<ClientStream, ConstBuffers, true>{this, b}, token, socket_);
    }
    return socket_.async_write_some(b, std::forward<Token>(token));
  }

  // One non-blocking attempt to write `bufs` (gathered, as async_write_some would):
  // the bytes taken, 0 when the socket must drain first; an error in ec. Needs the
  // socket in non-blocking mode (ClientSession sets it).
  std::size_t try_write(std::span<const boost::asio::const_buffer> bufs, error_code& ec) {
    if (ssl_) {
      IoWait w = IoWait::none;
      return NbOp<ClientStream, std::span<const boost::asio::const_buffer>, true>{this, bufs}
          .attempt(ec, w);
    }
    const std::size_t n = socket_.write_some(bufs, ec);
    if (ec == boost::asio::error::would_block || ec == boost::asio::error::try_again) ec = {};
    return n;
  }

  // For NbOp: TLS only.
  std::size_t read_nb(void* data, std::size_t n, error_code& ec, IoWait& wait) {
    return tls_read_nb(ssl_, data, n, ec, wait);
  }
  std::size_t write_nb(const void* data, std::size_t n, error_code& ec, IoWait& wait) {
    return tls_write_nb(ssl_, data, n, ec, wait);
  }
  bool timed_out() const noexcept { return deadline_.fired(); }
  error_code waited(error_code ec) const noexcept { return ec; }
  // A connection that waits (between requests, mostly) holds no record buffers;
  // one whose next request is already in the socket keeps them. A no-op while a
  // record is partly read or written.
  void before_wait() noexcept { SSL_free_buffers(ssl_); }

 private:
  socket_type socket_;
  Deadline deadline_;
  SSL* ssl_ = nullptr;
  bool handshaken_ = false;
};

}  // namespace upkeep
