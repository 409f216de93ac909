// OpenSSL (libcrypto) plumbing shared by the interception modules and their tests:
// owning pointers for the objects they make, and the few helpers both the CA and the
// leaf mint need.
#pragma once

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <chrono>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace upkeep::intercept {

// Owning OpenSSL pointers: every object this module makes is freed on every path,
// exceptions included.
template <auto Free>
struct OsslDeleter {
  template <class T>
  void operator()(T* p) const noexcept {
    Free(p);
  }
};
template <class T, auto Free>
using OsslPtr = std::unique_ptr<T, OsslDeleter<Free>>;

using X509Ptr = OsslPtr<X509, X509_free>;
using X509NamePtr = OsslPtr<X509_NAME, X509_NAME_free>;
using X509ExtPtr = OsslPtr<X509_EXTENSION, X509_EXTENSION_free>;
using X509PubkeyPtr = OsslPtr<X509_PUBKEY, X509_PUBKEY_free>;
using PkeyPtr = OsslPtr<EVP_PKEY, EVP_PKEY_free>;
using BioPtr = OsslPtr<BIO, BIO_free_all>;
using BnPtr = OsslPtr<BIGNUM, BN_free>;
using Asn1IntPtr = OsslPtr<ASN1_INTEGER, ASN1_INTEGER_free>;
using OctetPtr = OsslPtr<ASN1_OCTET_STRING, ASN1_OCTET_STRING_free>;
using BitStringPtr = OsslPtr<ASN1_BIT_STRING, ASN1_BIT_STRING_free>;
using BasicConstraintsPtr = OsslPtr<BASIC_CONSTRAINTS, BASIC_CONSTRAINTS_free>;
using AkidPtr = OsslPtr<AUTHORITY_KEYID, AUTHORITY_KEYID_free>;
using EkuPtr = OsslPtr<EXTENDED_KEY_USAGE, EXTENDED_KEY_USAGE_free>;
using GeneralNamePtr = OsslPtr<GENERAL_NAME, GENERAL_NAME_free>;
using GeneralNamesPtr = OsslPtr<GENERAL_NAMES, GENERAL_NAMES_free>;
using NameConstraintsPtr = OsslPtr<NAME_CONSTRAINTS, NAME_CONSTRAINTS_free>;
using SubtreePtr = OsslPtr<GENERAL_SUBTREE, GENERAL_SUBTREE_free>;
using StorePtr = OsslPtr<X509_STORE, X509_STORE_free>;
using StoreCtxPtr = OsslPtr<X509_STORE_CTX, X509_STORE_CTX_free>;

// clang-format reads STACK_OF(X509)* as a product; the aliases keep them types.
using X509Stack = STACK_OF(X509);
using Subtrees = STACK_OF(GENERAL_SUBTREE);
inline void free_x509_stack(X509Stack* s) noexcept {
  sk_X509_pop_free(s, X509_free);
}
using X509StackPtr = OsslPtr<X509Stack, free_x509_stack>;

// Shared by the CA and the leaf mint.
// A random positive serial of 127 bits (RAND_bytes, top bit cleared, never zero):
// Firefox rejects a second certificate with the same issuer and serial.
void set_random_serial(X509* cert);
// RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits.
std::vector<unsigned char> key_identifier(EVP_PKEY* key);
std::chrono::system_clock::time_point to_time_point(const ASN1_TIME* t);
std::string pem_of(X509* cert);
// Drains OpenSSL's error queue (so a stale entry never blames a later call) and
// returns its last reason, or `fallback` when it was empty.
std::string take_openssl_error(std::string_view fallback = "unknown OpenSSL error");
// An OCTET STRING holding `bytes`; throws std::bad_alloc.
OctetPtr octets(std::span<const unsigned char> bytes);
// Adds extension `nid` (its OpenSSL struct `value`) to `x`; throws std::runtime_error.
void add_ext(X509* x, int nid, void* value, bool critical);

}  // namespace upkeep::intercept
