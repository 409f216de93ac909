#include "config.hpp"

#include "text.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <functional>
#include <limits>
#include <set>
#include <thread>
#include <utility>

namespace upkeep {
namespace {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = kKiB * 1024;
constexpr uint64_t kGiB = kMiB * 1024;
constexpr uint32_t kMaxWorkers = 1024;
// RFC 9113 §5.1.1: stream ids are 31 bits and a client uses only odd ones.
constexpr uint64_t kMaxStreams = (uint64_t{1} << 30);

// Values are echoed in messages; escaping keeps every message on one line even when
// the offending value contains a newline or a control byte.
std::string quote(const std::string& s) {
  return quoted(s);
}

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  std::replace(s.begin(), s.end(), '\r', ' ');
  return s;
}

bool all_digits(std::string_view s) {
  return !s.empty() &&
         std::all_of(s.begin(), s.end(), [](unsigned char c) { return c >= '0' && c <= '9'; });
}

// Leading '+' or '-' and whitespace are not digits, so they are rejected here rather
// than silently accepted by from_chars' neighbours.
std::optional<uint64_t> parse_u64(std::string_view s) {
  if (!all_digits(s)) return std::nullopt;
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

[[noreturn]] void fail_at(const std::string& source, int line, const std::string& path,
                          const std::string& what) {
  std::string msg = source;
  if (line > 0) msg += ":" + std::to_string(line);
  if (!msg.empty()) msg += ": ";
  if (!path.empty()) msg += path + ": ";
  msg += what;
  throw ConfigError(one_line(std::move(msg)));
}

bool is_ipv4(const std::string& s) {
  in_addr a{};
  return inet_pton(AF_INET, s.c_str(), &a) == 1;
}

bool is_ipv6(const std::string& s) {
  in6_addr a{};
  return inet_pton(AF_INET6, s.c_str(), &a) == 1;
}

// A DNS name or an IPv4 literal. A name whose labels are all numeric must be a valid
// dotted quad, so "300.1.1.1" is reported here and not by the resolver at run time.
bool is_valid_hostname(const std::string& s) {
  if (s.empty() || s.size() > 253) return false;
  bool all_numeric = true;
  size_t start = 0;
  while (true) {
    size_t dot = s.find('.', start);
    std::string_view label(s.data() + start, (dot == std::string::npos ? s.size() : dot) - start);
    if (label.empty() || label.size() > 63) return false;
    if (label.front() == '-' || label.back() == '-') return false;
    for (unsigned char c : label) {
      if (!std::isalnum(c) && c != '-' && c != '_') return false;
    }
    if (!all_digits(label)) all_numeric = false;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return !all_numeric || is_ipv4(s);
}

std::optional<uint16_t> parse_port(std::string_view s, uint16_t min) {
  auto v = parse_u64(s);
  if (!v || *v < min || *v > 65535) return std::nullopt;
  return static_cast<uint16_t>(*v);
}

// "host", "*.domain", "*", an IPv4 literal, an IPv6 literal (bracketed or not) and,
// when allowed, a ":port" suffix. Returns the lower-cased pattern without brackets.
std::pair<std::string, std::optional<uint16_t>> parse_host_pattern(const std::string& text,
                                                                   bool allow_port) {
  auto bad = [&](const std::string& why) -> void {
    throw ConfigError("invalid host pattern " + quote(text) + ": " + why);
  };
  std::string host = text;
  std::optional<uint16_t> port;
  if (text.empty()) bad("empty");
  if (is_ipv6(text)) return {to_ascii_lower(text), std::nullopt};
  std::string port_text;
  bool has_port = false;
  if (text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string::npos) bad("missing ']'");
    host = text.substr(1, close - 1);
    if (!is_ipv6(host)) bad("brackets must hold an IPv6 address");
    if (close + 1 < text.size()) {
      if (text[close + 1] != ':') bad("unexpected text after ']'");
      has_port = true;
      port_text = text.substr(close + 2);
    }
  } else if (auto colon = text.rfind(':'); colon != std::string::npos) {
    host = text.substr(0, colon);
    has_port = true;
    port_text = text.substr(colon + 1);
    if (host.find(':') != std::string::npos) bad("an IPv6 address with a port needs brackets");
  }
  if (has_port) {
    if (!allow_port) bad("a port is not allowed here");
    port = parse_port(port_text, 1);
    if (!port) bad("port must be 1-65535");
  }
  if (host == "*") return {host, port};
  std::string rest = host.starts_with("*.") ? host.substr(2) : host;
  if (rest.find('*') != std::string::npos) bad("'*' is only allowed as a leading \"*.\"");
  if (!is_ipv6(rest) && !is_valid_hostname(rest)) bad("not a valid host name");
  return {to_ascii_lower(host), port};
}

Cidr parse_cidr(const std::string& text) {
  auto bad = [&](const std::string& why) -> void {
    throw ConfigError("invalid CIDR " + quote(text) + ": " + why +
                      " (expected e.g. 169.254.0.0/16 or fe80::/10)");
  };
  Cidr c;
  c.text = text;
  auto slash = text.find('/');
  std::string addr = text.substr(0, slash);
  if (in_addr a4{}; inet_pton(AF_INET, addr.c_str(), &a4) == 1) {
    c.addr.resize(4);
    std::memcpy(c.addr.data(), &a4, 4);
  } else if (in6_addr a6{}; inet_pton(AF_INET6, addr.c_str(), &a6) == 1) {
    c.addr.resize(16);
    std::memcpy(c.addr.data(), &a6, 16);
  } else {
    bad("not an IP address");
  }
  const unsigned bits = static_cast<unsigned>(c.addr.size() * 8);
  c.prefix = bits;
  if (slash != std::string::npos) {
    auto p = parse_u64(std::string_view(text).substr(slash + 1));
    if (!p || *p > bits) bad("prefix length must be 0-" + std::to_string(bits));
    c.prefix = static_cast<unsigned>(*p);
  }
  for (unsigned i = 0; i < c.addr.size(); ++i) {
    const unsigned first_bit = i * 8;
    if (first_bit >= c.prefix) {
      c.addr[i] = 0;
    } else if (c.prefix - first_bit < 8) {
      c.addr[i] &= static_cast<uint8_t>(0xff00u >> (c.prefix - first_bit));
    }
  }
  return c;
}

}  // namespace

const char* level_name(LogLevel l) noexcept {
  switch (l) {
    case LogLevel::debug:
      return "debug";
    case LogLevel::info:
      return "info";
    case LogLevel::warn:
      return "warn";
    case LogLevel::error:
      return "error";
  }
  return "info";
}

namespace {

const char* format_name(LogFormat f) {
  return f == LogFormat::json ? "json" : "text";
}

const char* connect_name(ConnectMode m) {
  switch (m) {
    case ConnectMode::tunnel:
      return "tunnel";
    case ConnectMode::deny:
      return "deny";
    case ConnectMode::intercept:
      return "intercept";
  }
  return "tunnel";
}

LogLevel parse_log_level(const std::string& s) {
  for (auto l : {LogLevel::debug, LogLevel::info, LogLevel::warn, LogLevel::error}) {
    if (s == level_name(l)) return l;
  }
  throw ConfigError("invalid value " + quote(s) + " (use debug, info, warn or error)");
}

// ---- YAML walking -------------------------------------------------------------------

// Key path -> line, filled while parsing, so validate() can point at the line of a
// cross-key problem.
struct ParseContext {
  std::string source;
  std::map<std::string, int> lines;
};

int line_of(const YAML::Node& n, int fallback) {
  const auto m = n.Mark();
  return m.line >= 0 ? m.line + 1 : fallback;
}

// One value in the document with the dotted path and line used to report it.
struct Item {
  ParseContext* ctx;
  std::string path;
  YAML::Node node;
  int line;

  [[noreturn]] void fail(const std::string& what) const { fail_at(ctx->source, line, path, what); }
  // Runs a parser that does not know the key and prefixes its message.
  template <class F>
  auto guarded(F&& f) const -> decltype(f()) {
    try {
      return f();
    } catch (const ConfigError& e) {
      fail(e.what());
    }
  }
};

std::string join(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

const std::string& scalar(const Item& it, const char* expected) {
  if (it.node.IsNull()) it.fail(std::string("missing value (expected ") + expected + ")");
  if (!it.node.IsScalar()) it.fail(std::string("expected ") + expected);
  return it.node.Scalar();
}

std::string get_string(const Item& it) {
  return scalar(it, "a string");
}

// YAML 1.1's yes/no/on/off are deliberately refused: "no" for a country code or "off"
// for a mode has bitten enough people.
bool get_bool(const Item& it) {
  const auto& s = scalar(it, "true or false");
  if (s == "true") return true;
  if (s == "false") return false;
  it.fail("expected true or false, got " + quote(s));
}

uint64_t get_uint(const Item& it, uint64_t min, uint64_t max) {
  const auto& s = scalar(it, "a whole number");
  auto v = parse_u64(s);
  if (!v) {
    if (all_digits(s)) it.fail(quote(s) + " is too large (at most " + std::to_string(max) + ")");
    it.fail("expected a whole number, got " + quote(s));
  }
  if (*v < min) it.fail("must be at least " + std::to_string(min) + ", got " + s);
  if (*v > max) it.fail("must be at most " + std::to_string(max) + ", got " + s);
  return *v;
}

uint64_t get_size(const Item& it, uint64_t min) {
  const auto& s = scalar(it, "a size");
  uint64_t v = it.guarded([&] { return parse_size(s); });
  if (v < min) it.fail("must be at least " + std::to_string(min) + " bytes, got " + quote(s));
  return v;
}

Duration get_duration(const Item& it, bool allow_zero) {
  const auto& s = scalar(it, "a duration");
  Duration d = it.guarded([&] { return parse_duration(s); });
  if (!allow_zero && d.count() == 0) it.fail("must be greater than 0");
  return d;
}

template <class Fn>
void for_each_element(const Item& it, Fn&& fn) {
  if (it.node.IsNull()) it.fail("missing value (expected a list; use [] for none)");
  if (!it.node.IsSequence()) it.fail("expected a list");
  size_t i = 0;
  for (const auto& el : it.node) {
    Item child{it.ctx, it.path + "[" + std::to_string(i) + "]", el, line_of(el, it.line)};
    it.ctx->lines[child.path] = child.line;
    fn(child);
    ++i;
  }
}

// fn(key, item) returns false for a key it does not know: unknown keys are errors.
template <class Fn>
void for_each_key(const Item& it, Fn&& fn) {
  if (it.node.IsNull()) it.fail("missing value (expected a mapping)");
  if (!it.node.IsMap()) it.fail("expected a mapping (key: value)");
  std::set<std::string> seen;
  for (const auto& kv : it.node) {
    const int kline = line_of(kv.first, it.line);
    if (!kv.first.IsScalar()) fail_at(it.ctx->source, kline, it.path, "keys must be plain names");
    const std::string key = kv.first.Scalar();
    Item child{it.ctx, join(it.path, key), kv.second, kline};
    if (!seen.insert(key).second) child.fail("duplicate key");
    it.ctx->lines[child.path] = kline;
    if (!fn(key, child)) child.fail("unknown key");
  }
}

uint16_t get_port(const Item& it) {
  return static_cast<uint16_t>(get_uint(it, 1, 65535));
}

std::vector<uint16_t> get_port_list(const Item& it) {
  std::vector<uint16_t> out;
  for_each_element(it, [&](const Item& el) { out.push_back(get_port(el)); });
  return out;
}

HostPort get_host_port(const Item& it, uint16_t min_port) {
  const auto& s = scalar(it, "host:port");
  HostPort hp = it.guarded([&] { return parse_host_port(s); });
  if (hp.port < min_port) it.fail("port must be 1-65535 in " + quote(s));
  return hp;
}

std::vector<std::string> get_pattern_list(const Item& it) {
  std::vector<std::string> out;
  for_each_element(it, [&](const Item& el) {
    const auto& s = scalar(el, "a host pattern");
    out.push_back(el.guarded([&] { return parse_host_pattern(s, false).first; }));
  });
  return out;
}

std::map<uint16_t, uint16_t> get_port_map(const Item& it) {
  std::map<uint16_t, uint16_t> out;
  for_each_key(it, [&](const std::string& key, const Item& value) {
    auto from = parse_port(key, 1);
    if (!from) value.fail("port_map keys must be ports 1-65535");
    out[*from] = get_port(value);
    return true;
  });
  return out;
}

std::vector<std::string> get_protocols(const Item& it) {
  std::vector<std::string> out;
  for_each_element(it, [&](const Item& el) {
    const auto& s = scalar(el, "h2 or http/1.1");
    if (s != "h2" && s != "http/1.1")
      el.fail("unknown protocol " + quote(s) + " (use h2 or http/1.1)");
    if (std::find(out.begin(), out.end(), s) != out.end()) el.fail("listed twice");
    out.push_back(s);
  });
  if (out.empty()) it.fail("must list at least one of h2, http/1.1");
  return out;
}

// The single definition of every `upstream:` key, used for the top-level section and
// for each route's overrides, so the two can never drift apart.
bool apply_upstream_key(UpstreamSettings& u, const std::string& key, const Item& it) {
  if (key == "tls") {
    u.tls = get_bool(it);
  } else if (key == "port_map") {
    u.port_map = get_port_map(it);
  } else if (key == "protocols") {
    u.protocols = get_protocols(it);
  } else if (key == "max_connections") {
    u.max_connections = static_cast<uint32_t>(get_uint(it, 1, 1000000));
  } else if (key == "max_concurrent_streams") {
    u.max_concurrent_streams = static_cast<uint32_t>(get_uint(it, 1, kMaxStreams));
  } else if (key == "max_requests_per_connection") {
    u.max_requests_per_connection = get_uint(it, 0, std::numeric_limits<uint64_t>::max());
  } else if (key == "max_connection_age") {
    u.max_connection_age = get_duration(it, true);
  } else if (key == "idle_timeout") {
    u.idle_timeout = get_duration(it, false);
  } else if (key == "connect_timeout") {
    u.connect_timeout = get_duration(it, false);
  } else if (key == "response_timeout") {
    u.response_timeout = get_duration(it, false);
  } else if (key == "ping_interval") {
    u.ping_interval = get_duration(it, true);
  } else if (key == "ping_timeout") {
    u.ping_timeout = get_duration(it, false);
  } else if (key == "queue") {
    for_each_key(it, [&](const std::string& k, const Item& c) {
      if (k == "max_pending") {
        u.queue.max_pending =
            static_cast<uint32_t>(get_uint(c, 0, std::numeric_limits<uint32_t>::max()));
      } else if (k == "timeout") {
        u.queue.timeout = get_duration(c, false);
      } else {
        return false;
      }
      return true;
    });
  } else if (key == "drain") {
    for_each_key(it, [&](const std::string& k, const Item& c) {
      if (k == "max_bytes") {
        u.drain.max_bytes = get_size(c, 0);
      } else if (k == "max_time") {
        u.drain.max_time = get_duration(c, true);
      } else {
        return false;
      }
      return true;
    });
  } else if (key == "retry_idempotent") {
    u.retry_idempotent = get_bool(it);
  } else if (key == "ca_file") {
    u.ca_file = get_string(it);
  } else if (key == "verify") {
    u.verify = get_bool(it);
  } else if (key == "sni") {
    u.sni = get_string(it);
  } else if (key == "client_cert") {
    u.client_cert = get_string(it);
  } else if (key == "client_key") {
    u.client_key = get_string(it);
  } else if (key == "proxy") {
    u.proxy = get_string(it);
    u.parent = it.guarded([&] { return parse_parent_proxy(u.proxy); });
  } else if (key == "warm_connections") {
    u.warm_connections = static_cast<uint32_t>(get_uint(it, 0, 1000000));
  } else {
    return false;
  }
  return true;
}

Route parse_route(const Item& it, const UpstreamSettings& defaults) {
  Route r;
  r.upstream = defaults;
  bool have_host = false;
  for_each_key(it, [&](const std::string& key, const Item& c) {
    if (key == "host") {
      const auto& s = scalar(c, "a host pattern");
      std::tie(r.host_pattern, r.port) = c.guarded([&] { return parse_host_pattern(s, true); });
      have_host = true;
      return true;
    }
    if (key == "connect_to") {
      r.connect_to = get_host_port(c, 1);
      return true;
    }
    return apply_upstream_key(r.upstream, key, c);
  });
  if (!have_host)
    fail_at(it.ctx->source, it.line, join(it.path, "host"), "required key is missing");
  return r;
}

void parse_log(LogSettings& log, const Item& it) {
  for_each_key(it, [&](const std::string& k, const Item& c) {
    if (k == "level") {
      const auto& s = scalar(c, "debug, info, warn or error");
      log.level = c.guarded([&] { return parse_log_level(s); });
    } else if (k == "format") {
      const auto& s = scalar(c, "text or json");
      if (s == "text") {
        log.format = LogFormat::text;
      } else if (s == "json") {
        log.format = LogFormat::json;
      } else {
        c.fail("invalid value " + quote(s) + " (use text or json)");
      }
    } else if (k == "access_log") {
      log.access_log = get_bool(c);
    } else {
      return false;
    }
    return true;
  });
}

void parse_limits(Limits& l, const Item& it) {
  for_each_key(it, [&](const std::string& k, const Item& c) {
    if (k == "max_header_bytes") {
      l.max_header_bytes = get_size(c, 1);
    } else if (k == "max_client_connections") {
      l.max_client_connections =
          static_cast<uint32_t>(get_uint(c, 1, std::numeric_limits<uint32_t>::max()));
    } else if (k == "client_idle_timeout") {
      l.client_idle_timeout = get_duration(c, false);
    } else if (k == "client_header_timeout") {
      l.client_header_timeout = get_duration(c, false);
    } else {
      return false;
    }
    return true;
  });
}

void parse_access(AccessSettings& a, const Item& it) {
  for_each_key(it, [&](const std::string& k, const Item& c) {
    if (k == "allow") {
      a.allow = get_pattern_list(c);
    } else if (k == "deny") {
      a.deny = get_pattern_list(c);
    } else if (k == "deny_networks") {
      a.deny_networks.clear();
      for_each_element(c, [&](const Item& el) {
        const auto& s = scalar(el, "a CIDR");
        a.deny_networks.push_back(el.guarded([&] { return parse_cidr(s); }));
      });
    } else if (k == "connect") {
      const auto& s = scalar(c, "tunnel, deny or intercept");
      if (s == "tunnel") {
        a.connect = ConnectMode::tunnel;
      } else if (s == "deny") {
        a.connect = ConnectMode::deny;
      } else if (s == "intercept") {
        a.connect = ConnectMode::intercept;
      } else {
        c.fail("invalid value " + quote(s) + " (use tunnel, deny or intercept)");
      }
    } else if (k == "connect_ports") {
      a.connect_ports = get_port_list(c);
    } else if (k == "auth") {
      a.auth = get_string(c);
    } else if (k == "open_proxy") {
      a.open_proxy = get_bool(c);
    } else {
      return false;
    }
    return true;
  });
}

void parse_intercept(InterceptSettings& in, const Item& it) {
  for_each_key(it, [&](const std::string& k, const Item& c) {
    if (k == "hosts") {
      in.hosts = get_pattern_list(c);
    } else if (k == "skip") {
      in.skip = get_pattern_list(c);
    } else if (k == "ca_cert") {
      in.ca_cert = get_string(c);
    } else if (k == "ca_key") {
      in.ca_key = get_string(c);
    } else if (k == "state_dir") {
      in.state_dir = get_string(c);
    } else if (k == "cert_cache") {
      in.cert_cache = static_cast<uint32_t>(get_uint(c, 1, 1000000));
    } else if (k == "fallback_ttl") {
      in.fallback_ttl = get_duration(c, true);
    } else {
      return false;
    }
    return true;
  });
}

uint32_t resolve_workers(uint64_t n) {
  if (n != 0) return static_cast<uint32_t>(n);
  const unsigned cores = std::thread::hardware_concurrency();
  return cores == 0 ? 1 : std::min<uint32_t>(cores, kMaxWorkers);
}

void validate_impl(const Config& cfg, const ParseContext* ctx);

Config parse_document(const YAML::Node& root, ParseContext& ctx) {
  Config cfg;
  cfg.source = ctx.source;
  // An empty file (or one holding only comments) means "all defaults".
  if (root.IsNull()) {
    validate_impl(cfg, &ctx);
    return cfg;
  }
  Item top{&ctx, "", root, line_of(root, 1)};
  if (!root.IsMap()) top.fail("the top level must be a mapping of keys (listen:, upstream:, ...)");

  // Collected first so `upstream` is parsed before `routes` whatever their order.
  static const std::vector<std::string> kOrder = {
      "listen", "admin",    "workers", "shutdown_grace", "log",
      "limits", "upstream", "routes",  "access",         "intercept"};
  std::map<std::string, Item> items;
  for_each_key(top, [&](const std::string& key, const Item& c) {
    if (std::find(kOrder.begin(), kOrder.end(), key) == kOrder.end()) return false;
    items.emplace(key, c);
    return true;
  });
  for (const auto& key : kOrder) {
    auto found = items.find(key);
    if (found == items.end()) continue;
    const Item& c = found->second;
    if (key == "listen") {
      cfg.listen = get_host_port(c, 0);
    } else if (key == "admin") {
      const auto& s = scalar(c, "host:port, or \"\" to disable");
      cfg.admin = s.empty() ? std::nullopt : std::optional(get_host_port(c, 0));
    } else if (key == "workers") {
      cfg.workers = resolve_workers(get_uint(c, 0, kMaxWorkers));
    } else if (key == "shutdown_grace") {
      cfg.shutdown_grace = get_duration(c, true);
    } else if (key == "log") {
      parse_log(cfg.log, c);
    } else if (key == "limits") {
      parse_limits(cfg.limits, c);
    } else if (key == "upstream") {
      for_each_key(c, [&](const std::string& k, const Item& v) {
        return apply_upstream_key(cfg.upstream, k, v);
      });
    } else if (key == "routes") {
      for_each_element(
          c, [&](const Item& el) { cfg.routes.push_back(parse_route(el, cfg.upstream)); });
    } else if (key == "access") {
      parse_access(cfg.access, c);
    } else if (key == "intercept") {
      parse_intercept(cfg.intercept, c);
    }
  }
  validate_impl(cfg, &ctx);
  return cfg;
}

// The file holds passwords: readable by every local user it leaks them, which is why
// this is refused rather than warned about.
std::optional<std::string> auth_file_problem(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return "cannot use " + quote(path) + ": " + std::strerror(errno);
  if (!S_ISREG(st.st_mode)) return quote(path) + " is not a regular file";
  if (st.st_mode & S_IROTH) {
    return quote(path) +
           " is readable by every user; it holds passwords, so chmod o-r it (e.g. 0600 or 0640)";
  }
  return std::nullopt;
}

void validate_impl(const Config& cfg, const ParseContext* ctx) {
  // The first path with a recorded line wins: a problem may be caused by a key the file
  // does not set (a default), and then the line of the key that triggered it is best.
  auto fail = [&](const std::string& path, const std::string& what,
                  std::initializer_list<std::string> line_keys) {
    int line = 0;
    if (ctx) {
      for (const auto& k : line_keys) {
        if (auto f = ctx->lines.find(k); f != ctx->lines.end()) {
          line = f->second;
          break;
        }
      }
    }
    fail_at(cfg.source, line, path, what);
  };

  const auto& allow = cfg.access.allow;
  if (!is_loopback_host(cfg.listen.host) && !cfg.access.open_proxy &&
      std::find(allow.begin(), allow.end(), "*") != allow.end()) {
    fail("access.allow",
         "contains \"*\" while listen " + cfg.listen.to_string() +
             " is not a loopback address: anyone who can reach it could use upkeep as an open "
             "proxy; list the hosts that may be reached in access.allow, or set "
             "access.open_proxy: true if that is really intended",
         {"access.allow", "listen"});
  }

  if (cfg.admin && cfg.admin->port != 0 && *cfg.admin == cfg.listen) {
    fail("admin", "same address as listen (" + cfg.listen.to_string() + ")", {"admin", "listen"});
  }

  auto check_tls_pair = [&](const UpstreamSettings& u, const std::string& prefix) {
    if (!u.client_cert.empty() && u.client_key.empty()) {
      fail(prefix + ".client_cert", "is set but " + prefix + ".client_key is not; both are needed",
           {prefix + ".client_cert", prefix + ".client_key", prefix});
    }
    if (u.client_cert.empty() && !u.client_key.empty()) {
      fail(prefix + ".client_key", "is set but " + prefix + ".client_cert is not; both are needed",
           {prefix + ".client_key", prefix + ".client_cert", prefix});
    }
  };
  // More warm connections than the bound allows could never all be open.
  auto check_warm = [&](const UpstreamSettings& u, const std::string& prefix) {
    if (u.warm_connections > u.max_connections) {
      fail(prefix + ".warm_connections",
           std::to_string(u.warm_connections) + " is more than " + prefix + ".max_connections (" +
               std::to_string(u.max_connections) + ")",
           {prefix + ".warm_connections", prefix + ".max_connections", "upstream.warm_connections",
            prefix});
    }
  };
  check_tls_pair(cfg.upstream, "upstream");
  check_warm(cfg.upstream, "upstream");
  for (size_t i = 0; i < cfg.routes.size(); ++i) {
    const std::string prefix = "routes[" + std::to_string(i) + "]";
    check_tls_pair(cfg.routes[i].upstream, prefix);
    check_warm(cfg.routes[i].upstream, prefix);
    for (size_t j = 0; j < i; ++j) {
      if (cfg.routes[j].host_pattern == cfg.routes[i].host_pattern &&
          cfg.routes[j].port == cfg.routes[i].port) {
        fail(prefix + ".host",
             "same host as routes[" + std::to_string(j) + "], which always matches first",
             {prefix + ".host"});
      }
    }
  }

  const auto& ic = cfg.intercept;
  if (ic.ca_cert.empty() != ic.ca_key.empty()) {
    const std::string set = ic.ca_cert.empty() ? "intercept.ca_key" : "intercept.ca_cert";
    const std::string unset = ic.ca_cert.empty() ? "intercept.ca_cert" : "intercept.ca_key";
    fail(set, "is set but " + unset + " is not; give both, or neither for upkeep's own CA",
         {set, unset});
  }
  if (ic.hosts.empty() && cfg.access.connect == ConnectMode::intercept) {
    fail("intercept.hosts",
         "is empty while access.connect is intercept: nothing would be intercepted",
         {"intercept.hosts", "access.connect"});
  }

  if (!cfg.access.auth.empty()) {
    if (auto problem = auth_file_problem(cfg.access.auth))
      fail("access.auth", *problem, {"access.auth"});
  }
}

// ---- YAML output --------------------------------------------------------------------

std::string format_duration(Duration d) {
  const auto ms = d.count();
  if (ms == 0) return "0s";
  if (ms % 3600000 == 0) return std::to_string(ms / 3600000) + "h";
  if (ms % 60000 == 0) return std::to_string(ms / 60000) + "m";
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

std::string format_size(uint64_t n) {
  if (n == 0) return "0";
  if (n % kGiB == 0) return std::to_string(n / kGiB) + "GiB";
  if (n % kMiB == 0) return std::to_string(n / kMiB) + "MiB";
  if (n % kKiB == 0) return std::to_string(n / kKiB) + "KiB";
  return std::to_string(n);
}

std::string flow_strings(const std::vector<std::string>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i)
    out += (i ? ", " : "") + quote(v[i]);
  return out + "]";
}

template <class T>
std::string flow_numbers(const std::vector<T>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i)
    out += (i ? ", " : "") + std::to_string(v[i]);
  return out + "]";
}

// With `base`, only keys that differ from it are written: a route lists its overrides.
void emit_upstream(std::string& out, const UpstreamSettings& u, const UpstreamSettings* base,
                   const std::string& ind) {
  auto line = [&](bool differs, const std::string& key, const std::string& value) {
    if (!base || differs) out += ind + key + ": " + value + "\n";
  };
  auto b = [](bool v) { return std::string(v ? "true" : "false"); };
  line(base && base->tls != u.tls, "tls", b(u.tls));
  {
    std::string pm = "{";
    for (auto it = u.port_map.begin(); it != u.port_map.end(); ++it) {
      pm += (it == u.port_map.begin() ? "" : ", ") + std::to_string(it->first) + ": " +
            std::to_string(it->second);
    }
    line(base && base->port_map != u.port_map, "port_map", pm + "}");
  }
  line(base && base->protocols != u.protocols, "protocols", flow_strings(u.protocols));
  line(base && base->max_connections != u.max_connections, "max_connections",
       std::to_string(u.max_connections));
  line(base && base->max_concurrent_streams != u.max_concurrent_streams, "max_concurrent_streams",
       std::to_string(u.max_concurrent_streams));
  line(base && base->max_requests_per_connection != u.max_requests_per_connection,
       "max_requests_per_connection", std::to_string(u.max_requests_per_connection));
  line(base && base->max_connection_age != u.max_connection_age, "max_connection_age",
       format_duration(u.max_connection_age));
  line(base && base->idle_timeout != u.idle_timeout, "idle_timeout",
       format_duration(u.idle_timeout));
  line(base && base->connect_timeout != u.connect_timeout, "connect_timeout",
       format_duration(u.connect_timeout));
  line(base && base->response_timeout != u.response_timeout, "response_timeout",
       format_duration(u.response_timeout));
  line(base && base->ping_interval != u.ping_interval, "ping_interval",
       format_duration(u.ping_interval));
  line(base && base->ping_timeout != u.ping_timeout, "ping_timeout",
       format_duration(u.ping_timeout));
  if (!base || base->queue != u.queue) {
    out += ind + "queue:\n";
    const std::string in2 = ind + "  ";
    if (!base || base->queue.max_pending != u.queue.max_pending)
      out += in2 + "max_pending: " + std::to_string(u.queue.max_pending) + "\n";
    if (!base || base->queue.timeout != u.queue.timeout)
      out += in2 + "timeout: " + format_duration(u.queue.timeout) + "\n";
  }
  if (!base || base->drain != u.drain) {
    out += ind + "drain:\n";
    const std::string in2 = ind + "  ";
    if (!base || base->drain.max_bytes != u.drain.max_bytes)
      out += in2 + "max_bytes: " + format_size(u.drain.max_bytes) + "\n";
    if (!base || base->drain.max_time != u.drain.max_time)
      out += in2 + "max_time: " + format_duration(u.drain.max_time) + "\n";
  }
  line(base && base->retry_idempotent != u.retry_idempotent, "retry_idempotent",
       b(u.retry_idempotent));
  line(base && base->ca_file != u.ca_file, "ca_file", quote(u.ca_file));
  line(base && base->verify != u.verify, "verify", b(u.verify));
  line(base && base->sni != u.sni, "sni", quote(u.sni));
  line(base && base->client_cert != u.client_cert, "client_cert", quote(u.client_cert));
  line(base && base->client_key != u.client_key, "client_key", quote(u.client_key));
  line(base && base->proxy != u.proxy, "proxy", quote(u.proxy));
  line(base && base->warm_connections != u.warm_connections, "warm_connections",
       std::to_string(u.warm_connections));
}

}  // namespace

std::string HostPort::to_string() const {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

Duration parse_duration(const std::string& text) {
  const std::string hint = " (use ms, s, m or h)";
  if (!text.empty() && text.front() == '-') {
    throw ConfigError("invalid duration " + quote(text) + ": must not be negative");
  }
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9')
    ++digits;
  const std::string_view unit = std::string_view(text).substr(digits);
  auto value = parse_u64(std::string_view(text).substr(0, digits));
  if (!value) {
    if (digits > 0) throw ConfigError("invalid duration " + quote(text) + ": too large");
    throw ConfigError("invalid duration " + quote(text) + hint);
  }
  int64_t factor = 0;
  if (unit == "ms") {
    factor = 1;
  } else if (unit == "s") {
    factor = 1000;
  } else if (unit == "m") {
    factor = 60 * 1000;
  } else if (unit == "h") {
    factor = 3600 * 1000;
  } else if (unit.empty()) {
    if (*value == 0) return Duration{0};
    throw ConfigError("invalid duration " + quote(text) + ": missing unit" + hint);
  } else {
    throw ConfigError("invalid duration " + quote(text) + hint);
  }
  if (*value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max() / factor)) {
    throw ConfigError("invalid duration " + quote(text) + ": too large");
  }
  return Duration{static_cast<int64_t>(*value) * factor};
}

uint64_t parse_size(const std::string& text) {
  const std::string hint = " (use a byte count, or KiB, MiB or GiB)";
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9')
    ++digits;
  const std::string_view unit = std::string_view(text).substr(digits);
  auto value = parse_u64(std::string_view(text).substr(0, digits));
  if (!value) {
    if (digits > 0) throw ConfigError("invalid size " + quote(text) + ": too large");
    throw ConfigError("invalid size " + quote(text) + hint);
  }
  uint64_t factor = 0;
  if (unit.empty()) {
    factor = 1;
  } else if (unit == "KiB") {
    factor = kKiB;
  } else if (unit == "MiB") {
    factor = kMiB;
  } else if (unit == "GiB") {
    factor = kGiB;
  } else {
    throw ConfigError("invalid size " + quote(text) + hint);
  }
  if (*value > std::numeric_limits<uint64_t>::max() / factor) {
    throw ConfigError("invalid size " + quote(text) + ": too large");
  }
  return *value * factor;
}

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// RFC 3986 percent-decoding of a userinfo part; nullopt for a broken escape.
std::optional<std::string> percent_decode(std::string_view in) {
  std::string out;
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    if (i + 2 >= in.size()) return std::nullopt;
    const int hi = hex_value(in[i + 1]), lo = hex_value(in[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

std::string base64(std::string_view in) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const unsigned v = (static_cast<unsigned char>(in[i]) << 16) |
                       (static_cast<unsigned char>(in[i + 1]) << 8) |
                       static_cast<unsigned char>(in[i + 2]);
    for (int shift : {18, 12, 6, 0})
      out += kAlphabet[(v >> shift) & 63];
  }
  if (i + 1 == in.size()) {
    const unsigned v = static_cast<unsigned char>(in[i]) << 16;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    const unsigned v =
        (static_cast<unsigned char>(in[i]) << 16) | (static_cast<unsigned char>(in[i + 1]) << 8);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

}  // namespace

std::optional<ParentProxy> parse_parent_proxy(const std::string& text) {
  if (text.empty()) return std::nullopt;
  auto bad = [&](const std::string& why) -> void {
    throw ConfigError("invalid parent proxy " + quote(text) + ": " + why +
                      " (expected http://[user:password@]host:port)");
  };
  constexpr std::string_view kScheme = "http://";
  std::string_view rest = text;
  if (rest.size() < kScheme.size() ||
      !std::equal(kScheme.begin(), kScheme.end(), rest.begin(), [](char a, char b) {
        return a == std::tolower(static_cast<unsigned char>(b));
      })) {
    bad(rest.find("://") != std::string_view::npos ? "only http:// parent proxies are supported"
                                                   : "missing http://");
  }
  rest.remove_prefix(kScheme.size());
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.find('/') != std::string_view::npos || rest.find('?') != std::string_view::npos)
    bad("a parent proxy URL has no path");
  ParentProxy p;
  if (auto at = rest.rfind('@'); at != std::string_view::npos) {
    const std::string_view userinfo = rest.substr(0, at);
    rest.remove_prefix(at + 1);
    auto decoded = percent_decode(userinfo.substr(0, userinfo.find(':')));
    std::optional<std::string> password = std::string();
    if (auto colon = userinfo.find(':'); colon != std::string_view::npos)
      password = percent_decode(userinfo.substr(colon + 1));
    if (!decoded || !password) bad("broken %-escape in the credentials");
    if (decoded->empty()) bad("empty user name before '@'");
    if (decoded->find(':') != std::string::npos) bad("a user name cannot hold ':'");
    for (char c : *decoded + *password) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
        bad("control character in the credentials");
    }
    p.authorization = "Basic " + base64(*decoded + ":" + *password);
  }
  if (rest.empty()) bad("missing host");
  const size_t host_end = rest.front() == '[' ? rest.find(']') : 0;
  const bool has_port =
      host_end != std::string_view::npos && rest.find(':', host_end) != std::string_view::npos;
  p.address = parse_host_port(has_port ? std::string(rest) : std::string(rest) + ":80");
  if (p.address.port == 0) bad("port must be 1-65535");
  return p;
}

HostPort parse_host_port(const std::string& text) {
  auto bad = [&](const std::string& why) -> void {
    throw ConfigError("invalid address " + quote(text) + ": " + why +
                      " (expected host:port, e.g. 127.0.0.1:3128 or [::1]:3128)");
  };
  HostPort hp;
  std::string port_text;
  if (text.empty()) bad("empty");
  if (text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string::npos) bad("missing ']'");
    hp.host = text.substr(1, close - 1);
    if (!is_ipv6(hp.host)) bad("brackets must hold an IPv6 address");
    if (close + 1 >= text.size() || text[close + 1] != ':') bad("missing :port");
    port_text = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string::npos) bad("missing :port");
    hp.host = text.substr(0, colon);
    if (hp.host.find(':') != std::string::npos) bad("an IPv6 address must be in brackets");
    if (hp.host.empty()) bad("missing host (use 0.0.0.0 or [::] for every interface)");
    if (!is_valid_hostname(hp.host)) bad("invalid host");
    port_text = text.substr(colon + 1);
  }
  auto port = parse_port(port_text, 0);
  if (!port) bad("port must be 0-65535");
  hp.port = *port;
  return hp;
}

bool is_loopback_host(const std::string& host_in) {
  std::string host = host_in;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  const std::string l = to_ascii_lower(host);
  if (l == "localhost" || l == "localhost.") return true;
  if (in_addr a4{}; inet_pton(AF_INET, host.c_str(), &a4) == 1) {
    return (ntohl(a4.s_addr) >> 24) == 127;
  }
  if (in6_addr a6{}; inet_pton(AF_INET6, host.c_str(), &a6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&a6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
  }
  return false;
}

const std::string& default_config_yaml() {
  static const std::string text =
      R"(# upkeep: the embedded default configuration (upkeep --print-default-config).
# Every key is shown with its default; see config/upkeep.yaml for what each means.
listen: 127.0.0.1:3128
admin: 127.0.0.1:9901
workers: 1
shutdown_grace: 10s
log:
  level: info
  format: text
  access_log: true
limits:
  max_header_bytes: 65536
  max_client_connections: 10000
  client_idle_timeout: 60s
  client_header_timeout: 10s
upstream:
  tls: true
  port_map: {80: 443}
  protocols: [h2, http/1.1]
  max_connections: 4
  max_concurrent_streams: 100
  max_requests_per_connection: 0
  max_connection_age: 0s
  idle_timeout: 60s
  connect_timeout: 5s
  response_timeout: 30s
  ping_interval: 30s
  ping_timeout: 10s
  queue:
    max_pending: 1024
    timeout: 10s
  drain:
    max_bytes: 1MiB
    max_time: 2s
  retry_idempotent: true
  ca_file: ""
  verify: true
  sni: ""
  client_cert: ""
  client_key: ""
  proxy: ""
  warm_connections: 0
routes: []
access:
  allow: ["*"]
  deny: []
  deny_networks: []
  connect: tunnel
  connect_ports: [443]
  auth: ""
  open_proxy: false
intercept:
  hosts: ["*"]
  skip: []
  ca_cert: ""
  ca_key: ""
  state_dir: ""
  cert_cache: 1000
  fallback_ttl: 10m
)";
  return text;
}

Config load_config_string(const std::string& yaml, const std::string& source_name) {
  ParseContext ctx;
  ctx.source = source_name;
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::ParserException& e) {
    fail_at(source_name, e.mark.line >= 0 ? e.mark.line + 1 : 0, "", "YAML syntax error: " + e.msg);
  } catch (const YAML::Exception& e) {
    fail_at(source_name, e.mark.line >= 0 ? e.mark.line + 1 : 0, "",
            std::string("YAML error: ") + e.msg);
  }
  return parse_document(root, ctx);
}

Config load_config_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw ConfigError(one_line(path + ": cannot read file: " + std::strerror(errno)));
  std::string text;
  char buf[8192];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      throw ConfigError(one_line(path + ": cannot read file: " + std::strerror(err)));
    }
    text.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return load_config_string(text, path);
}

// All or nothing: on error `cfg` is left as it was, so a failed SIGHUP reload keeps the
// running configuration intact.
void apply_overrides(Config& cfg, const Overrides& o) {
  auto flag = [](const char* name, auto&& f) {
    try {
      return f();
    } catch (const ConfigError& e) {
      throw ConfigError(one_line(std::string(name) + ": " + e.what()));
    }
  };
  Config next = cfg;
  if (o.listen) next.listen = flag("--listen", [&] { return parse_host_port(*o.listen); });
  if (o.admin) {
    next.admin = o.admin->empty()
                     ? std::nullopt
                     : std::optional(flag("--admin", [&] { return parse_host_port(*o.admin); }));
  }
  if (o.log_level) {
    next.log.level = flag("--log-level", [&] { return parse_log_level(*o.log_level); });
  }
  validate(next);
  cfg = std::move(next);
}

void validate(const Config& cfg) {
  validate_impl(cfg, nullptr);
}

std::string to_yaml(const Config& cfg) {
  std::string out = "# upkeep effective configuration, from " + one_line(cfg.source) + "\n";
  out += "listen: " + quote(cfg.listen.to_string()) + "\n";
  out += "admin: " + quote(cfg.admin ? cfg.admin->to_string() : "") + "\n";
  out += "workers: " + std::to_string(cfg.workers) + "\n";
  out += "shutdown_grace: " + format_duration(cfg.shutdown_grace) + "\n";
  out += "log:\n";
  out += std::string("  level: ") + level_name(cfg.log.level) + "\n";
  out += std::string("  format: ") + format_name(cfg.log.format) + "\n";
  out += std::string("  access_log: ") + (cfg.log.access_log ? "true" : "false") + "\n";
  out += "limits:\n";
  out += "  max_header_bytes: " + format_size(cfg.limits.max_header_bytes) + "\n";
  out += "  max_client_connections: " + std::to_string(cfg.limits.max_client_connections) + "\n";
  out += "  client_idle_timeout: " + format_duration(cfg.limits.client_idle_timeout) + "\n";
  out += "  client_header_timeout: " + format_duration(cfg.limits.client_header_timeout) + "\n";
  out += "upstream:\n";
  emit_upstream(out, cfg.upstream, nullptr, "  ");
  if (cfg.routes.empty()) {
    out += "routes: []\n";
  } else {
    out += "routes:\n";
    for (const auto& r : cfg.routes) {
      std::string host = r.host_pattern;
      if (r.port) {
        if (host.find(':') != std::string::npos) host = "[" + host + "]";
        host += ":" + std::to_string(*r.port);
      }
      out += "  - host: " + quote(host) + "\n";
      if (r.connect_to) out += "    connect_to: " + quote(r.connect_to->to_string()) + "\n";
      emit_upstream(out, r.upstream, &cfg.upstream, "    ");
    }
  }
  out += "access:\n";
  out += "  allow: " + flow_strings(cfg.access.allow) + "\n";
  out += "  deny: " + flow_strings(cfg.access.deny) + "\n";
  std::vector<std::string> nets;
  for (const auto& n : cfg.access.deny_networks)
    nets.push_back(n.text);
  out += "  deny_networks: " + flow_strings(nets) + "\n";
  out += std::string("  connect: ") + connect_name(cfg.access.connect) + "\n";
  out += "  connect_ports: " + flow_numbers(cfg.access.connect_ports) + "\n";
  out += "  auth: " + quote(cfg.access.auth) + "\n";
  out += std::string("  open_proxy: ") + (cfg.access.open_proxy ? "true" : "false") + "\n";
  out += "intercept:\n";
  out += "  hosts: " + flow_strings(cfg.intercept.hosts) + "\n";
  out += "  skip: " + flow_strings(cfg.intercept.skip) + "\n";
  out += "  ca_cert: " + quote(cfg.intercept.ca_cert) + "\n";
  out += "  ca_key: " + quote(cfg.intercept.ca_key) + "\n";
  out += "  state_dir: " + quote(cfg.intercept.state_dir) + "\n";
  out += "  cert_cache: " + std::to_string(cfg.intercept.cert_cache) + "\n";
  out += "  fallback_ttl: " + format_duration(cfg.intercept.fallback_ttl) + "\n";
  return out;
}

}  // namespace upkeep
