#include "intercept/cert_mint.hpp"

#include <arpa/inet.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <array>

namespace upkeep::intercept {
namespace {

constexpr std::size_t kMaxCommonName = 64;  // X.520 ub-common-name

[[noreturn]] void mint_failed(const std::string& what) {
  throw MintError(what + ": " + take_openssl_error());
}

X509ExtPtr encode_ext(int nid, void* value, bool critical) {
  X509ExtPtr ext(X509V3_EXT_i2d(nid, critical ? 1 : 0, value));
  if (!ext) mint_failed(std::string("encoding ") + OBJ_nid2sn(nid));
  return ext;
}

// The subjectAltName: one GENERAL_NAME holding the octets of the name (dNSName) or
// address (iPAddress). Never assembled from text such as "DNS:%s", which a comma in
// the name would turn into a second entry.
GeneralNamesPtr subject_alt_name(const CertName& name) {
  GeneralNamesPtr names(sk_GENERAL_NAME_new_null());
  GeneralNamePtr gn(GENERAL_NAME_new());
  if (!names || !gn) throw std::bad_alloc();
  if (name.is_ip) {
    std::array<unsigned char, 16> b{};
    std::size_t n = 4;
    if (inet_pton(AF_INET, name.name.c_str(), b.data()) != 1) {
      n = 16;
      if (inet_pton(AF_INET6, name.name.c_str(), b.data()) != 1) {
        throw MintError("not an IP address: " + name.name);
      }
    }
    GENERAL_NAME_set0_value(gn.get(), GEN_IPADD, octets({b.data(), n}).release());
  } else {
    ASN1_IA5STRING* s = ASN1_IA5STRING_new();
    if (!s || ASN1_STRING_set(s, name.name.data(), static_cast<int>(name.name.size())) != 1) {
      ASN1_IA5STRING_free(s);
      throw std::bad_alloc();
    }
    GENERAL_NAME_set0_value(gn.get(), GEN_DNS, s);
  }
  if (!sk_GENERAL_NAME_push(names.get(), gn.get())) throw std::bad_alloc();
  gn.release();
  return names;
}

// The public half of `key` in OpenSSL's legacy key form, rebuilt from its DER
// (d2i_KeyParams + d2i_PublicKey: no EC_KEY calls), or null if that fails. OpenSSL
// 3.0's X509_set_pubkey sends a provider key through an encoder and a decoder
// (~240 us, four fifths of a mint); a legacy key it encodes directly (~7 us). Only
// certificates hold this copy: signing and handshakes use the provider key.
PkeyPtr legacy_public_copy(EVP_PKEY* key) {
  unsigned char* params = nullptr;
  const int params_len = i2d_KeyParams(key, &params);
  std::array<unsigned char, 160> point{};
  std::size_t point_len = 0;
  PkeyPtr out;
  if (params_len > 0 && EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                                        point.size(), &point_len) == 1) {
    const unsigned char* p = params;
    out.reset(d2i_KeyParams(EVP_PKEY_EC, nullptr, &p, params_len));
    const unsigned char* q = point.data();
    EVP_PKEY* raw = out.get();
    if (out && d2i_PublicKey(EVP_PKEY_EC, &raw, &q, static_cast<long>(point_len)) != out.get()) {
      out.reset();
    }
  }
  OPENSSL_free(params);
  // Also makes OpenSSL cache the copy's provider export now, single-threaded, rather
  // than in the first concurrent handshakes that compare it with the private key.
  if (out && EVP_PKEY_eq(out.get(), key) != 1) out.reset();
  ERR_clear_error();
  return out;
}

// CertName is a plain struct anyone can fill in; only what normalize_host returns
// unchanged (a valid host name or canonical IP literal) may reach a certificate. The
// refusal does not echo the name: it came from a client.
CertName checked_name(const CertName& name) {
  auto checked = normalize_host(name.name);
  if (!checked || checked->name != name.name || checked->is_ip != name.is_ip) {
    throw MintError("not a valid host name; nothing minted");
  }
  return std::move(*checked);
}

bool set_time(ASN1_TIME* t, std::chrono::system_clock::time_point tp) {
  return ASN1_TIME_set(t, std::chrono::system_clock::to_time_t(tp)) != nullptr;
}

}  // namespace

Leaf::Leaf(X509Ptr cert, PkeyPtr key, std::shared_ptr<X509Stack> chain, CertName name,
           TimePoint not_before, TimePoint not_after)
    : cert_(std::move(cert)),
      key_(std::move(key)),
      chain_(std::move(chain)),
      name_(std::move(name)),
      not_before_(not_before),
      not_after_(not_after) {}

LeafMinter::LeafMinter(std::shared_ptr<const CertificateAuthority> ca, Clock clock)
    : ca_(std::move(ca)),
      clock_(clock ? std::move(clock) : Clock([] { return std::chrono::system_clock::now(); })) {
  if (!ca_) throw std::invalid_argument("LeafMinter: no CA");
  key_.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!key_) mint_failed("leaf key generation");
  cert_pubkey_ = legacy_public_copy(key_.get());
  if (!cert_pubkey_) {
    if (EVP_PKEY_up_ref(key_.get()) != 1) throw std::bad_alloc();
    cert_pubkey_.reset(key_.get());  // slower, same certificates
  }

  X509StackPtr chain(sk_X509_new_null());
  if (!chain) throw std::bad_alloc();
  auto push = [&](X509* x) {
    if (X509_up_ref(x) != 1) throw std::bad_alloc();
    if (!sk_X509_push(chain.get(), x)) {
      X509_free(x);
      throw std::bad_alloc();
    }
  };
  push(ca_->cert());
  for (int i = 0; i < sk_X509_num(ca_->extra_chain()); ++i)
    push(sk_X509_value(ca_->extra_chain(), i));
  chain_ = std::shared_ptr<X509Stack>(chain.release(), free_x509_stack);

  // A private copy: every mint reads it concurrently, and nothing else touches it.
  issuer_.reset(X509_NAME_dup(X509_get_subject_name(ca_->cert())));
  if (!issuer_) mint_failed("copying the CA's subject");

  BasicConstraintsPtr bc(BASIC_CONSTRAINTS_new());
  if (!bc) throw std::bad_alloc();
  bc->ca = 0;
  fixed_exts_.push_back(encode_ext(NID_basic_constraints, bc.get(), true));

  // digitalSignature only: an ECDSA key signs the handshake and never encrypts.
  BitStringPtr ku(ASN1_BIT_STRING_new());
  if (!ku || ASN1_BIT_STRING_set_bit(ku.get(), 0, 1) != 1) throw std::bad_alloc();
  fixed_exts_.push_back(encode_ext(NID_key_usage, ku.get(), true));

  EkuPtr eku(sk_ASN1_OBJECT_new_null());
  ASN1_OBJECT* server_auth = OBJ_nid2obj(NID_server_auth);
  if (!eku || !server_auth || !sk_ASN1_OBJECT_push(eku.get(), server_auth)) throw std::bad_alloc();
  fixed_exts_.push_back(encode_ext(NID_ext_key_usage, eku.get(), false));

  const auto skid = key_identifier(key_.get());
  fixed_exts_.push_back(encode_ext(NID_subject_key_identifier, octets(skid).get(), false));

  AkidPtr akid(AUTHORITY_KEYID_new());
  if (!akid) throw std::bad_alloc();
  const auto& ca_skid = ca_->subject_key_id();
  akid->keyid = octets(ca_skid).release();
  fixed_exts_.push_back(encode_ext(NID_authority_key_identifier, akid.get(), false));
}

CertName LeafMinter::check(const CertName& name) const {
  CertName checked = checked_name(name);
  if (!ca_->permits(checked)) {
    throw MintError(checked.name + " is outside the CA's nameConstraints; nothing minted");
  }
  return checked;
}

std::shared_ptr<const Leaf> LeafMinter::mint(const CertName& name) const {
  return sign(check(name));
}

std::shared_ptr<const Leaf> LeafMinter::mint_ignoring_constraints_for_test(
    const CertName& name) const {
  return sign(checked_name(name));
}

std::shared_ptr<const Leaf> LeafMinter::sign(const CertName& name) const {
  // Whole seconds: what the certificate holds is what not_after() reports.
  const auto now = std::chrono::floor<std::chrono::seconds>(clock_());
  const auto not_before = now - kBackdate;
  const auto not_after =
      std::min<std::chrono::system_clock::time_point>(now + kLifetime, ca_->not_after());
  if (not_after <= now) throw MintError("the CA has expired; nothing minted");

  X509Ptr x(X509_new());
  if (!x) throw std::bad_alloc();
  if (X509_set_version(x.get(), X509_VERSION_3) != 1) mint_failed("X509_set_version");
  set_random_serial(x.get());
  if (X509_set_issuer_name(x.get(), issuer_.get()) != 1) mint_failed("X509_set_issuer_name");
  if (!set_time(X509_getm_notBefore(x.get()), not_before) ||
      !set_time(X509_getm_notAfter(x.get()), not_after)) {
    mint_failed("validity");
  }
  // An IP leaf carries no CN: OpenSSL checks a CN that looks like a host name
  // ("10.0.0.5" does) against the CA's DNS constraints when the SAN has no DNS entry,
  // which would fail every IP leaf under a name-constrained CA.
  const bool with_cn = !name.is_ip && name.name.size() <= kMaxCommonName;
  if (with_cn &&
      X509_NAME_add_entry_by_NID(X509_get_subject_name(x.get()), NID_commonName, MBSTRING_ASC,
                                 reinterpret_cast<const unsigned char*>(name.name.data()),
                                 static_cast<int>(name.name.size()), -1, 0) != 1) {
    mint_failed("subject");
  }
  if (X509_set_pubkey(x.get(), cert_pubkey_.get()) != 1) mint_failed("X509_set_pubkey");
  for (const auto& ext : fixed_exts_) {
    if (X509_add_ext(x.get(), ext.get(), -1) != 1) mint_failed("X509_add_ext");
  }
  GeneralNamesPtr san = subject_alt_name(name);
  if (X509_add1_ext_i2d(x.get(), NID_subject_alt_name, san.get(), with_cn ? 0 : 1,
                        X509V3_ADD_DEFAULT) != 1) {
    mint_failed("subjectAltName");
  }
  if (X509_sign(x.get(), ca_->key(), EVP_sha256()) <= 0) mint_failed("signing");
  // Computes OpenSSL's cached extension flags now, while the certificate is still
  // private to this thread, instead of lazily in concurrent handshakes.
  X509_check_purpose(x.get(), -1, 0);

  if (EVP_PKEY_up_ref(key_.get()) != 1) throw std::bad_alloc();
  PkeyPtr key(key_.get());
  return std::make_shared<const Leaf>(std::move(x), std::move(key), chain_, name, not_before,
                                      not_after);
}

}  // namespace upkeep::intercept
