// Leaf certificates for intercepted hosts (SPEC.md "HTTPS interception", "Leaf
// certificates"), signed by the interception CA. What clients check, and what the
// systems before upkeep got wrong (DESIGN.md "Interception"), shapes every field:
// a leaf key that is not the CA's (SChannel), random serials (Firefox), authority
// key id = the CA's subject key id (Go), validity far under Chromium's cap including
// the backdating, and a name that went through normalize_host and nowhere else.
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <chrono>
#include <functional>
#include <memory>
#include <stdexcept>

#include "intercept/ca_store.hpp"
#include "intercept/host_name.hpp"
#include "intercept/ossl.hpp"

namespace upkeep::intercept {

// Everything a handshake needs, immutable and shared by every connection to the host:
//   SSL_use_cert_and_key(ssl, leaf.cert(), leaf.key(), leaf.chain(), 1)
// (OpenSSL takes its own references to all three).
class Leaf {
 public:
  using TimePoint = std::chrono::system_clock::time_point;
  Leaf(X509Ptr cert, PkeyPtr key, std::shared_ptr<X509Stack> chain, CertName name,
       TimePoint not_before, TimePoint not_after);

  X509* cert() const noexcept { return cert_.get(); }
  EVP_PKEY* key() const noexcept { return key_.get(); }
  // The CA certificate (and any issuers given with ca_cert), sent after the leaf.
  X509Stack* chain() const noexcept { return chain_.get(); }
  const CertName& name() const noexcept { return name_; }
  TimePoint not_before() const noexcept { return not_before_; }
  TimePoint not_after() const noexcept { return not_after_; }

 private:
  X509Ptr cert_;
  PkeyPtr key_;  // its own reference to the minter's leaf key
  std::shared_ptr<X509Stack> chain_;
  CertName name_;
  TimePoint not_before_, not_after_;
};

// A name refused (not a normalized host name, outside the CA's nameConstraints), the
// CA expired, or OpenSSL failing. Nothing was signed.
class MintError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Signs leaves with the CA. Thread-safe: mint() only reads what the constructor
// built, and OpenSSL's refcounts are atomic.
class LeafMinter {
 public:
  using Clock = std::function<std::chrono::system_clock::time_point()>;
  static constexpr std::chrono::hours kBackdate{1};  // clients whose clocks run slow
  // 30 days plus the backdate stays far under Chromium's 200-day cap.
  static constexpr std::chrono::hours kLifetime{24 * 30};

  // Generates the one ECDSA P-256 leaf key all its leaves share: a fresh key per
  // leaf would cost a key generation per host for no gain in what a client checks,
  // and it is never the CA's key. `clock` (tests) defaults to system_clock::now.
  explicit LeafMinter(std::shared_ptr<const CertificateAuthority> ca, Clock clock = {});

  // A leaf for `name`: v3, random 127-bit serial, valid from now - 1 h to now + 30 d
  // (never past the CA's notAfter), subject CN=name for a DNS name of at most 64
  // octets (X.520's limit) and empty otherwise, one subjectAltName entry (DNS or IP,
  // built as a GENERAL_NAME: no text is parsed, so nothing can be injected; critical
  // when the subject is empty, RFC 5280 4.2.1.6), EKU serverAuth, keyUsage
  // digitalSignature, basicConstraints CA:FALSE, subject and authority key ids,
  // SHA-256. Throws MintError unless `name` is what normalize_host makes of it and
  // the CA permits it.
  std::shared_ptr<const Leaf> mint(const CertName& name) const;

  // mint's refusals without the signing: throws MintError, else returns `name`.
  CertName check(const CertName& name) const;

  // As mint, without asking the CA's permits(). Exists only so tests can prove that
  // a CA's nameConstraints stop a leaf outside them even if upkeep's own check were
  // bypassed; the proxy never calls it.
  std::shared_ptr<const Leaf> mint_ignoring_constraints_for_test(const CertName& name) const;

  const CertificateAuthority& ca() const noexcept { return *ca_; }
  EVP_PKEY* leaf_key() const noexcept { return key_.get(); }
  std::chrono::system_clock::time_point now() const { return clock_(); }

 private:
  std::shared_ptr<const Leaf> sign(const CertName& checked) const;

  std::shared_ptr<const CertificateAuthority> ca_;
  Clock clock_;
  PkeyPtr key_;
  // What the certificates carry: the public half of key_ (see the constructor).
  PkeyPtr cert_pubkey_;
  std::shared_ptr<X509Stack> chain_;
  X509NamePtr issuer_;
  // Extensions equal in every leaf, encoded once.
  std::vector<X509ExtPtr> fixed_exts_;
};

}  // namespace upkeep::intercept
