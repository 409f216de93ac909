#include "intercept/name_constraints.hpp"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <array>
#include <new>
#include <optional>
#include <stdexcept>
#include <utility>

#include "config.hpp"
#include "intercept/ossl.hpp"
#include "text.hpp"

namespace upkeep::intercept {
namespace {

void push_subtree(Subtrees** stack, GeneralNamePtr base) {
  if (!*stack) *stack = sk_GENERAL_SUBTREE_new_null();
  SubtreePtr sub(GENERAL_SUBTREE_new());
  if (!*stack || !sub) throw std::bad_alloc();
  GENERAL_NAME_free(sub->base);
  sub->base = base.release();
  if (!sk_GENERAL_SUBTREE_push(*stack, sub.get())) throw std::bad_alloc();
  sub.release();
}

GeneralNamePtr dns_general_name(const std::string& s) {
  GeneralNamePtr gn(GENERAL_NAME_new());
  ASN1_IA5STRING* ia5 = ASN1_IA5STRING_new();
  if (!gn || !ia5 || ASN1_STRING_set(ia5, s.data(), static_cast<int>(s.size())) != 1) {
    ASN1_IA5STRING_free(ia5);
    throw std::bad_alloc();
  }
  GENERAL_NAME_set0_value(gn.get(), GEN_DNS, ia5);
  return gn;
}

GeneralNamePtr ip_general_name(const std::vector<unsigned char>& bytes) {
  GeneralNamePtr gn(GENERAL_NAME_new());
  if (!gn) throw std::bad_alloc();
  GENERAL_NAME_set0_value(gn.get(), GEN_IPADD, octets(bytes).release());
  return gn;
}

bool ends_with_ci(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && iequals(s.substr(s.size() - suffix.size()), suffix);
}

// OpenSSL's nc_dns (crypto/x509/v3_ncons.c), for one name and one base.
bool dns_in_subtree(std::string_view name, std::string_view base) {
  if (base.empty()) return true;
  if (name.size() < base.size()) return false;
  if (name.size() > base.size() && base.front() != '.' &&
      name[name.size() - base.size() - 1] != '.') {
    return false;
  }
  return ends_with_ci(name, base);
}

// ".d" for names under d; base forms "x" and ".x" both as ".x" for suffix tests.
std::string dotted(std::string_view s) {
  return !s.empty() && s.front() == '.' ? std::string(s) : "." + std::string(s);
}

// Every name under d (what "*.d" matches) lies in the subtree `base`.
bool covers_all_under(std::string_view base, std::string_view d) {
  return base.empty() || ends_with_ci(dotted(d), dotted(base));
}

// Some name under d lies in the subtree `base`.
bool meets_some_under(std::string_view base, std::string_view d) {
  if (base.empty()) return true;
  if (base == ".") return false;  // matches no name at all
  const std::string D = dotted(d), B = dotted(base);
  return ends_with_ci(D, B) || ends_with_ci(B, D);
}

std::optional<std::vector<unsigned char>> ip_bytes(const std::string& text) {
  std::array<unsigned char, 16> b{};
  if (inet_pton(AF_INET, text.c_str(), b.data()) == 1) return std::vector(b.begin(), b.begin() + 4);
  if (inet_pton(AF_INET6, text.c_str(), b.data()) == 1) return std::vector(b.begin(), b.end());
  return std::nullopt;
}

bool ip_in_range(const std::vector<unsigned char>& ip, const NameConstraints::IpRange& r) {
  if (ip.size() != r.addr.size()) return false;
  for (std::size_t i = 0; i < ip.size(); ++i) {
    if ((ip[i] & r.mask[i]) != (r.addr[i] & r.mask[i])) return false;
  }
  return true;
}

std::string ip_text(const std::vector<unsigned char>& b) {
  char out[INET6_ADDRSTRLEN] = {};
  inet_ntop(b.size() == 4 ? AF_INET : AF_INET6, b.data(), out, sizeof out);
  return out;
}

}  // namespace

bool NameConstraints::permits(const CertName& name) const {
  if (!present) return true;
  if (name.is_ip) {
    const auto ip = ip_bytes(name.name);
    if (!ip) return false;
    const auto in = [&](const IpRange& r) { return ip_in_range(*ip, r); };
    if (!permitted_ip.empty() && std::none_of(permitted_ip.begin(), permitted_ip.end(), in)) {
      return false;
    }
    return std::none_of(excluded_ip.begin(), excluded_ip.end(), in);
  }
  const auto in = [&](const std::string& base) { return dns_in_subtree(name.name, base); };
  if (!permitted_dns.empty() && std::none_of(permitted_dns.begin(), permitted_dns.end(), in)) {
    return false;
  }
  return std::none_of(excluded_dns.begin(), excluded_dns.end(), in);
}

bool NameConstraints::permits_pattern(std::string_view pattern) const {
  if (!present) return true;
  if (pattern == "*") {
    return permitted_dns.empty() && excluded_dns.empty() && permitted_ip.empty() &&
           excluded_ip.empty();
  }
  if (pattern.size() > 2 && pattern.starts_with("*.")) {
    const std::string_view d = pattern.substr(2);
    const auto covers = [&](const std::string& b) { return covers_all_under(b, d); };
    const auto meets = [&](const std::string& b) { return meets_some_under(b, d); };
    if (!permitted_dns.empty() &&
        std::none_of(permitted_dns.begin(), permitted_dns.end(), covers)) {
      return false;
    }
    return std::none_of(excluded_dns.begin(), excluded_dns.end(), meets);
  }
  const auto name = normalize_host(pattern);
  return name && permits(*name);
}

std::string NameConstraints::describe() const {
  if (!present) return "no nameConstraints";
  std::string out;
  auto add = [&](const std::string& item) {
    if (!out.empty()) out += ", ";
    out += item;
  };
  auto ip = [](const IpRange& r) { return "IP:" + ip_text(r.addr) + "/" + ip_text(r.mask); };
  for (const auto& d : permitted_dns)
    add("DNS:" + d);
  for (const auto& r : permitted_ip)
    add(ip(r));
  for (const auto& d : excluded_dns)
    add("excluded DNS:" + d);
  for (const auto& r : excluded_ip)
    add("excluded " + ip(r));
  return out.empty() ? "empty nameConstraints" : out;
}

NameConstraints NameConstraints::for_hosts(const std::vector<std::string>& hosts) {
  NameConstraints nc;
  if (std::find(hosts.begin(), hosts.end(), "*") != hosts.end()) return nc;
  nc.present = true;
  auto add = [](std::vector<std::string>& v, std::string s) {
    if (std::find(v.begin(), v.end(), s) == v.end()) v.push_back(std::move(s));
  };
  bool any_ip = false;
  for (const auto& p : hosts) {
    if (p.starts_with("*.")) {
      add(nc.permitted_dns, p.substr(1));
      continue;
    }
    if (auto ip = canonical_ip(p)) {
      auto bytes = ip_bytes(*ip);
      nc.permitted_ip.push_back({*bytes, std::vector<unsigned char>(bytes->size(), 0xFF)});
      any_ip = true;
      continue;
    }
    add(nc.permitted_dns, p);
    // "p" alone would permit every name under p too. Exclude those unless another
    // pattern wants some of them (an exclusion applies to every permitted name).
    const std::string under = dotted(p);
    const bool wanted = std::any_of(hosts.begin(), hosts.end(), [&](const std::string& q) {
      if (q == p || q == "*" || canonical_ip(q)) return false;
      if (q.starts_with("*.")) {
        const std::string d = dotted(q.substr(2));
        return ends_with_ci(d, under) || ends_with_ci(under, d);
      }
      return ends_with_ci(q, under);
    });
    if (!wanted) add(nc.excluded_dns, under);
  }
  if (!any_ip) {
    // With no iPAddress subtree at all, IP names would be unconstrained.
    nc.excluded_ip.push_back({std::vector<unsigned char>(4, 0), std::vector<unsigned char>(4, 0)});
    nc.excluded_ip.push_back(
        {std::vector<unsigned char>(16, 0), std::vector<unsigned char>(16, 0)});
  }
  for (const auto& p : hosts) {
    if (!nc.permits_pattern(p)) {
      throw std::logic_error("nameConstraints for hosts do not permit " + p);
    }
  }
  return nc;
}

NameConstraints NameConstraints::of(X509* cert, const std::string& key_name) {
  const auto refused = [&](const std::string& why) { return ConfigError(key_name + ": " + why); };
  NameConstraints nc;
  int crit = 0;
  NameConstraintsPtr ext(
      static_cast<NAME_CONSTRAINTS*>(X509_get_ext_d2i(cert, NID_name_constraints, &crit, nullptr)));
  if (!ext) {
    if (crit == -1) return nc;  // absent
    ERR_clear_error();
    throw refused("the CA's nameConstraints extension is unreadable or repeated");
  }
  nc.present = true;
  auto walk = [&](Subtrees* subs, std::vector<std::string>& dns, std::vector<IpRange>& ips) {
    for (int i = 0; i < sk_GENERAL_SUBTREE_num(subs); ++i) {
      const GENERAL_SUBTREE* sub = sk_GENERAL_SUBTREE_value(subs, i);
      // OpenSSL fails every verification under such a subtree (SUBTREE_MINMAX).
      if (sub->maximum || (sub->minimum && ASN1_INTEGER_get(sub->minimum) != 0)) {
        throw refused("the CA's nameConstraints use minimum/maximum, which no verifier supports");
      }
      const GENERAL_NAME* base = sub->base;
      if (base->type == GEN_DNS) {
        const ASN1_STRING* s = base->d.dNSName;
        dns.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                         static_cast<std::size_t>(ASN1_STRING_length(s)));
      } else if (base->type == GEN_IPADD) {
        const ASN1_STRING* s = base->d.iPAddress;
        const auto* p = ASN1_STRING_get0_data(s);
        const int n = ASN1_STRING_length(s);
        if (n != 8 && n != 32) throw refused("the CA's nameConstraints hold a malformed iPAddress");
        ips.push_back({std::vector<unsigned char>(p, p + n / 2),
                       std::vector<unsigned char>(p + n / 2, p + n)});
      } else if (base->type == GEN_DIRNAME) {
        // The leaf subject (CN=host) would be checked against these; upkeep does not
        // shape its subjects to fit.
        throw refused(
            "the CA's nameConstraints restrict directoryName, which upkeep's "
            "leaf certificates cannot satisfy");
      }
      // email, URI, otherName: upkeep's leaves carry none of those names.
    }
  };
  walk(ext->permittedSubtrees, nc.permitted_dns, nc.permitted_ip);
  walk(ext->excludedSubtrees, nc.excluded_dns, nc.excluded_ip);
  return nc;
}

void add_name_constraints(X509* x, const NameConstraints& nc) {
  NameConstraintsPtr ext(NAME_CONSTRAINTS_new());
  if (!ext) throw std::bad_alloc();
  for (const auto& d : nc.permitted_dns)
    push_subtree(&ext->permittedSubtrees, dns_general_name(d));
  for (const auto& d : nc.excluded_dns)
    push_subtree(&ext->excludedSubtrees, dns_general_name(d));
  auto ip = [](const NameConstraints::IpRange& r) {
    std::vector<unsigned char> b = r.addr;
    b.insert(b.end(), r.mask.begin(), r.mask.end());
    return ip_general_name(b);
  };
  for (const auto& r : nc.permitted_ip)
    push_subtree(&ext->permittedSubtrees, ip(r));
  for (const auto& r : nc.excluded_ip)
    push_subtree(&ext->excludedSubtrees, ip(r));
  // Critical (RFC 5280 4.2.1.10): a client that cannot honour the limits must not
  // accept the CA as unlimited.
  add_ext(x, NID_name_constraints, ext.get(), true);
}

}  // namespace upkeep::intercept
