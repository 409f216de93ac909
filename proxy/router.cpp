#include "router.hpp"

#include "text.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <optional>
#include <utility>

namespace upkeep {

namespace {

bool istarts_with(std::string_view s, std::string_view prefix) noexcept {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

bool is_digit(char c) noexcept {
  return c >= '0' && c <= '9';
}
bool is_alpha(char c) noexcept {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
bool is_hex(char c) noexcept {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// Bytes that may never appear in a request target: whitespace and controls would
// let the next hop re-frame the request (RFC 9112 §3.2), and raw non-ASCII is not
// a URI character at all (RFC 3986 §2: it must be percent-encoded).
bool is_ctl_or_space(char c) noexcept {
  auto u = static_cast<unsigned char>(c);
  return u <= 0x20 || u >= 0x7f;
}

struct Authority {
  std::string host;  // normalised: lower-case, IPv6 without brackets
  std::optional<uint16_t> port;
  bool ip_literal = false;
};

std::optional<uint16_t> parse_port(std::string_view s) {
  // An empty port ("host:") is legal in RFC 3986 but never sent by a sane client;
  // refusing it keeps one spelling per origin.
  if (s.empty() || s.size() > 5) return std::nullopt;
  unsigned v = 0;
  for (char c : s) {
    if (!is_digit(c)) return std::nullopt;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v == 0 || v > 65535) return std::nullopt;
  return static_cast<uint16_t>(v);
}

// Canonical dotted quad only: getaddrinfo() would also accept "127.1", "0x7f.0.0.1"
// or "2130706433", which would walk around access.deny host patterns.
bool is_canonical_ipv4(std::string_view s) {
  int parts = 0;
  size_t i = 0;
  while (true) {
    size_t start = i;
    unsigned v = 0;
    while (i < s.size() && is_digit(s[i])) {
      v = v * 10 + static_cast<unsigned>(s[i] - '0');
      if (i - start >= 3) return false;
      ++i;
    }
    size_t len = i - start;
    if (len == 0 || v > 255 || (len > 1 && s[start] == '0')) return false;
    ++parts;
    if (i == s.size()) break;
    if (s[i] != '.' || parts == 4) return false;
    ++i;
  }
  return parts == 4;
}

// WHATWG URL's "ends in a number": such a name is an IPv4 attempt for resolvers.
bool looks_numeric(std::string_view host) {
  auto dot = host.rfind('.');
  std::string_view last = dot == std::string_view::npos ? host : host.substr(dot + 1);
  if (last.empty()) return false;
  if (std::all_of(last.begin(), last.end(), is_digit)) return true;
  if (last.size() >= 2 && last[0] == '0' && (last[1] == 'x' || last[1] == 'X')) {
    return std::all_of(last.begin() + 2, last.end(), is_hex);
  }
  return false;
}

std::optional<std::string> parse_ipv6(std::string_view inside) {
  // Zone ids ("%25eth0") and IPvFuture name nothing an origin can be reached by.
  if (inside.empty() || inside.size() >= INET6_ADDRSTRLEN) return std::nullopt;
  for (char c : inside) {
    if (!is_hex(c) && c != ':' && c != '.') return std::nullopt;
  }
  std::string buf(inside);
  std::array<unsigned char, 16> bytes{};
  if (inet_pton(AF_INET6, buf.c_str(), bytes.data()) != 1) return std::nullopt;
  // One spelling per address, so "[::0001]" and "[::1]" share a pool and a deny rule.
  std::array<char, INET6_ADDRSTRLEN> out{};
  if (inet_ntop(AF_INET6, bytes.data(), out.data(), out.size()) == nullptr) return std::nullopt;
  return std::string(out.data());
}

std::optional<std::string> parse_host(std::string_view h, bool& ip_literal) {
  ip_literal = false;
  if (h.empty()) return std::nullopt;
  if (h.front() == '[') {
    if (h.size() < 2 || h.back() != ']') return std::nullopt;
    ip_literal = true;
    return parse_ipv6(h.substr(1, h.size() - 2));
  }
  // A trailing dot names the same host; dropping it keeps "evil.com." from slipping
  // past a deny rule for "evil.com", and SNI may not carry it (RFC 6066 §3).
  if (h.back() == '.') h.remove_suffix(1);
  if (h.empty() || h.size() > 253) return std::nullopt;
  for (char c : h) {
    if (!is_alpha(c) && !is_digit(c) && c != '-' && c != '.' && c != '_') return std::nullopt;
  }
  if (h.front() == '.' || h.find("..") != std::string_view::npos) return std::nullopt;
  if (looks_numeric(h)) {
    if (!is_canonical_ipv4(h)) return std::nullopt;
    ip_literal = true;
  }
  return to_ascii_lower(h);
}

// "host[:port]" as in a URL authority, Host header or CONNECT target.
std::optional<Authority> parse_authority(std::string_view a) {
  if (a.empty() || a.find('@') != std::string_view::npos) return std::nullopt;
  std::string_view host = a;
  std::string_view port;
  bool has_port = false;
  if (a.front() == '[') {
    auto close = a.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    host = a.substr(0, close + 1);
    std::string_view rest = a.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return std::nullopt;
      port = rest.substr(1);
      has_port = true;
    }
  } else if (auto colon = a.find(':'); colon != std::string_view::npos) {
    host = a.substr(0, colon);
    port = a.substr(colon + 1);
    has_port = true;
  }
  Authority out;
  auto h = parse_host(host, out.ip_literal);
  if (!h) return std::nullopt;
  out.host = std::move(*h);
  if (has_port) {
    out.port = parse_port(port);
    if (!out.port) return std::nullopt;
  }
  return out;
}

// Path and query are forwarded verbatim; only bytes that could re-frame the
// request or smuggle a fragment are refused.
bool valid_path(std::string_view p) {
  return std::none_of(p.begin(), p.end(), [](char c) { return is_ctl_or_space(c) || c == '#'; });
}

struct Target {
  Authority authority;
  uint16_t port = 80;  // explicit or the scheme's default
  bool https = false;
  std::string path;
};

std::optional<Target> parse_absolute(std::string_view t) {
  Target out;
  if (istarts_with(t, "http://")) {
    t.remove_prefix(7);
  } else if (istarts_with(t, "https://")) {
    t.remove_prefix(8);
    out.https = true;
  } else {
    return std::nullopt;
  }
  auto end = t.find_first_of("/?#");
  std::string_view auth = t.substr(0, end);
  std::string_view rest = end == std::string_view::npos ? std::string_view{} : t.substr(end);
  if (std::any_of(auth.begin(), auth.end(), is_ctl_or_space)) return std::nullopt;
  auto a = parse_authority(auth);
  if (!a || !valid_path(rest)) return std::nullopt;
  out.authority = std::move(*a);
  out.port = out.authority.port.value_or(out.https ? 443 : 80);
  out.path.reserve(rest.size() + 1);
  if (rest.empty() || rest.front() == '?') out.path.push_back('/');
  out.path.append(rest);
  return out;
}

std::optional<Target> parse_origin_form(std::string_view t, std::string_view host_header) {
  if (t.empty() || t.front() != '/' || !valid_path(t)) return std::nullopt;
  if (std::any_of(host_header.begin(), host_header.end(), is_ctl_or_space)) return std::nullopt;
  auto a = parse_authority(host_header);
  if (!a) return std::nullopt;
  Target out;
  out.authority = std::move(*a);
  // The downstream listener is plain HTTP, so an origin-form request is http://.
  out.port = out.authority.port.value_or(80);
  out.path = std::string(t);
  return out;
}

std::string authority_string(const std::string& host, uint16_t port, bool with_port) {
  std::string s = host.find(':') != std::string::npos ? '[' + host + ']' : host;
  if (with_port) {
    s += ':';
    s += std::to_string(port);
  }
  return s;
}

bool prefix_match(std::span<const uint8_t> addr, const Cidr& c) {
  if (addr.size() != c.addr.size()) return false;
  unsigned bits = std::min<unsigned>(c.prefix, static_cast<unsigned>(addr.size() * 8));
  size_t full = bits / 8;
  if (!std::equal(addr.begin(), addr.begin() + static_cast<std::ptrdiff_t>(full), c.addr.begin()))
    return false;
  unsigned rem = bits % 8;
  if (rem == 0) return true;
  auto mask = static_cast<uint8_t>(0xff << (8 - rem));
  return (addr[full] & mask) == (c.addr[full] & mask);
}

}  // namespace

bool host_matches(std::string_view pattern, std::string_view host) noexcept {
  if (pattern == "*") return true;
  if (pattern.size() > 2 && pattern[0] == '*' && pattern[1] == '.') {
    std::string_view suffix = pattern.substr(1);  // ".example.com"
    return host.size() > suffix.size() && iequals(host.substr(host.size() - suffix.size()), suffix);
  }
  return iequals(pattern, host);
}

Router::Router(std::shared_ptr<const Config> cfg) : cfg_(std::move(cfg)) {}

bool Router::host_allowed(std::string_view host) const {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  // "::ffff:10.0.0.1" reaches 10.0.0.1, so a pattern written for either spelling
  // applies to both.
  std::string_view v4;
  if (istarts_with(host, "::ffff:") && is_canonical_ipv4(host.substr(7))) v4 = host.substr(7);
  const auto& acc = cfg_->access;
  auto matches = [host, v4](const std::string& p) {
    return host_matches(p, host) || (!v4.empty() && host_matches(p, v4));
  };
  if (std::any_of(acc.deny.begin(), acc.deny.end(), matches)) return false;
  return std::any_of(acc.allow.begin(), acc.allow.end(), matches);
}

bool Router::address_denied(std::span<const uint8_t> addr) const {
  static constexpr std::array<uint8_t, 12> kMappedPrefix{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  std::span<const uint8_t> v4;
  if (addr.size() == 16 && std::equal(kMappedPrefix.begin(), kMappedPrefix.end(), addr.begin())) {
    v4 = addr.subspan(12);
  }
  for (const auto& c : cfg_->access.deny_networks) {
    // A mapped address is tested both ways, so neither a v4 rule nor a v6 rule
    // covering ::ffff:0:0/96 can be sidestepped by the other spelling.
    if (prefix_match(addr, c) || (!v4.empty() && prefix_match(v4, c))) return true;
  }
  return false;
}

namespace {

// The pool key and upstream request for a parsed target. intercepted: the client's
// own TLS was terminated here, so the request goes out over TLS to exactly the port
// it named, whatever the route says.
const Route* match_route(const Config& cfg, std::string_view host, uint16_t port) {
  for (const auto& r : cfg.routes) {
    if (host_matches(r.host_pattern, host) && (!r.port || *r.port == port)) return &r;
  }
  return nullptr;
}

RouteDecision decide(const Config& cfg, Target& t, bool intercepted) {
  const std::string& host = t.authority.host;
  const Route* matched = match_route(cfg, host, t.port);
  const UpstreamSettings& s = matched ? matched->upstream : cfg.upstream;

  RouteDecision d{};
  d.settings = &s;
  Origin& o = d.origin;
  o.host = host;
  o.tls = s.tls || t.https || intercepted;
  o.port = t.port;
  if (s.tls && !t.https && !intercepted) {
    if (auto it = s.port_map.find(t.port); it != s.port_map.end()) o.port = it->second;
  }
  if (matched) o.connect_to = matched->connect_to;
  if (o.tls) {
    if (!s.sni.empty()) {
      o.sni = s.sni;
    } else if (!t.authority.ip_literal) {
      o.sni = host;
    }
  }
  o.verify = s.verify;
  o.ca_file = s.ca_file;
  o.client_cert = s.client_cert;
  o.client_key = s.client_key;
  o.protocols = s.protocols;

  const uint16_t default_port = o.tls ? 443 : 80;
  d.host_header = authority_string(host, o.port, o.port != default_port);
  d.path = std::move(t.path);
  return d;
}

}  // namespace

const UpstreamSettings& Router::settings_for(std::string_view host, uint16_t port) const {
  const Route* matched = match_route(*cfg_, host, port);
  return matched ? matched->upstream : cfg_->upstream;
}

Routed<RouteDecision> Router::route(std::string_view target, std::string_view host_header) const {
  std::optional<Target> t;
  if (!target.empty() && target.front() == '/') {
    t = parse_origin_form(target, host_header);
  } else {
    t = parse_absolute(target);
  }
  if (!t) return errc::bad_request;
  if (!host_allowed(t->authority.host)) return errc::host_denied;
  return decide(*cfg_, *t, false);
}

Routed<RouteDecision> Router::route_intercepted(std::string_view target,
                                                std::string_view host_header,
                                                const HostPort& connect) const {
  std::optional<Target> t;
  if (!target.empty() && target.front() == '/') {
    t = parse_origin_form(target, host_header);
    // Inside the client's TLS an origin-form request is https://: its default port is 443.
    if (t && !t->authority.port) t->port = 443;
    if (t) t->https = true;
  } else {
    t = parse_absolute(target);
  }
  if (!t) return errc::bad_request;
  if (!t->https || t->port != connect.port || !iequals(t->authority.host, connect.host)) {
    return errc::misdirected;
  }
  if (!host_allowed(t->authority.host)) return errc::host_denied;
  return decide(*cfg_, *t, true);
}

Routed<HostPort> Router::route_connect(std::string_view authority) const {
  if (std::any_of(authority.begin(), authority.end(), is_ctl_or_space)) return errc::bad_request;
  auto a = parse_authority(authority);
  // RFC 9110 §9.3.6: CONNECT's target always names a port.
  if (!a || !a->port) return errc::bad_request;
  const auto& acc = cfg_->access;
  if (acc.connect == ConnectMode::deny) return errc::connect_denied;
  if (std::find(acc.connect_ports.begin(), acc.connect_ports.end(), *a->port) ==
      acc.connect_ports.end()) {
    return errc::connect_denied;
  }
  if (!host_allowed(a->host)) return errc::host_denied;
  return HostPort{std::move(a->host), *a->port};
}

Routed<RouteDecision*> route_cached(LastRoute& last, const std::shared_ptr<const Router>& router,
                                    std::string_view target, std::string_view host_header,
                                    const HostPort* intercepted, LastRoute* seed) {
  const bool origin_form = !target.empty() && target.front() == '/';
  std::string_view key = host_header;
  std::string_view rest = target;
  if (!origin_form) {
    const auto scheme_end = target.find("://");
    const auto end = scheme_end == std::string_view::npos
                         ? scheme_end
                         : target.find_first_of("/?#", scheme_end + 3);
    key = target.substr(0, end);
    rest = end == std::string_view::npos ? std::string_view{} : target.substr(end);
  }
  const auto holds = [&](const LastRoute& l) {
    return l.router == router && l.intercepted == (intercepted != nullptr) &&
           l.origin_form == origin_form && l.key == key;
  };
  if (intercepted) seed = nullptr;
  if (!holds(last)) {
    if (seed && holds(*seed)) {
      const uint64_t generation = last.generation;
      last = *seed;
      last.generation = generation + 1;
      last.seed_generation = seed->generation;
    } else {
      auto routed = intercepted ? router->route_intercepted(target, host_header, *intercepted)
                                : router->route(target, host_header);
      if (auto* err = std::get_if<errc>(&routed)) return *err;
      last.router = router;
      last.intercepted = intercepted != nullptr;
      last.origin_form = origin_form;
      last.key.assign(key);
      last.decision = std::move(std::get<RouteDecision>(routed));
      ++last.generation;
      last.seed_generation = 0;
      if (seed) {
        const uint64_t generation = seed->generation;
        *seed = last;
        seed->generation = generation + 1;
        seed->seed_generation = 0;
        last.seed_generation = seed->generation;
      }
      return &last.decision;  // with route()'s own path
    }
  }
  // Everything but the path was checked when the key was first routed.
  if (!valid_path(rest)) return errc::bad_request;
  std::string& path = last.decision.path;
  path.clear();
  if (rest.empty() || rest.front() == '?') path.push_back('/');
  path.append(rest);
  return &last.decision;
}

}  // namespace upkeep
