// The validated configuration: plain structs, no YAML types. Parsing and every
// validation error live in config.cpp; nothing else in upkeep reads YAML.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace upkeep {

using Duration = std::chrono::milliseconds;

// "host:port" split. host may be an IPv6 literal in brackets ("[::1]:3128"); the
// brackets are removed here.
struct HostPort {
  std::string host;
  uint16_t port = 0;
  std::string to_string() const;  // re-adds brackets for IPv6
  bool operator==(const HostPort&) const = default;
};

// upstream.proxy: a parent proxy reached with CONNECT ("http://[user:pass@]host:port").
struct ParentProxy {
  HostPort address;
  std::string authorization;  // "Basic <base64(user:pass)>", or "" without credentials
  bool operator==(const ParentProxy&) const = default;
};

struct QueueSettings {
  uint32_t max_pending = 1024;
  Duration timeout = std::chrono::seconds(10);
  bool operator==(const QueueSettings&) const = default;
};

struct DrainSettings {
  uint64_t max_bytes = 1024 * 1024;
  Duration max_time = std::chrono::seconds(2);
  bool operator==(const DrainSettings&) const = default;
};

// Everything under `upstream:`; a route starts from a copy of these and overrides keys.
struct UpstreamSettings {
  bool tls = true;
  std::map<uint16_t, uint16_t> port_map{{80, 443}};      // applied only when tls is true
  std::vector<std::string> protocols{"h2", "http/1.1"};  // ALPN ids, offer order
  uint32_t max_connections = 4;                          // >= 1
  uint32_t max_concurrent_streams = 100;                 // >= 1
  uint64_t max_requests_per_connection = 0;              // 0 = unlimited
  Duration max_connection_age{0};                        // 0 = unlimited
  Duration idle_timeout = std::chrono::seconds(60);
  Duration connect_timeout = std::chrono::seconds(5);
  Duration response_timeout = std::chrono::seconds(30);
  // HTTP/2: an idle connection is PINGed every ping_interval (0 = never) and closed if
  // the ACK takes longer than ping_timeout. Not in SPEC.md's list; Envoy's
  // connection_keepalive {interval, timeout} is the model.
  Duration ping_interval = std::chrono::seconds(30);
  Duration ping_timeout = std::chrono::seconds(10);
  QueueSettings queue;
  DrainSettings drain;
  bool retry_idempotent = true;
  std::string ca_file;  // "" = system trust store
  bool verify = true;
  std::string sni;  // "" = origin host
  std::string client_cert;
  std::string client_key;
  std::string proxy;                  // as written; "" = direct
  std::optional<ParentProxy> parent;  // parsed from proxy
  uint32_t warm_connections = 0;      // kept open and ready (exact-host routes only)
  bool operator==(const UpstreamSettings&) const = default;
};

struct Route {
  std::string host_pattern;      // "api.example.com" or "*.example.com", lower-cased
  std::optional<uint16_t> port;  // from an optional ":port" suffix of `host`
  std::optional<HostPort> connect_to;
  UpstreamSettings upstream;  // upstream defaults with this route's overrides applied
  bool operator==(const Route&) const = default;
};

enum class ConnectMode { tunnel, deny, intercept };

struct Cidr {
  std::string text;           // as written, e.g. "169.254.0.0/16"
  std::vector<uint8_t> addr;  // 4 or 16 bytes, network order, host bits cleared
  unsigned prefix = 0;
  bool operator==(const Cidr&) const = default;
};

struct AccessSettings {
  std::vector<std::string> allow{"*"};  // host patterns, lower-cased
  std::vector<std::string> deny;
  std::vector<Cidr> deny_networks;
  ConnectMode connect = ConnectMode::tunnel;
  std::vector<uint16_t> connect_ports{443};
  std::string auth;  // path of a user:password file; "" = no auth
  bool open_proxy = false;
  bool operator==(const AccessSettings&) const = default;
};

// Under `intercept:` (SPEC.md "HTTPS interception"); used when access.connect is
// intercept.
struct InterceptSettings {
  std::vector<std::string> hosts{"*"};  // host patterns whose TLS is terminated, lower-cased
  std::vector<std::string> skip;        // always tunnelled blindly, lower-cased
  std::string ca_cert;                  // "" = upkeep's own CA in state_dir
  std::string ca_key;
  std::string state_dir;       // as written; "" = resolved at use (resolve_state_dir)
  uint32_t cert_cache = 1000;  // >= 1
  Duration fallback_ttl = std::chrono::minutes(10);  // 0 = never fall back
  bool operator==(const InterceptSettings&) const = default;
};

enum class LogFormat { text, json };
enum class LogLevel { debug, info, warn, error };

const char* level_name(LogLevel l) noexcept;  // "debug", "info", "warn", "error"

struct LogSettings {
  LogLevel level = LogLevel::info;
  LogFormat format = LogFormat::text;
  bool access_log = true;
  bool operator==(const LogSettings&) const = default;
};

struct Limits {
  uint64_t max_header_bytes = 65536;
  uint32_t max_client_connections = 10000;
  Duration client_idle_timeout = std::chrono::seconds(60);
  Duration client_header_timeout = std::chrono::seconds(10);
  bool operator==(const Limits&) const = default;
};

struct Config {
  HostPort listen{"127.0.0.1", 3128};
  std::optional<HostPort> admin = HostPort{"127.0.0.1", 9901};  // nullopt: disabled ("")
  uint32_t workers = 1;  // already resolved: 0 in the file becomes the core count
  Duration shutdown_grace = std::chrono::seconds(10);
  LogSettings log;
  Limits limits;
  UpstreamSettings upstream;
  std::vector<Route> routes;
  AccessSettings access;
  InterceptSettings intercept;
  std::string source;  // file path, or "<default>"
  bool operator==(const Config&) const = default;
};

// Thrown by the loaders; what() is one line naming the key and, when known, the
// line: "config.yaml:12: upstream.max_connections: must be at least 1".
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The embedded default configuration, as YAML text.
const std::string& default_config_yaml();

Config load_config_file(const std::string& path);
Config load_config_string(const std::string& yaml, const std::string& source_name);

// Command-line overrides, applied after loading, then validated again.
struct Overrides {
  std::optional<std::string> listen;
  std::optional<std::string> admin;  // "" disables
  std::optional<std::string> log_level;
};
void apply_overrides(Config& cfg, const Overrides& o);

// Cross-key checks (e.g. a non-loopback listen with access.allow ["*"] and no
// open_proxy). Called by the loaders and after apply_overrides.
void validate(const Config& cfg);

// The effective config as YAML (for --check-config).
std::string to_yaml(const Config& cfg);

// Parsers shared with other modules and tests. They throw ConfigError with a
// message that does not name a key; callers prefix it.
Duration parse_duration(const std::string& text);   // "500ms", "10s", "1m", "2h", "0"
uint64_t parse_size(const std::string& text);       // "1024", "64KiB", "1MiB", "1GiB"
HostPort parse_host_port(const std::string& text);  // "127.0.0.1:3128", "[::1]:80"
// "http://[user:pass@]host[:port]" (port 80 when absent; user and password may be
// percent-encoded); "" = nullopt.
std::optional<ParentProxy> parse_parent_proxy(const std::string& text);
bool is_loopback_host(const std::string& host);  // 127.0.0.0/8, ::1, "localhost"

}  // namespace upkeep
