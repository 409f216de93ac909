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
#pragma once

#include <openssl/bio.h>

namespace upkeep {

// A BIO reading the connected, non-blocking socket fd (not owned).
BIO* record_bio_new(int fd);
// Frees the BIO's buffer if it holds no bytes (before a wait or at idle).
void record_bio_release_buffer(BIO* b) noexcept;

}  // namespace upkeep
