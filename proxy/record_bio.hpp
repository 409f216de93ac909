// A read BIO for a TLS connection's socket that gives OpenSSL one record at a time.
//
// Why: with read-ahead on a socket BIO, OpenSSL reads whatever has arrived into its
// record buffer, and before each record it moves every byte still buffered behind
// that record to the buffer's front (to align the payload; OpenSSL 3.0's
// ssl3_read_n). An HTTP/2 connection's recv brings many streams' small records at
// once, so that move is quadratic in what one recv brought: callgrind measured it at
// ~5k instructions per 1 KiB request (S1, HTTP/2), with a 16 KiB buffer. Here the
// recv goes into this BIO's own buffer, and each BIO_read hands over no more than
// the rest of the current record: OpenSSL's buffer then never holds a second
// record, and every byte is copied once.
//
// Bytes this BIO holds are invisible to SSL_has_pending() and to readiness waits:
// BIO_ctrl_pending() reports them (tls_read_nb reads on while it is non-zero).
//
// The BIO receives by itself only while the socket may hold more (its last recv
// filled the buffer, or the owner said the socket is readable). Once a recv comes
// back short the socket was drained, and the next bytes come through the owner: it
// receives into record_bio_space() with Asio, whose reactor knows the socket is
// drained and queues the receive for the next readiness event. That is one recv per
// burst of records, where receiving here and then waiting for readiness costs a
// recv that fails with EAGAIN and an epoll_ctl re-arm (asio::socket::async_wait
// always re-arms) besides.
#pragma once

#include <cstddef>
#include <span>

#include <openssl/bio.h>

namespace upkeep {

// A BIO reading the connected, non-blocking socket fd (not owned).
BIO* record_bio_new(int fd);
// Where the owner's receive puts bytes, valid until one of the next two calls;
// meanwhile the BIO neither receives nor frees its buffer.
std::span<char> record_bio_space(BIO* b);
// That receive brought n bytes (0: nothing, after an error or a cancellation, which
// the owner reports itself), or the end of the stream.
void record_bio_received(BIO* b, std::size_t n) noexcept;
void record_bio_ended(BIO* b) noexcept;
// A readiness wait says the socket has bytes: the BIO receives them itself.
void record_bio_readable(BIO* b) noexcept;
// Frees the BIO's buffer if it holds no bytes and none are being received into it
// (before a wait or at idle).
void record_bio_release_buffer(BIO* b) noexcept;

}  // namespace upkeep
