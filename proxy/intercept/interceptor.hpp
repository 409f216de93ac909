// The process's interception state for one intercept: configuration (SPEC.md "HTTPS
// interception"): the CA, the leaf cache, the one server SSL_CTX every intercepted
// handshake uses, and the hosts whose clients rejected upkeep's certificate.
//
// Shared by every worker thread: immutable but for the cache and the fallback table,
// which lock for themselves. A reload with the same intercept: keys keeps the object
// (and so its cache and fallbacks); other changes make a new one.
#pragma once

#include <openssl/ssl.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "config.hpp"
#include "intercept/host_name.hpp"
#include "metrics.hpp"

namespace upkeep::intercept {

class CertificateAuthority;
class CertCache;

class Interceptor {
 public:
  using clock = std::chrono::steady_clock;

  // Loads or creates the CA and writes the trust bundle. Throws ConfigError naming
  // the key at fault: upkeep does not start (or reload) with a CA it cannot trust.
  explicit Interceptor(const Config& cfg);
  ~Interceptor();
  Interceptor(const Interceptor&) = delete;
  Interceptor& operator=(const Interceptor&) = delete;

  const InterceptSettings& settings() const noexcept { return settings_; }
  const CertificateAuthority& ca() const noexcept { return *ca_; }

  // Decided on the CONNECT's host before any TLS byte: why it is tunnelled blindly
  // (skip, not in hosts, a recent rejection), or nullopt to intercept it.
  std::optional<metrics::TunnelReason> policy(std::string_view host) const;

  // A server-side SSL presenting a leaf for `name` (minted or cached), ready for
  // SSL_accept; the caller owns it. nullptr when no leaf may be made for the name
  // (outside the CA's nameConstraints).
  SSL* new_ssl(const CertName& name);

  // The client of a CONNECT to `host` rejected upkeep's certificate: that host is
  // tunnelled blindly for fallback_ttl. Returns true the first time for a host
  // (the caller warns then, once).
  bool client_rejected(const std::string& host);

 private:
  InterceptSettings settings_;
  std::shared_ptr<const CertificateAuthority> ca_;
  std::shared_ptr<CertCache> cache_;
  SSL_CTX* ctx_ = nullptr;
  std::atomic<uint64_t> minted_reported_{0};  // of cache_->minted_total(), in the metric
  mutable std::mutex mu_;
  std::unordered_map<std::string, clock::time_point> fallback_until_;
  std::unordered_set<std::string> warned_;
};

}  // namespace upkeep::intercept
