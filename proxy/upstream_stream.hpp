// The transport of one upstream connection: a TCP socket, with TLS done by OpenSSL
// straight on the socket's file descriptor.
//
// Not asio::ssl::stream: that one copies every byte through a BIO pair and two
// buffers of its own (four 17 KiB buffers per connection, ~70 KiB of the ~120 KiB an
// idle h2 origin cost, measured with massif), and runs a state machine of posted
// operations per read. Here a read is SSL_read on the non-blocking socket, and a
// wait for readiness only when OpenSSL says it needs one (as HAProxy and nghttpx do).
//
// One owner at a time (see upstream_h1.hpp); nothing here is thread-safe.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include <openssl/ssl.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>

#include "deadline.hpp"

namespace upkeep {

namespace asio = boost::asio;
using error_code = boost::system::error_code;

class UpstreamStream {
 public:
  using executor_type = asio::any_io_executor;
  using socket_type = asio::ip::tcp::socket;
  using clock = std::chrono::steady_clock;
  // What a non-blocking attempt needs before it can make progress.
  enum class Wait : unsigned char { none, read, write };

  UpstreamStream(executor_type ex, std::shared_ptr<asio::ssl::context> ctx, bool tls);
  ~UpstreamStream();
  UpstreamStream(const UpstreamStream&) = delete;
  UpstreamStream& operator=(const UpstreamStream&) = delete;

  executor_type get_executor() noexcept { return socket_.get_executor(); }
  socket_type& socket() noexcept { return socket_; }
  SSL* ssl() noexcept { return ssl_; }  // null for plain TCP
  bool tls() const noexcept { return ssl_ != nullptr; }
  // TLS bytes OpenSSL read from the socket but nobody has taken yet: a readiness
  // wait would not see them.
  bool has_pending() const noexcept { return ssl_ && SSL_has_pending(ssl_) == 1; }

  // What an idle connection (no exchange on it) has received, looked at without
  // blocking and through TLS: a TLS 1.3 server sends NewSessionTicket (and may send
  // KeyUpdate) after the handshake, so a readable socket is not a closing server.
  // OpenSSL processes such records here and the connection stays `quiet`. A
  // close_notify that came in the same read as the last response sits in OpenSSL's
  // buffer where no readiness wait sees it; it is found here too.
  enum class Idle : unsigned char { quiet, fin, close_notify, stray_bytes, error };
  Idle check_idle() noexcept;

  // On expiry the pending operations fail with beast::error::timeout and the
  // socket is shut down.
  void expires_at(clock::time_point t) { deadline_.expires_at(t); }
  void expires_after(clock::duration d) { deadline_.expires_after(d); }
  void expires_never() { deadline_.expires_never(); }

  asio::awaitable<error_code> connect(const std::vector<asio::ip::tcp::endpoint>& endpoints);
  // The client handshake; SNI, verification and ALPN are set on ssl() before.
  asio::awaitable<error_code> handshake();
  // Waits until the socket is ready for `w`, within the deadline.
  asio::awaitable<error_code> wait(Wait w);

  // One non-blocking attempt: the bytes moved, or 0 with either an error or `wait`
  // saying what the socket must become before the next attempt. A read's 0 without
  // error and Wait::none cannot happen (end of stream is asio::error::eof).
  std::size_t read_nb(void* data, std::size_t n, error_code& ec, Wait& wait);
  std::size_t write_nb(const void* data, std::size_t n, error_code& ec, Wait& wait);

  // Asio stream operations, for Beast's HTTP/1.1 algorithms.
  template <class MutableBuffers, class Token>
  auto async_read_some(const MutableBuffers& b, Token&& token) {
    return asio::async_compose<Token, void(error_code, std::size_t)>(
        Op<MutableBuffers, false>{this, b}, token, socket_);
  }
  template <class ConstBuffers, class Token>
  auto async_write_some(const ConstBuffers& b, Token&& token) {
    return asio::async_compose<Token, void(error_code, std::size_t)>(
        Op<ConstBuffers, true>{this, b}, token, socket_);
  }

 private:
  // Several small buffers (a request head and its body) go out as one TLS record and
  // one send: gathered into a per-thread scratch of up to this many bytes.
  static constexpr std::size_t kGather = 16 * 1024;
  static char* gather_scratch();
  error_code waited(error_code ec) const;

  template <class Buffers, bool Write>
  struct Op {
    UpstreamStream* s;
    Buffers buffers;
    bool started = false;  // an asynchronous step ran: completing now is not inline
    error_code result_ec{};
    std::size_t result_n = 0;
    bool done = false;

    template <class Self>
    void operator()(Self& self, error_code wait_ec = {}) {
      if (done) {  // the posted completion of an attempt that did not have to wait
        self.complete(result_ec, result_n);
        return;
      }
      if (wait_ec) {
        self.complete(s->waited(wait_ec), 0);
        return;
      }
      error_code ec;
      Wait w = Wait::none;
      std::size_t n = attempt(ec, w);
      if (n == 0 && !ec && w != Wait::none) {
        if (s->timed_out()) {
          self.complete(s->waited(asio::error::operation_aborted), 0);
          return;
        }
        started = true;
        s->socket_.async_wait(w == Wait::read ? socket_type::wait_read : socket_type::wait_write,
                              std::move(self));
        return;
      }
      if (started) {
        self.complete(ec, n);
        return;
      }
      // Asio's contract: never complete inside the initiating call.
      done = true;
      result_ec = ec;
      result_n = n;
      asio::post(std::move(self));
    }

    std::size_t attempt(error_code& ec, Wait& w) {
      const auto begin = asio::buffer_sequence_begin(buffers);
      const auto end = asio::buffer_sequence_end(buffers);
      if constexpr (Write) {
        const void* first = nullptr;
        std::size_t first_n = 0, total = 0, count = 0;
        for (auto it = begin; it != end && total < kGather; ++it) {
          asio::const_buffer b = *it;
          if (b.size() == 0) continue;
          if (!first) {
            first = b.data();
            first_n = b.size();
          }
          ++count;
          total += b.size();
        }
        if (!first) return 0;  // nothing to write: done at once
        if (count == 1 || first_n >= kGather) return s->write_nb(first, first_n, ec, w);
        // A retry after Wait::write gathers the same bytes again, as OpenSSL requires.
        char* g = gather_scratch();
        std::size_t off = 0;
        for (auto it = begin; it != end && off < kGather; ++it) {
          asio::const_buffer b = *it;
          const std::size_t k = std::min(b.size(), kGather - off);
          std::memcpy(g + off, b.data(), k);
          off += k;
        }
        return s->write_nb(g, off, ec, w);
      } else {
        for (auto it = begin; it != end; ++it) {
          asio::mutable_buffer b = *it;
          if (b.size() > 0) return s->read_nb(b.data(), b.size(), ec, w);
        }
        return 0;  // nothing asked for: nothing read, at once
      }
    }
  };

  bool timed_out() const noexcept { return deadline_.fired(); }

  socket_type socket_;
  std::shared_ptr<asio::ssl::context> ctx_;  // keeps the SSL_CTX's callbacks alive
  SSL* ssl_ = nullptr;
  Deadline deadline_;
};

}  // namespace upkeep
