#include "intercept/interceptor.hpp"

#include <openssl/err.h>

#include <algorithm>
#include <cstring>

#include "intercept/ca_cli.hpp"
#include "intercept/ca_store.hpp"
#include "intercept/cert_cache.hpp"
#include "intercept/cert_mint.hpp"
#include "log.hpp"
#include "router.hpp"

namespace upkeep::intercept {
namespace {

// Hosts remembered for fallback or the warn-once rule; past this the table starts
// afresh rather than grow with every host a client ever named.
constexpr std::size_t kMaxRemembered = 10000;

// ALPN: the client's TLS carries HTTP/1.1 to upkeep, whatever it offered besides.
// (A client offering ALPN without http/1.1 was tunnelled before any TLS state.)
int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                unsigned int inlen, void*) {
  static constexpr unsigned char kHttp11[] = {'h', 't', 't', 'p', '/', '1', '.', '1'};
  for (unsigned int i = 0; i < inlen;) {
    const unsigned int len = in[i];
    if (i + 1 + len > inlen) break;
    if (len == sizeof kHttp11 && std::memcmp(in + i + 1, kHttp11, len) == 0) {
      *out = in + i + 1;
      *outlen = static_cast<unsigned char>(len);
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

SSL_CTX* make_server_ctx() {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) throw ConfigError("intercept: cannot create a TLS context: " + take_openssl_error());
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // No SSL_MODE_RELEASE_BUFFERS: it frees and re-allocates the 64 KiB read and the
  // write buffer around every record, even when the next request is already in the
  // socket. ClientStream gives them back only when the connection has to wait.
  SSL_CTX_set_options(
      ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_alpn_select_cb(ctx, select_alpn, nullptr);
  // Resumption by stateless tickets (both TLS versions), so a client that reconnects
  // per request pays a resumed handshake; no server-side session cache to grow.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  static constexpr unsigned char kSidCtx[] = "upkeep-intercept";
  SSL_CTX_set_session_id_context(ctx, kSidCtx, sizeof kSidCtx - 1);
  return ctx;
}

}  // namespace

Interceptor::Interceptor(const Config& cfg)
    : settings_(cfg.intercept), ca_(CertificateAuthority::load(cfg, true)) {
  // The bundle and wgetrc serve `upkeep ca env`; a read-only state directory (a
  // container with its CA from a Secret) costs those files, not the proxy.
  try {
    write_client_files(*ca_);
  } catch (const std::exception& e) {
    log::warn("cannot write the trust bundle for `upkeep ca env`",
              {{"dir", ca_->state_dir()}, {"error", quoted(e.what())}});
  }
  for (const auto& w : ca_->warnings())
    log::warn(w);
  cache_ = std::make_shared<CertCache>(std::make_shared<LeafMinter>(ca_), settings_.cert_cache);
  ctx_ = make_server_ctx();
  if (ca_->created()) {
    log::info("created upkeep's interception CA; clients must trust it (`upkeep ca env`)",
              {{"cert", ca_->cert_path()}});
  }
}

Interceptor::~Interceptor() {
  SSL_CTX_free(ctx_);
}

std::optional<metrics::TunnelReason> Interceptor::policy(std::string_view host) const {
  auto matches = [host](const std::string& p) { return host_matches(p, host); };
  if (std::any_of(settings_.skip.begin(), settings_.skip.end(), matches)) {
    return metrics::TunnelReason::skip;
  }
  if (!std::any_of(settings_.hosts.begin(), settings_.hosts.end(), matches)) {
    return metrics::TunnelReason::connect;
  }
  std::lock_guard lock(mu_);
  if (auto it = fallback_until_.find(std::string(host)); it != fallback_until_.end()) {
    if (clock::now() < it->second) return metrics::TunnelReason::fallback;
  }
  return std::nullopt;
}

SSL* Interceptor::new_ssl(const CertName& name) {
  std::shared_ptr<const Leaf> leaf;
  auto& reg = metrics::Registry::get();
  try {
    leaf = cache_->get(name);
  } catch (const MintError& e) {
    log::warn("no certificate minted", {{"name", quoted(name.name)}, {"error", quoted(e.what())}});
    return nullptr;
  }
  if (!leaf) return nullptr;
  // The process counter follows the cache's: each mint is added once, by whichever
  // thread first sees the cache's total pass what was reported (other threads mint
  // between a thread's before and after, so per-call differences would count twice).
  const uint64_t minted = cache_->minted_total();
  uint64_t reported = minted_reported_.load();
  while (reported < minted && !minted_reported_.compare_exchange_weak(reported, minted)) {
  }
  if (reported < minted) reg.intercept_minted.inc(minted - reported);
  reg.intercept_cache_entries.set(static_cast<int64_t>(cache_->size()));
  SSL* ssl = SSL_new(ctx_);
  if (!ssl) return nullptr;
  if (SSL_use_cert_and_key(ssl, leaf->cert(), leaf->key(), leaf->chain(), 1) != 1) {
    log::warn("cannot use a minted certificate", {{"error", quoted(take_openssl_error())}});
    SSL_free(ssl);
    return nullptr;
  }
  return ssl;
}

bool Interceptor::client_rejected(const std::string& host) {
  std::lock_guard lock(mu_);
  if (settings_.fallback_ttl.count() > 0) {
    if (fallback_until_.size() >= kMaxRemembered) fallback_until_.clear();
    fallback_until_[host] = clock::now() + settings_.fallback_ttl;
  }
  if (warned_.size() >= kMaxRemembered) warned_.clear();
  return warned_.insert(host).second;
}

}  // namespace upkeep::intercept
