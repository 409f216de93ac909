// The interception CA (SPEC.md "HTTPS interception", "The CA"): loaded from
// intercept.ca_cert/ca_key, or upkeep's own, created once in the state directory.
//
// Whoever holds this key can impersonate every site to every client that trusts it:
// it is a loaded weapon. Hence the refusals below (a key readable by anyone else, a
// state directory others can write to, names outside the CA's nameConstraints), the
// creation that never overwrites and never leaves half a key on disk, and the
// nameConstraints that confine a CA upkeep makes to the hosts it was made for.
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config.hpp"
#include "intercept/host_name.hpp"
#include "intercept/name_constraints.hpp"
#include "intercept/ossl.hpp"

namespace upkeep::intercept {

// SPEC.md: intercept.state_dir if set; else $STATE_DIRECTORY (its first entry when
// systemd passes several, colon-separated); else /var/lib/upkeep when running as
// root; else $XDG_STATE_HOME/upkeep (an absolute XDG_STATE_HOME only, as the XDG
// spec says); else $HOME/.local/state/upkeep. Throws ConfigError when none applies.
std::string resolve_state_dir(const InterceptSettings& s);

// Immutable after load and shared by every worker thread; OpenSSL's signing with a
// shared EVP_PKEY and reading a shared X509 are thread-safe.
class CertificateAuthority {
 public:
  // With intercept.ca_cert/ca_key: loads them (PEM; RSA >= 2048 bits or EC; the key
  // unencrypted). Otherwise upkeep's own CA in resolve_state_dir(): ca.pem and
  // ca-key.pem, created when missing and `create` (never overwritten; created under
  // an flock on the directory so two starts cannot both create one). Refused, with a
  // ConfigError naming the key: unreadable files, a key readable or writable by
  // group or others, a key not matching the certificate, a certificate that is not a
  // CA (basicConstraints CA:TRUE, keyUsage keyCertSign when present), not currently
  // valid, an intercept.hosts pattern outside the CA's nameConstraints; with create
  // false and no CA: "run `upkeep ca init`".
  static std::shared_ptr<const CertificateAuthority> load(const Config& cfg, bool create);

  // The path `upkeep ca path` prints when a CA is there (the given ca_cert, or
  // <state_dir>/ca.pem with its key beside it); nullopt when there is none. Does not
  // validate: that is load's work.
  static std::optional<std::string> find_cert(const InterceptSettings& s);

  // Borrowed, never to be modified (OpenSSL's APIs take non-const pointers).
  X509* cert() const noexcept { return cert_.get(); }
  EVP_PKEY* key() const noexcept { return key_.get(); }
  // Certificates after the first in ca_cert (an intermediate CA's issuers), sent
  // to clients after each leaf; empty for upkeep's own CA.
  X509Stack* extra_chain() const noexcept { return extra_chain_.get(); }
  const std::vector<unsigned char>& subject_key_id() const noexcept { return skid_; }
  std::chrono::system_clock::time_point not_after() const noexcept { return not_after_; }
  const NameConstraints& name_constraints() const noexcept { return nc_; }
  // Whether a leaf for `name` would verify under this CA's nameConstraints.
  bool permits(const CertName& name) const { return nc_.permits(name); }

  const std::string& cert_path() const noexcept { return cert_path_; }
  const std::string& state_dir() const noexcept { return state_dir_; }
  std::string bundle_path() const { return state_dir_ + "/ca-bundle.pem"; }
  bool own() const noexcept { return own_; }          // upkeep's own CA (not ca_cert)
  bool created() const noexcept { return created_; }  // this load created it
  // Things worth a log line at start that are not worth refusing to start (a state
  // directory readable by group or others).
  const std::vector<std::string>& warnings() const noexcept { return warnings_; }

  // <state_dir>/ca-bundle.pem, 0644, replaced atomically (temp file + rename): the
  // system roots (X509_get_default_cert_file(), the compiled-in path and not
  // $SSL_CERT_FILE, which `upkeep ca env` may point at this very bundle), then this
  // CA. Creates the state directory (0700) if needed. Throws ConfigError.
  void write_trust_bundle() const;

  CertificateAuthority(const CertificateAuthority&) = delete;
  CertificateAuthority& operator=(const CertificateAuthority&) = delete;

 private:
  CertificateAuthority() = default;
  X509Ptr cert_;
  PkeyPtr key_;
  X509StackPtr extra_chain_;
  std::vector<unsigned char> skid_;
  std::chrono::system_clock::time_point not_after_{};
  NameConstraints nc_;
  std::string cert_path_, state_dir_;
  bool own_ = false, created_ = false;
  std::vector<std::string> warnings_;
};

}  // namespace upkeep::intercept
