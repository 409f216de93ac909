// X.509 nameConstraints (RFC 5280 4.2.1.10) as far as upkeep's interception CA needs
// them: read from a CA certificate, made for the intercept.hosts of a CA upkeep
// creates, and checked against the names its leaves carry, so that no leaf is
// minted that a client would reject for being outside its CA's constraints.
#pragma once

#include <openssl/x509.h>

#include <string>
#include <string_view>
#include <vector>

#include "intercept/host_name.hpp"

namespace upkeep::intercept {

// A CA's nameConstraints for the name types upkeep's leaves carry (dNSName,
// iPAddress), evaluated exactly as OpenSSL's verifier does (crypto/x509/v3_ncons.c):
// - a dNSName base "example.com" permits example.com and every name under it;
//   ".example.com" permits only names under it; "" permits every name;
// - an iPAddress base is address+mask, 8 or 16 octets, and never matches the other
//   family;
// - when a permitted subtree of a type exists, a name of that type must match one;
//   no name may match an excluded subtree; a type with no subtrees is unconstrained.
struct NameConstraints {
  struct IpRange {
    std::vector<unsigned char> addr;  // 4 or 16 octets
    std::vector<unsigned char> mask;  // same length
  };
  bool present = false;  // the CA carries the extension at all
  std::vector<std::string> permitted_dns, excluded_dns;
  std::vector<IpRange> permitted_ip, excluded_ip;

  bool permits(const CertName& name) const;
  // Whether every name an intercept.hosts pattern ("*", "*.example.com", a host, an
  // IP literal) can match (router.hpp host_matches) is permitted.
  bool permits_pattern(std::string_view pattern) const;
  // "DNS:example.com, DNS:.example.org, excluded IP:0.0.0.0/0", for messages.
  std::string describe() const;

  // The constraints a CA that upkeep creates for `hosts` carries; `present` is false
  // when hosts contains "*". Exact hosts are permitted as "host" and, unless another
  // pattern needs names under it, their subdomains are excluded (".host"): OpenSSL's
  // "host" alone would also permit every name under it. "*.d" becomes ".d" (names
  // under d only, as host_matches). Without an IP literal in hosts every IPv4 and
  // IPv6 address is excluded, so a minted IP leaf cannot verify either.
  static NameConstraints for_hosts(const std::vector<std::string>& hosts);
  // Throws ConfigError(`key_name`: ...) for constraints upkeep's leaves cannot be
  // checked against (directoryName, minimum/maximum); absent extension -> !present.
  static NameConstraints of(X509* cert, const std::string& key_name);
};

// Adds `nc` to `x` as its (critical) nameConstraints extension. Throws
// std::runtime_error, std::bad_alloc.
void add_name_constraints(X509* x, const NameConstraints& nc);

}  // namespace upkeep::intercept
