#include "intercept/host_name.hpp"

#include <arpa/inet.h>

#include <array>

#include "text.hpp"

namespace upkeep::intercept {

bool valid_dns_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > 253) return false;
  bool letter = false;
  std::size_t label = 0;
  char prev = '.';
  for (char c : name) {
    if (c == '.') {
      if (label == 0 || prev == '-') return false;
      label = 0;
    } else {
      const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
      const bool digit = c >= '0' && c <= '9';
      if (!alpha && !digit && c != '-') return false;
      if (c == '-' && label == 0) return false;
      if (++label > 63) return false;
      letter = letter || alpha;
    }
    prev = c;
  }
  return label > 0 && prev != '-' && letter;
}

std::optional<std::string> canonical_ip(std::string_view text) {
  // inet_pton reads a C string: an embedded NUL would end the text early.
  if (text.empty() || text.size() > 45 || text.find('\0') != std::string_view::npos) {
    return std::nullopt;
  }
  const std::string s(text);
  std::array<unsigned char, 16> bin{};
  std::array<char, INET6_ADDRSTRLEN> out{};
  if (inet_pton(AF_INET, s.c_str(), bin.data()) == 1) {
    if (!inet_ntop(AF_INET, bin.data(), out.data(), out.size())) return std::nullopt;
    return std::string(out.data());
  }
  if (inet_pton(AF_INET6, s.c_str(), bin.data()) == 1) {
    if (!inet_ntop(AF_INET6, bin.data(), out.data(), out.size())) return std::nullopt;
    return std::string(out.data());
  }
  return std::nullopt;
}

std::optional<CertName> normalize_host(std::string_view host) {
  if (host.size() > 1 && host.back() == '.') host.remove_suffix(1);
  if (auto ip = canonical_ip(host)) return CertName{std::move(*ip), true};
  std::string lower = to_ascii_lower(host);
  if (!valid_dns_name(lower)) return std::nullopt;
  return CertName{std::move(lower), false};
}

}  // namespace upkeep::intercept
