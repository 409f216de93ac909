// What may become a name in a minted certificate. SNI and CONNECT authorities come
// from the client unchecked; a comma, a NUL or a wildcard in them must never reach
// X509v3 (HAProxy once let a comma in SNI inject extra SANs).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace upkeep::intercept {

// A DNS host name as RFC 1123 allows it: dot-separated labels of letters, digits and
// inner hyphens, each 1-63 octets, 253 in all, at least one letter somewhere (so
// "1.2.3.4" is not taken for a name). One trailing dot is tolerated by the caller
// stripping it first (normalize_host), not here.
bool valid_dns_name(std::string_view name) noexcept;

// A literal IPv4 ("127.0.0.1") or IPv6 ("::1", without brackets) address, in the
// canonical text OpenSSL will be given; nullopt for anything else.
std::optional<std::string> canonical_ip(std::string_view text);

// The name a certificate may carry for `host` (an SNI value or a CONNECT host):
// lower-cased, one trailing dot removed, then a valid DNS name or IP literal.
// nullopt when it is neither: nothing is minted for it.
struct CertName {
  std::string name;
  bool is_ip = false;
};
std::optional<CertName> normalize_host(std::string_view host);

}  // namespace upkeep::intercept
