#include "upstream_stream.hpp"

#include <cerrno>
#include <climits>

#include <sys/socket.h>

#include <openssl/err.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/error.hpp>

namespace upkeep {
namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

// SSL_get_error after a failed call, as an Asio error or a wait.
error_code tls_error(SSL* ssl, int rv, UpstreamStream::Wait& wait) {
  const int saved_errno = errno;
  switch (SSL_get_error(ssl, rv)) {
    case SSL_ERROR_WANT_READ:
      wait = UpstreamStream::Wait::read;
      return {};
    case SSL_ERROR_WANT_WRITE:
      wait = UpstreamStream::Wait::write;
      return {};
    case SSL_ERROR_ZERO_RETURN:  // close_notify
      return asio::error::eof;
    case SSL_ERROR_SYSCALL: {
      unsigned long e = ERR_get_error();
      if (e != 0) return {static_cast<int>(e), asio::error::get_ssl_category()};
      if (saved_errno != 0) return {saved_errno, boost::system::system_category()};
      return asio::ssl::error::stream_truncated;  // TCP closed without close_notify
    }
    default: {
      unsigned long e = ERR_get_error();
      if (ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
        return asio::ssl::error::stream_truncated;
      }
      return {static_cast<int>(e), asio::error::get_ssl_category()};
    }
  }
}

// A plain TCP attempt that would block is a wait for `w`, not an error.
std::size_t tcp_result(std::size_t moved, error_code& ec, UpstreamStream::Wait& wait,
                       UpstreamStream::Wait w) {
  if (ec == asio::error::would_block || ec == asio::error::try_again) {
    ec = {};
    wait = w;
  }
  return moved;
}

}  // namespace

UpstreamStream::UpstreamStream(executor_type ex, std::shared_ptr<asio::ssl::context> ctx, bool tls)
    : socket_(std::move(ex)), ctx_(std::move(ctx)), deadline_(socket_.get_executor(), socket_) {
  if (tls) {
    ssl_ = SSL_new(ctx_->native_handle());
    if (!ssl_) throw std::bad_alloc();
    // Whole socket reads, not a 5-byte header and then the record: half the recv
    // calls. SSL_MODE_RELEASE_BUFFERS (set on the context) still frees the buffer
    // whenever it runs empty.
    SSL_set_read_ahead(ssl_, 1);
    // Read-ahead fills a buffer of this size per recv: four records at a time of a
    // large body instead of one.
    SSL_set_default_read_buffer_len(ssl_, 64 * 1024);
    // A write that had to wait is retried with the same bytes from a buffer that may
    // have moved (the gather scratch); each record is reported as soon as it is sent.
    SSL_set_mode(ssl_, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
  }
}

UpstreamStream::~UpstreamStream() {
  if (ssl_) SSL_free(ssl_);
}

char* UpstreamStream::gather_scratch() {
  thread_local std::unique_ptr<char[]> buf;
  if (!buf) buf = std::make_unique_for_overwrite<char[]>(kGather);
  return buf.get();
}

error_code UpstreamStream::waited(error_code ec) const {
  if (ec == asio::error::operation_aborted && timed_out()) return boost::beast::error::timeout;
  return ec;
}

asio::awaitable<error_code> UpstreamStream::connect(
    const std::vector<asio::ip::tcp::endpoint>& endpoints) {
  auto [ec, ep] = co_await asio::async_connect(socket_, endpoints, use_tuple);
  if (ec) co_return waited(ec);
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);
  socket_.non_blocking(true, ec);  // the synchronous attempts below must not block
  co_return ec;
}

asio::awaitable<error_code> UpstreamStream::wait(Wait w) {
  if (timed_out()) co_return boost::beast::error::timeout;
  auto [ec] = co_await socket_.async_wait(
      w == Wait::write ? socket_type::wait_write : socket_type::wait_read, use_tuple);
  co_return waited(ec);
}

asio::awaitable<error_code> UpstreamStream::handshake() {
  if (!ssl_) co_return error_code{};
  if (SSL_set_fd(ssl_, socket_.native_handle()) != 1) {
    co_return error_code{static_cast<int>(ERR_get_error()), asio::error::get_ssl_category()};
  }
  for (;;) {
    ERR_clear_error();
    const int rv = SSL_connect(ssl_);
    if (rv == 1) co_return error_code{};
    Wait w = Wait::none;
    error_code ec = tls_error(ssl_, rv, w);
    if (ec) co_return ec;
    if (auto wec = co_await wait(w)) co_return wec;
  }
}

namespace {
constexpr int kFullRecord = 16 * 1024;  // TLS's largest record plaintext
}  // namespace

std::size_t UpstreamStream::read_nb(void* data, std::size_t n, error_code& ec, Wait& wait) {
  wait = Wait::none;
  if (!ssl_) return tcp_result(socket_.read_some(asio::buffer(data, n), ec), ec, wait, Wait::read);
  // One SSL_read gives at most one record (16 KiB); a 1 MiB body read that way
  // costs ~64 trips through the event loop and as many client writes. Records that
  // have already arrived are taken together, up to n: those OpenSSL holds, and,
  // after a full-size record (a large body is flowing), those in the socket. After
  // a small one the socket is most likely empty, and asking would cost a recv.
  auto* p = static_cast<char*>(data);
  std::size_t got = 0;
  for (;;) {
    ERR_clear_error();
    const int rv =
        SSL_read(ssl_, p + got, static_cast<int>(std::min<std::size_t>(n - got, INT_MAX)));
    if (rv > 0) {
      got += static_cast<std::size_t>(rv);
      if (got == n || (rv < kFullRecord && SSL_has_pending(ssl_) != 1)) return got;
      continue;
    }
    if (got > 0) {
      // Whatever stopped this read (no more bytes yet, the end, an error) stops
      // the next one too, which reports it.
      ERR_clear_error();
      return got;
    }
    ec = tls_error(ssl_, rv, wait);
    return 0;
  }
}

UpstreamStream::Idle UpstreamStream::check_idle() noexcept {
  if (!ssl_) {
    char b;
    const ssize_t r = ::recv(socket_.native_handle(), &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r > 0) return Idle::stray_bytes;
    if (r == 0) return Idle::fin;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? Idle::quiet : Idle::error;
  }
  if (SSL_get_shutdown(ssl_) & SSL_RECEIVED_SHUTDOWN) return Idle::close_notify;
  ERR_clear_error();
  char b;
  // A peek: records that carry no application data (tickets, KeyUpdate) are
  // consumed by OpenSSL; application bytes would stay, but they evict anyway.
  const int rv = SSL_peek(ssl_, &b, 1);
  if (rv > 0) return Idle::stray_bytes;
  Wait w = Wait::none;
  const error_code ec = tls_error(ssl_, rv, w);
  ERR_clear_error();
  if (!ec) return Idle::quiet;  // wants more bytes (or to write a KeyUpdate reply)
  if (ec == asio::error::eof) return Idle::close_notify;
  if (ec == asio::ssl::error::stream_truncated) return Idle::fin;
  return Idle::error;
}

std::size_t UpstreamStream::write_nb(const void* data, std::size_t n, error_code& ec, Wait& wait) {
  wait = Wait::none;
  if (n == 0) return 0;
  if (!ssl_)
    return tcp_result(socket_.write_some(asio::buffer(data, n), ec), ec, wait, Wait::write);
  ERR_clear_error();
  const int rv = SSL_write(ssl_, data, static_cast<int>(std::min<std::size_t>(n, INT_MAX)));
  if (rv > 0) return static_cast<std::size_t>(rv);
  ec = tls_error(ssl_, rv, wait);
  return 0;
}

}  // namespace upkeep
