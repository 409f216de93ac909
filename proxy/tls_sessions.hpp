// Upstream TLS session resumption: the latest resumable session of one origin,
// offered by the next connection to it, so a reconnect (after an idle close, a
// GOAWAY, a recycle, a warm top-up) costs an abbreviated handshake, not a full one.
//
// One per ConnectionPool. Sessions arrive through OpenSSL's new-session callback,
// on whatever thread reads the connection (TLS 1.3 tickets come after the
// handshake), hence the lock.
#pragma once

#include <memory>
#include <mutex>

#include <openssl/ssl.h>

namespace upkeep {

class TlsSessions {
 public:
  TlsSessions() = default;
  ~TlsSessions();
  TlsSessions(const TlsSessions&) = delete;
  TlsSessions& operator=(const TlsSessions&) = delete;

  // Makes contexts built by client_tls_context report new client sessions here
  // (and keep none in OpenSSL's own cache).
  static void enable(SSL_CTX* ctx);

  // Before the handshake of a new connection: offers the kept session, and makes
  // the sessions this connection receives land here. `self` must outlive `ssl`
  // (UpstreamStream holds it).
  static void attach(const std::shared_ptr<TlsSessions>& self, SSL* ssl);
  // A handshake that offered a session failed: do not offer it again.
  void forget();

  bool empty();

 private:
  static int on_new_session(SSL* ssl, SSL_SESSION* session);
  void keep(SSL_SESSION* session);  // takes the reference

  std::mutex mu_;
  SSL_SESSION* session_ = nullptr;
};

}  // namespace upkeep
