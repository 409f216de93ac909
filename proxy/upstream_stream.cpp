#include "upstream_stream.hpp"

#include <cerrno>
#include <climits>
#include <span>

#include <sys/socket.h>

#include <openssl/err.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/error.hpp>

#include "record_bio.hpp"

namespace upkeep {
namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

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
    tls_tune(ssl_);
  }
}

UpstreamStream::~UpstreamStream() {
  if (ssl_) SSL_free(ssl_);
}

void UpstreamStream::tune_for(std::string_view protocol) noexcept {
  if (!ssl_) return;
  SSL_clear_mode(ssl_, SSL_MODE_RELEASE_BUFFERS);
  tuned_ = true;
  if (protocol == "h2") {
    if (BIO* rb = record_bio_new(socket_.native_handle())) {
      // Bytes read ahead are in OpenSSL's buffer, not in the socket BIO, so the
      // swap loses none; the socket BIO stays as the write side.
      SSL_set0_rbio(ssl_, rb);
      record_bio_ = rb;
      SSL_set_default_read_buffer_len(ssl_, 16 * 1024);  // one record is all it holds now
    }
  }
}

error_code UpstreamStream::waited(error_code ec) const {
  if (ec == asio::error::operation_aborted && timed_out()) return boost::beast::error::timeout;
  return ec;
}

error_code UpstreamStream::connected() {
  error_code ec;
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);
  socket_.non_blocking(true, ec);  // the synchronous attempts below must not block
  return ec;
}

void UpstreamStream::resume_from(std::shared_ptr<TlsSessions> sessions) {
  if (!ssl_ || !sessions) return;
  sessions_ = std::move(sessions);
  TlsSessions::attach(sessions_, ssl_);
}

asio::awaitable<error_code> UpstreamStream::wait(Wait w) {
  if (timed_out()) co_return boost::beast::error::timeout;
  before_wait();
  auto [ec] = co_await socket_.async_wait(
      w == Wait::write ? socket_type::wait_write : socket_type::wait_read, use_tuple);
  if (!ec && w == Wait::read && record_bio_) record_bio_readable(record_bio_);
  co_return waited(ec);
}

asio::awaitable<error_code> UpstreamStream::receive() {
  if (!record_bio_) co_return co_await wait(Wait::read);
  if (timed_out()) co_return boost::beast::error::timeout;
  SSL_free_buffers(ssl_);  // OpenSSL's own: nothing of a record is left in them
  const std::span<char> space = record_bio_space(record_bio_);
  auto [ec, n] =
      co_await socket_.async_receive(asio::buffer(space.data(), space.size()), use_tuple);
  if (!ec) {
    record_bio_received(record_bio_, n);
    co_return error_code{};
  }
  if (ec == asio::error::eof) {
    record_bio_ended(record_bio_);  // for OpenSSL to tell close_notify from truncation
    co_return error_code{};
  }
  record_bio_received(record_bio_, 0);
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

std::size_t UpstreamStream::read_nb(void* data, std::size_t n, error_code& ec, Wait& wait) {
  wait = Wait::none;
  if (!ssl_) return tcp_result(socket_.read_some(asio::buffer(data, n), ec), ec, wait, Wait::read);
  return tls_read_nb(ssl_, data, n, ec, wait);
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
  char b;
  // A peek: records that carry no application data (tickets, KeyUpdate) are
  // consumed by OpenSSL; application bytes would stay, but they evict anyway.
  const int rv = SSL_peek(ssl_, &b, 1);
  if (rv > 0) return Idle::stray_bytes;
  Wait w = Wait::none;
  const error_code ec = tls_error(ssl_, rv, w);  // leaves no error queued
  if (!ec) return Idle::quiet;                   // wants more bytes (or to write a KeyUpdate reply)
  if (ec == asio::error::eof) return Idle::close_notify;
  if (ec == asio::ssl::error::stream_truncated) return Idle::fin;
  return Idle::error;
}

void UpstreamStream::release_tls_buffers() noexcept {
  if (!ssl_) return;
  SSL_free_buffers(ssl_);
  if (record_bio_) record_bio_release_buffer(record_bio_);
}

std::size_t UpstreamStream::write_nb(const void* data, std::size_t n, error_code& ec, Wait& wait) {
  wait = Wait::none;
  if (n == 0) return 0;
  if (!ssl_)
    return tcp_result(socket_.write_some(asio::buffer(data, n), ec), ec, wait, Wait::write);
  return tls_write_nb(ssl_, data, n, ec, wait);
}

}  // namespace upkeep
