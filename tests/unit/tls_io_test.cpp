// tls_read_nb / tls_write_nb and tls_error over a real TLS connection: a client and
// a server SSL on the two ends of a non-blocking socket pair, in one thread.
#include "tls_io.hpp"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <boost/asio/ssl/error.hpp>

#include <csignal>
#include <string>

namespace {

using upkeep::IoWait;
using upkeep::tls_read_nb;
using upkeep::tls_write_nb;

struct Tls {
  SSL_CTX* server_ctx = SSL_CTX_new(TLS_server_method());
  SSL_CTX* client_ctx = SSL_CTX_new(TLS_client_method());
  SSL* server = nullptr;
  SSL* client = nullptr;
  int fds[2] = {-1, -1};

  Tls() {
    // As upkeep does (main.cpp): a fatal alert written to a closed peer is EPIPE.
    std::signal(SIGPIPE, SIG_IGN);
    EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
    REQUIRE(key != nullptr);
    X509* cert = X509_new();
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), 0);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
    X509_set_pubkey(cert, key);
    X509_NAME* name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("tls-io-test"), -1, -1, 0);
    X509_set_issuer_name(cert, name);
    REQUIRE(X509_sign(cert, key, EVP_sha256()) > 0);
    REQUIRE(SSL_CTX_use_certificate(server_ctx, cert) == 1);
    REQUIRE(SSL_CTX_use_PrivateKey(server_ctx, key) == 1);
    X509_free(cert);
    EVP_PKEY_free(key);
    SSL_CTX_set_verify(client_ctx, SSL_VERIFY_NONE, nullptr);

    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    for (int fd : fds)
      REQUIRE(::fcntl(fd, F_SETFL, O_NONBLOCK) == 0);
    client = SSL_new(client_ctx);
    server = SSL_new(server_ctx);
    SSL_set_fd(client, fds[0]);
    SSL_set_fd(server, fds[1]);
    upkeep::tls_tune(client);
    bool client_done = false, server_done = false;
    for (int i = 0; i < 100 && !(client_done && server_done); ++i) {
      if (!client_done) client_done = SSL_connect(client) == 1;
      if (!server_done) server_done = SSL_accept(server) == 1;
    }
    REQUIRE(client_done);
    REQUIRE(server_done);
    ERR_clear_error();
  }
  ~Tls() {
    SSL_free(client);
    SSL_free(server);
    SSL_CTX_free(client_ctx);
    SSL_CTX_free(server_ctx);
    for (int fd : fds)
      if (fd >= 0) ::close(fd);
  }

  // The server's bytes, then whatever TLS 1.3 sends after the handshake (tickets).
  void server_send(const std::string& s) const {
    REQUIRE(SSL_write(server, s.data(), static_cast<int>(s.size())) == static_cast<int>(s.size()));
  }
  std::string client_read(upkeep::error_code& ec, IoWait& w) const {
    char buf[4096];
    const std::size_t n = tls_read_nb(client, buf, sizeof buf, ec, w);
    return std::string(buf, n);
  }
};

// An error some other OpenSSL call on this thread left behind.
void leave_stale_error() {
  ERR_raise(ERR_LIB_SSL, SSL_R_BAD_LENGTH);
  REQUIRE(ERR_peek_error() != 0);
}

}  // namespace

TEST_CASE("a read with nothing to take waits, even with an older error queued") {
  Tls t;
  upkeep::error_code ec;
  IoWait w = IoWait::none;
  // The session tickets first (processing them happens to clear the queue).
  CHECK(t.client_read(ec, w).empty());
  CHECK(w == IoWait::read);
  // Then nothing to read, with an older error queued.
  leave_stale_error();
  w = IoWait::none;
  CHECK(t.client_read(ec, w).empty());
  CHECK_FALSE(ec);
  CHECK(w == IoWait::read);
  t.server_send("hello");
  leave_stale_error();
  CHECK(t.client_read(ec, w) == "hello");
  CHECK_FALSE(ec);
  // And a write with an older error queued goes through.
  leave_stale_error();
  CHECK(tls_write_nb(t.client, "ping", 4, ec, w) == 4);
  CHECK_FALSE(ec);
  char buf[16];
  CHECK(SSL_read(t.server, buf, sizeof buf) == 4);
}

TEST_CASE("close_notify is the end of the stream, and the error queue is left empty") {
  Tls t;
  t.server_send("last");
  REQUIRE(SSL_shutdown(t.server) >= 0);
  upkeep::error_code ec;
  IoWait w = IoWait::none;
  CHECK(t.client_read(ec, w) == "last");
  leave_stale_error();
  CHECK(t.client_read(ec, w).empty());
  CHECK(ec == boost::asio::error::eof);
  CHECK(ERR_peek_error() == 0);
}

TEST_CASE("a TCP close without close_notify is a truncated stream") {
  Tls t;
  ::close(t.fds[1]);
  t.fds[1] = -1;
  upkeep::error_code ec;
  IoWait w = IoWait::none;
  CHECK(t.client_read(ec, w).empty());
  CHECK(ec == boost::asio::ssl::error::stream_truncated);
  CHECK(ERR_peek_error() == 0);
}
