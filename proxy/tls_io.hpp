// Non-blocking I/O with OpenSSL straight on a socket's file descriptor, shared by
// both directions: UpstreamStream (the client side of TLS, to origins) and
// ClientStream (the server side, for intercepted CONNECTs).
//
// Not asio::ssl::stream: that one copies every byte through a BIO pair and two
// buffers of its own (four 17 KiB buffers per connection, measured with massif), and
// runs a state machine of posted operations per read. Here a read is SSL_read on the
// non-blocking socket, and a wait for readiness only when OpenSSL says it needs one
// (as HAProxy and nghttpx do).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>

#include <openssl/ssl.h>

#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/system/error_code.hpp>

namespace upkeep {

namespace asio = boost::asio;
using error_code = boost::system::error_code;

// What a non-blocking attempt needs before it can make progress.
enum class IoWait : unsigned char { none, read, write };

// SSL_get_error after a failed call, as an Asio error or a wait. close_notify is
// asio::error::eof; a TCP close without one is asio::ssl::error::stream_truncated.
// After an error the thread's error queue is empty.
error_code tls_error(SSL* ssl, int rv, IoWait& wait);

// One non-blocking attempt: the bytes moved, or 0 with either an error or `wait`
// saying what the socket must become before the next attempt. A read takes the
// records that have already arrived together, up to n.
std::size_t tls_read_nb(SSL* ssl, void* data, std::size_t n, error_code& ec, IoWait& wait);
std::size_t tls_write_nb(SSL* ssl, const void* data, std::size_t n, error_code& ec, IoWait& wait);

// The per-connection settings both directions use: whole-socket reads into 64 KiB,
// and writes that may be retried from a buffer that moved (the gather scratch).
void tls_tune(SSL* ssl);

// Several small buffers (a head and its body) go out as one TLS record and one send:
// gathered into a per-thread scratch of up to this many bytes.
inline constexpr std::size_t kTlsGather = 16 * 1024;
char* tls_gather_scratch();

// The Asio operation behind async_read_some / async_write_some of a stream that
// offers: socket(), read_nb/write_nb (as above), timed_out(), waited(ec) (the
// error a wait that ended with ec reports) and before_wait() (called before each
// readiness wait).
template <class Stream, class Buffers, bool Write>
struct NbOp {
  Stream* s;
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
    IoWait w = IoWait::none;
    std::size_t n = attempt(ec, w);
    // An expiry shuts the socket down and then cancels the wait; a wait that had
    // already completed (the shutdown made the socket readable) lets this attempt
    // meet the shutdown instead. That is the deadline's doing too.
    if (ec && s->timed_out()) ec = s->waited(asio::error::operation_aborted);
    if (n == 0 && !ec && w != IoWait::none) {
      if (s->timed_out()) {
        self.complete(s->waited(asio::error::operation_aborted), 0);
        return;
      }
      started = true;
      s->before_wait();
      using socket = asio::ip::tcp::socket;
      s->socket().async_wait(w == IoWait::read ? socket::wait_read : socket::wait_write,
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

  std::size_t attempt(error_code& ec, IoWait& w) {
    const auto begin = asio::buffer_sequence_begin(buffers);
    const auto end = asio::buffer_sequence_end(buffers);
    if constexpr (Write) {
      const void* first = nullptr;
      std::size_t first_n = 0, total = 0, count = 0;
      for (auto it = begin; it != end && total < kTlsGather; ++it) {
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
      if (count == 1 || first_n >= kTlsGather) return s->write_nb(first, first_n, ec, w);
      // A retry after IoWait::write gathers the same bytes again, as OpenSSL requires.
      char* g = tls_gather_scratch();
      std::size_t off = 0;
      for (auto it = begin; it != end && off < kTlsGather; ++it) {
        asio::const_buffer b = *it;
        const std::size_t k = std::min(b.size(), kTlsGather - off);
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

}  // namespace upkeep
