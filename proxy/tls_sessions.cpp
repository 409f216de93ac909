#include "tls_sessions.hpp"

namespace upkeep {
namespace {

int ex_index() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

}  // namespace

TlsSessions::~TlsSessions() {
  if (session_) SSL_SESSION_free(session_);
}

void TlsSessions::enable(SSL_CTX* ctx) {
  // NO_INTERNAL_STORE: OpenSSL's cache would hold every session of every origin
  // (each with the server's certificate chain) and grow with each reconnect.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(ctx, &TlsSessions::on_new_session);
}

void TlsSessions::attach(const std::shared_ptr<TlsSessions>& self, SSL* ssl) {
  SSL_set_ex_data(ssl, ex_index(), self.get());
  std::lock_guard lock(self->mu_);
  // SSL_set_session takes its own reference; ours stays for the next connection. A
  // TLS 1.3 ticket is meant to be used once (RFC 8446 §C.4), but servers that issue
  // stateless tickets accept it again, and each resumed connection brings new ones.
  // A copy: OpenSSL marks a connection's session not resumable when the connection
  // is freed without close_notify (as a pooled one is when the server hangs up),
  // which would spoil the kept one for every later connection.
  if (!self->session_) return;
  if (SSL_SESSION* copy = SSL_SESSION_dup(self->session_)) {
    SSL_set_session(ssl, copy);
    SSL_SESSION_free(copy);
  }
}

void TlsSessions::forget() {
  std::lock_guard lock(mu_);
  if (session_) SSL_SESSION_free(session_);
  session_ = nullptr;
}

bool TlsSessions::empty() {
  std::lock_guard lock(mu_);
  return session_ == nullptr;
}

int TlsSessions::on_new_session(SSL* ssl, SSL_SESSION* session) {
  auto* self = static_cast<TlsSessions*>(SSL_get_ex_data(ssl, ex_index()));
  if (!self || SSL_SESSION_is_resumable(session) != 1) return 0;
  // Kept as a copy, for the reason in attach(): `session` stays the connection's.
  if (SSL_SESSION* copy = SSL_SESSION_dup(session)) self->keep(copy);
  return 0;  // OpenSSL keeps (and frees) its own reference
}

void TlsSessions::keep(SSL_SESSION* session) {
  std::lock_guard lock(mu_);
  if (session_) SSL_SESSION_free(session_);
  session_ = session;
}

}  // namespace upkeep
