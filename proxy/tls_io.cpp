#include "tls_io.hpp"

#include <cerrno>
#include <climits>
#include <memory>

#include <openssl/err.h>

#include <boost/asio/ssl/error.hpp>

namespace upkeep {

error_code tls_error(SSL* ssl, int rv, IoWait& wait) {
  const int saved_errno = errno;
  switch (SSL_get_error(ssl, rv)) {
    case SSL_ERROR_WANT_READ:
      wait = IoWait::read;
      return {};
    case SSL_ERROR_WANT_WRITE:
      wait = IoWait::write;
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

namespace {
constexpr int kFullRecord = 16 * 1024;  // TLS's largest record plaintext
}  // namespace

std::size_t tls_read_nb(SSL* ssl, void* data, std::size_t n, error_code& ec, IoWait& wait) {
  wait = IoWait::none;
  // One SSL_read gives at most one record (16 KiB); a 1 MiB body read that way
  // costs ~64 trips through the event loop and as many writes on the other side.
  // Records that have already arrived are taken together, up to n: those OpenSSL
  // or its read BIO holds, and, after a full-size record (a large body is
  // flowing), those in the socket. After a small one the socket is most likely empty, and asking
  // would cost a recv.
  auto* p = static_cast<char*>(data);
  std::size_t got = 0;
  for (;;) {
    ERR_clear_error();
    const int rv =
        SSL_read(ssl, p + got, static_cast<int>(std::min<std::size_t>(n - got, INT_MAX)));
    if (rv > 0) {
      got += static_cast<std::size_t>(rv);
      if (got == n) return got;
      // A record BIO (record_bio.hpp) may hold records OpenSSL has not seen yet.
      if (rv < kFullRecord && SSL_has_pending(ssl) != 1 && BIO_ctrl_pending(SSL_get_rbio(ssl)) == 0)
        return got;
      continue;
    }
    if (got > 0) {
      // Whatever stopped this read (no more bytes yet, the end, an error) stops
      // the next one too, which reports it.
      ERR_clear_error();
      return got;
    }
    ec = tls_error(ssl, rv, wait);
    return 0;
  }
}

std::size_t tls_write_nb(SSL* ssl, const void* data, std::size_t n, error_code& ec, IoWait& wait) {
  wait = IoWait::none;
  if (n == 0) return 0;
  ERR_clear_error();
  const int rv = SSL_write(ssl, data, static_cast<int>(std::min<std::size_t>(n, INT_MAX)));
  if (rv > 0) return static_cast<std::size_t>(rv);
  ec = tls_error(ssl, rv, wait);
  return 0;
}

void tls_tune(SSL* ssl) {
  // Whole socket reads, not a 5-byte header and then the record: half the recv
  // calls. SSL_MODE_RELEASE_BUFFERS (set on the context) still frees the buffer
  // whenever it runs empty.
  SSL_set_read_ahead(ssl, 1);
  // Read-ahead fills a buffer of this size per recv: four records at a time of a
  // large body instead of one.
  SSL_set_default_read_buffer_len(ssl, 64 * 1024);
  // A write that had to wait is retried with the same bytes from a buffer that may
  // have moved (the gather scratch); each record is reported as soon as it is sent.
  SSL_set_mode(ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
}

char* tls_gather_scratch() {
  thread_local std::unique_ptr<char[]> buf;
  if (!buf) buf = std::make_unique_for_overwrite<char[]>(kTlsGather);
  return buf.get();
}

}  // namespace upkeep
