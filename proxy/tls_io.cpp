#include "tls_io.hpp"

#include <cerrno>
#include <climits>
#include <memory>

#include <openssl/err.h>

#include <boost/asio/ssl/error.hpp>

namespace upkeep {

namespace {

// The error the failed call itself raised: the newest on the thread's queue (an
// older one may still be there, see tls_error). The queue is left empty.
unsigned long take_newest_error() {
  const unsigned long e = ERR_peek_last_error();
  ERR_clear_error();
  return e;
}

}  // namespace

error_code tls_error(SSL* ssl, int rv, IoWait& wait) {
  const int saved_errno = errno;
  // The attempts do not clear the thread's error queue first (ERR_clear_error
  // costs ~800 instructions, four times per HTTP/1.1 request), so it may hold an
  // older error that SSL_get_error would take for this call's. A call that only
  // has to wait for the socket says so in its own state and its BIO's retry flag
  // (what SSL_get_error looks at after the queue; a failed or ended read leaves
  // the flag clear), so that is asked first.
  if (SSL_want_read(ssl) && BIO_should_read(SSL_get_rbio(ssl))) {
    wait = IoWait::read;
    return {};
  }
  if (SSL_want_write(ssl) && BIO_should_write(SSL_get_wbio(ssl))) {
    wait = IoWait::write;
    return {};
  }
  // Likewise the peer's close_notify (SSL_get_error's ZERO_RETURN, which it only
  // gives with an empty queue).
  if (rv == 0 && (SSL_get_shutdown(ssl) & SSL_RECEIVED_SHUTDOWN) != 0) {
    ERR_clear_error();
    return asio::error::eof;
  }
  switch (SSL_get_error(ssl, rv)) {
    case SSL_ERROR_WANT_READ:
      wait = IoWait::read;
      return {};
    case SSL_ERROR_WANT_WRITE:
      wait = IoWait::write;
      return {};
    case SSL_ERROR_ZERO_RETURN:  // close_notify
      ERR_clear_error();
      return asio::error::eof;
    case SSL_ERROR_SYSCALL: {
      const unsigned long e = take_newest_error();
      if (e != 0 && ERR_GET_LIB(e) != ERR_LIB_SYS) {
        return {static_cast<int>(e), asio::error::get_ssl_category()};
      }
      if (saved_errno != 0) return {saved_errno, boost::system::system_category()};
      return asio::ssl::error::stream_truncated;  // TCP closed without close_notify
    }
    default: {
      const unsigned long e = take_newest_error();
      if (ERR_GET_LIB(e) == ERR_LIB_SYS && saved_errno != 0) {
        return {saved_errno, boost::system::system_category()};
      }
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
      // the next one too, which reports it; tls_error leaves no error queued.
      IoWait ignored = IoWait::none;
      (void)tls_error(ssl, rv, ignored);
      return got;
    }
    ec = tls_error(ssl, rv, wait);
    return 0;
  }
}

std::size_t tls_write_nb(SSL* ssl, const void* data, std::size_t n, error_code& ec, IoWait& wait) {
  wait = IoWait::none;
  if (n == 0) return 0;
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
