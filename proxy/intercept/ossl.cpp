#include "intercept/ossl.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <ctime>
#include <new>
#include <stdexcept>

namespace upkeep::intercept {

void set_random_serial(X509* cert) {
  std::array<unsigned char, 16> b{};
  do {
    if (RAND_bytes(b.data(), static_cast<int>(b.size())) != 1) {
      throw std::runtime_error("RAND_bytes: " + take_openssl_error());
    }
    b[0] &= 0x7F;  // DER INTEGER: positive without a padding octet
  } while (std::all_of(b.begin(), b.end(), [](unsigned char c) { return c == 0; }));
  BnPtr bn(BN_bin2bn(b.data(), static_cast<int>(b.size()), nullptr));
  Asn1IntPtr serial(bn ? BN_to_ASN1_INTEGER(bn.get(), nullptr) : nullptr);
  if (!serial || X509_set_serialNumber(cert, serial.get()) != 1) throw std::bad_alloc();
}

std::vector<unsigned char> key_identifier(EVP_PKEY* key) {
  X509PubkeyPtr pub(nullptr);
  X509_PUBKEY* raw = nullptr;
  if (X509_PUBKEY_set(&raw, key) != 1)
    throw std::runtime_error("X509_PUBKEY_set: " + take_openssl_error());
  pub.reset(raw);
  const unsigned char* bits = nullptr;
  int len = 0;
  if (X509_PUBKEY_get0_param(nullptr, &bits, &len, nullptr, pub.get()) != 1) {
    throw std::runtime_error("X509_PUBKEY_get0_param: " + take_openssl_error());
  }
  std::vector<unsigned char> md(EVP_MAX_MD_SIZE);
  unsigned int md_len = 0;
  if (EVP_Digest(bits, static_cast<std::size_t>(len), md.data(), &md_len, EVP_sha1(), nullptr) !=
      1) {
    throw std::runtime_error("SHA-1: " + take_openssl_error());
  }
  md.resize(md_len);
  return md;
}

std::chrono::system_clock::time_point to_time_point(const ASN1_TIME* t) {
  std::tm tm{};
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1) throw std::runtime_error("unreadable certificate time");
  return std::chrono::system_clock::from_time_t(::timegm(&tm));
}

std::string pem_of(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) {
    throw std::runtime_error("PEM_write_bio_X509: " + take_openssl_error());
  }
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

std::string take_openssl_error(std::string_view fallback) {
  unsigned long last = 0;
  while (unsigned long e = ERR_get_error())
    last = e;
  if (last == 0) return std::string(fallback);
  char buf[256];
  ERR_error_string_n(last, buf, sizeof buf);
  return buf;
}

void add_ext(X509* x, int nid, void* value, bool critical) {
  if (X509_add1_ext_i2d(x, nid, value, critical ? 1 : 0, X509V3_ADD_DEFAULT) != 1) {
    throw std::runtime_error(std::string("adding ") + OBJ_nid2sn(nid) + ": " +
                             take_openssl_error());
  }
}

OctetPtr octets(std::span<const unsigned char> bytes) {
  OctetPtr o(ASN1_OCTET_STRING_new());
  if (!o || ASN1_OCTET_STRING_set(o.get(), bytes.data(), static_cast<int>(bytes.size())) != 1) {
    throw std::bad_alloc();
  }
  return o;
}

}  // namespace upkeep::intercept
