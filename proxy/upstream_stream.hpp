// The transport of one upstream connection: a TCP socket, with TLS (the client side)
// done by OpenSSL straight on the socket's file descriptor (tls_io.hpp says why).
//
// One owner at a time (see upstream_h1.hpp); nothing here is thread-safe.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <memory>
#include <string_view>
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
#include "tls_io.hpp"
#include "tls_sessions.hpp"

namespace upkeep {

namespace asio = boost::asio;
using error_code = boost::system::error_code;

class UpstreamStream {
 public:
  using executor_type = asio::any_io_executor;
  using socket_type = asio::ip::tcp::socket;
  using clock = std::chrono::steady_clock;
  using Wait = IoWait;

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
  // Gives the record buffers (OpenSSL's, about 16 KiB to read, and the record
  // BIO's) back while the connection is idle or waiting. A no-op while a record is
  // partly read or written (OpenSSL >= 3.0.14 also checks decrypted, unread
  // records).
  void release_tls_buffers() noexcept;
  // Once ALPN has chosen (`protocol` as it names it). An exchange reads a head and
  // a body, often with the next read's bytes already there, and
  // SSL_MODE_RELEASE_BUFFERS (on the shared context) would free and re-allocate
  // the record buffers around each record. From now on they are freed only before
  // a readiness wait (NbOp, H2Conn's reader) and by release_tls_buffers() at idle.
  // HTTP/2 also reads through a record BIO (record_bio.hpp): its recv brings many
  // streams' small records at once, which OpenSSL's own read-ahead moves around
  // quadratically. HTTP/1.1 keeps the socket BIO, reading ahead 64 KiB: one
  // response in flight seldom leaves a second record behind the first.
  void tune_for(std::string_view protocol) noexcept;

  // On expiry the pending operations fail with beast::error::timeout and the
  // socket is shut down.
  void expires_at(clock::time_point t) { deadline_.expires_at(t); }
  void expires_after(clock::duration d) { deadline_.expires_after(d); }
  void expires_never() { deadline_.expires_never(); }
  // The connection changes hands (see Deadline::hand_over); the socket's own
  // executor stays the one it was opened with.
  void hand_over(const executor_type& new_owner) { deadline_.hand_over(new_owner); }

  // socket() was connected (by dial()): sets it up for the attempts below.
  error_code connected();
  // Offers the origin's kept TLS session in the handshake and keeps the new ones
  // there (before handshake()).
  void resume_from(std::shared_ptr<TlsSessions> sessions);
  // The client handshake; SNI, verification and ALPN are set on ssl() before.
  asio::awaitable<error_code> handshake();
  // Waits until the socket is ready for `w`, within the deadline (before_wait()
  // first).
  asio::awaitable<error_code> wait(Wait w);
  // What a read_nb that said Wait::read waits for when the next bytes are due soon
  // (HTTP/2 with streams open): they are received straight into the record BIO,
  // which costs no syscall before the socket is readable (record_bio.hpp). It keeps
  // the BIO's 16 KiB while waiting, so an idle connection uses wait() instead.
  // Without a record BIO, wait(Wait::read).
  asio::awaitable<error_code> receive();

  // One non-blocking attempt: the bytes moved, or 0 with either an error or `wait`
  // saying what the socket must become before the next attempt. A read's 0 without
  // error and Wait::none cannot happen (end of stream is asio::error::eof).
  std::size_t read_nb(void* data, std::size_t n, error_code& ec, Wait& wait);
  std::size_t write_nb(const void* data, std::size_t n, error_code& ec, Wait& wait);

  // Asio stream operations, for Beast's HTTP/1.1 algorithms.
  template <class MutableBuffers, class Token>
  auto async_read_some(const MutableBuffers& b, Token&& token) {
    return asio::async_compose<Token, void(error_code, std::size_t)>(
        NbOp<UpstreamStream, MutableBuffers, false>{this, b}, token, socket_);
  }
  template <class ConstBuffers, class Token>
  auto async_write_some(const ConstBuffers& b, Token&& token) {
    return asio::async_compose<Token, void(error_code, std::size_t)>(
        NbOp<UpstreamStream, ConstBuffers, true>{this, b}, token, socket_);
  }

  // For NbOp.
  bool timed_out() const noexcept { return deadline_.fired(); }
  error_code waited(error_code ec) const;
  // After tune_for(): gives the record buffers back (see ClientStream).
  void before_wait() noexcept {
    if (tuned_) release_tls_buffers();
  }

 private:
  socket_type socket_;
  std::shared_ptr<asio::ssl::context> ctx_;  // keeps the SSL_CTX's callbacks alive
  std::shared_ptr<TlsSessions> sessions_;    // outlives ssl_, which points to it
  SSL* ssl_ = nullptr;
  bool tuned_ = false;
  BIO* record_bio_ = nullptr;  // HTTP/2's read BIO (owned by ssl_), or null
  Deadline deadline_;
};

}  // namespace upkeep
