// A client connection's socket with a deadline: what beast::tcp_stream gave the
// client session, without its timer operation around every read and write.
#pragma once

#include <chrono>
#include <utility>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "deadline.hpp"

namespace upkeep {

class ClientStream {
 public:
  using executor_type = boost::asio::any_io_executor;
  using socket_type = boost::asio::ip::tcp::socket;

  explicit ClientStream(socket_type socket)
      : socket_(std::move(socket)), deadline_(socket_.get_executor(), socket_) {}

  executor_type get_executor() noexcept { return socket_.get_executor(); }
  socket_type& socket() noexcept { return socket_; }

  // On expiry the pending operations fail with operation_aborted and the socket is
  // shut down.
  void expires_after(std::chrono::steady_clock::duration d) { deadline_.expires_after(d); }
  void expires_never() { deadline_.expires_never(); }

  template <class MutableBuffers, class Token>
  auto async_read_some(const MutableBuffers& b, Token&& token) {
    return socket_.async_read_some(b, std::forward<Token>(token));
  }
  template <class ConstBuffers, class Token>
  auto async_write_some(const ConstBuffers& b, Token&& token) {
    return socket_.async_write_some(b, std::forward<Token>(token));
  }

 private:
  socket_type socket_;
  Deadline deadline_;
};

}  // namespace upkeep
