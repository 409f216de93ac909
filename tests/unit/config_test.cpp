#include "config.hpp"

#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

using namespace upkeep;
using namespace std::chrono_literals;

namespace {

Config load(const std::string& yaml) {
  return load_config_string(yaml, "t.yaml");
}

// The message of the ConfigError the YAML raises, or "" when it loads.
std::string error_of(const std::string& yaml) {
  try {
    load(yaml);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

template <class F>
std::string error_from(F&& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.starts_with(prefix);
}

// A temp file under /tmp, removed when the test ends (whatever the outcome).
struct TempFile {
  std::string path;
  explicit TempFile(const std::string& content, mode_t mode) {
    char name[] = "/tmp/upkeep_config_test_XXXXXX";
    const int fd = mkstemp(name);
    REQUIRE(fd >= 0);
    path = name;
    REQUIRE(write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size()));
    close(fd);
    REQUIRE(chmod(path.c_str(), mode) == 0);
  }
  ~TempFile() { unlink(path.c_str()); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
};

Config without_source(Config c) {
  c.source.clear();
  return c;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE("the embedded default loads into a default-constructed Config") {
  const Config c = load_config_string(default_config_yaml(), "<default>");
  CHECK(c.source == "<default>");
  CHECK(without_source(c) == Config{});
  CHECK(c.listen == HostPort{"127.0.0.1", 3128});
  REQUIRE(c.admin.has_value());
  CHECK(c.admin->to_string() == "127.0.0.1:9901");
  CHECK(c.upstream.drain.max_bytes == 1024 * 1024);
  CHECK(c.upstream.protocols == std::vector<std::string>{"h2", "http/1.1"});
}

TEST_CASE("an empty document means every default") {
  CHECK(without_source(load("")) == Config{});
  CHECK(without_source(load("# only a comment\n")) == Config{});
}

TEST_CASE("the documented example config/upkeep.yaml loads and names every key") {
  const std::string path = std::string(UPKEEP_SOURCE_DIR) + "/config/upkeep.yaml";
  const Config c = load_config_file(path);
  CHECK(c.source == path);
  CHECK(c.listen == HostPort{"127.0.0.1", 3128});
  REQUIRE(c.routes.size() == 2);
  CHECK(c.routes[0].host_pattern == "api.example.com");
  REQUIRE(c.routes[0].connect_to.has_value());
  CHECK(c.routes[0].connect_to->to_string() == "10.0.0.5:443");
  CHECK(c.routes[0].upstream.max_connections == 8);
  CHECK(c.routes[1].host_pattern == "*.plain.internal");
  CHECK_FALSE(c.routes[1].upstream.tls);
  CHECK(c.routes[1].upstream.max_connections == c.upstream.max_connections);

  // Every key the effective config prints must be documented in the example.
  const std::string text = read_text(path);
  std::istringstream keys(to_yaml(Config{}));
  std::string line;
  int checked = 0;
  while (std::getline(keys, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto colon = line.find(':');
    const auto first = line.find_first_not_of(' ');
    REQUIRE(colon != std::string::npos);
    const std::string key = line.substr(first, colon - first) + ":";
    INFO("key: " << key);
    CHECK(text.find(key) != std::string::npos);
    ++checked;
  }
  CHECK(checked > 40);
  for (const char* k : {"host:", "connect_to:"})
    CHECK(text.find(k) != std::string::npos);
}

TEST_CASE("load_config_file: missing file, source name") {
  CHECK(error_from([] { load_config_file("/nonexistent/upkeep.yaml"); }) ==
        "/nonexistent/upkeep.yaml: cannot read file: No such file or directory");
  CHECK(error_from([] { load_config_file("/tmp"); }) == "/tmp: cannot read file: Is a directory");

  TempFile f("upstream:\n  max_connections: 0\n", 0600);
  CHECK(error_from([&] { load_config_file(f.path); }) ==
        f.path + ":2: upstream.max_connections: must be at least 1, got 0");
}

TEST_CASE("validation errors name the key and the line, on one line") {
  struct Case {
    const char* yaml;
    const char* message;
  };
  const Case cases[] = {
      {"upstream:\n  max_connections: 0\n",
       "t.yaml:2: upstream.max_connections: must be at least 1, got 0"},
      {"upstream:\n  max_concurrent_streams: 0\n",
       "t.yaml:2: upstream.max_concurrent_streams: must be at least 1, got 0"},
      {"workers: 1\nupstream:\n  queue:\n    timeout: 10x\n",
       "t.yaml:4: upstream.queue.timeout: invalid duration \"10x\" (use ms, s, m or h)"},
      {"upstream:\n  idle_timeout: 10\n",
       "t.yaml:2: upstream.idle_timeout: invalid duration \"10\": missing unit (use ms, s, m or "
       "h)"},
      {"upstream:\n  connect_timeout: 0\n",
       "t.yaml:2: upstream.connect_timeout: must be greater than 0"},
      {"upstream:\n  drain: {max_bytes: 1MB}\n",
       "t.yaml:2: upstream.drain.max_bytes: invalid size \"1MB\" (use a byte count, or KiB, MiB or "
       "GiB)"},
      {"log:\n  level: loud\n",
       "t.yaml:2: log.level: invalid value \"loud\" (use debug, info, warn or error)"},
      {"log: {format: xml}\n", "t.yaml:1: log.format: invalid value \"xml\" (use text or json)"},
      {"log: info\n", "t.yaml:1: log: expected a mapping (key: value)"},
      {"log:\n  access_log: yes\n",
       "t.yaml:2: log.access_log: expected true or false, got \"yes\""},
      {"access:\n  connect: maybe\n",
       "t.yaml:2: access.connect: invalid value \"maybe\" (use tunnel, deny or intercept)"},
      {"access:\n  allow: \"*\"\n", "t.yaml:2: access.allow: expected a list"},
      {"access:\n  connect_ports: [443, 0]\n",
       "t.yaml:2: access.connect_ports[1]: must be at least 1, got 0"},
      {"access:\n  connect_ports:\n    - 443\n    - 70000\n",
       "t.yaml:4: access.connect_ports[1]: must be at most 65535, got 70000"},
      {"upstream:\n  protocols: []\n",
       "t.yaml:2: upstream.protocols: must list at least one of h2, http/1.1"},
      {"upstream:\n  protocols: [h2, h3]\n",
       "t.yaml:2: upstream.protocols[1]: unknown protocol \"h3\" (use h2 or http/1.1)"},
      {"upstream:\n  protocols: [h2, h2]\n", "t.yaml:2: upstream.protocols[1]: listed twice"},
      {"upstream:\n  port_map: {0: 443}\n",
       "t.yaml:2: upstream.port_map.0: port_map keys must be ports 1-65535"},
      {"upstream:\n  port_map:\n    80: 65536\n",
       "t.yaml:3: upstream.port_map.80: must be at most 65535, got 65536"},
      {"upstream:\n  sni:\n", "t.yaml:2: upstream.sni: missing value (expected a string)"},
      {"upstream:\n  max_connections: -1\n",
       "t.yaml:2: upstream.max_connections: expected a whole number, got \"-1\""},
      {"upstream:\n  max_connections: 99999999999999999999999\n",
       "t.yaml:2: upstream.max_connections: \"99999999999999999999999\" is too large (at most "
       "1000000)"},
      {"workers: 5000\n", "t.yaml:1: workers: must be at most 1024, got 5000"},
      {"listen: 3128\n",
       "t.yaml:1: listen: invalid address \"3128\": missing :port (expected host:port, e.g. "
       "127.0.0.1:3128 or [::1]:3128)"},
      {"admin: \"::1:9901\"\n",
       "t.yaml:1: admin: invalid address \"::1:9901\": an IPv6 address must be in brackets "
       "(expected host:port, e.g. 127.0.0.1:3128 or [::1]:3128)"},
      {"limits:\n  max_client_connections: 0\n",
       "t.yaml:2: limits.max_client_connections: must be at least 1, got 0"},
      {"limits:\n  client_header_timeout: -1s\n",
       "t.yaml:2: limits.client_header_timeout: invalid duration \"-1s\": must not be negative"},
      {"access:\n  deny_networks: [10.0.0.0/8, 10.0.0.0/33]\n",
       "t.yaml:2: access.deny_networks[1]: invalid CIDR \"10.0.0.0/33\": prefix length must be "
       "0-32 (expected e.g. 169.254.0.0/16 or fe80::/10)"},
      {"access:\n  deny: [\"a.*.com\"]\n",
       "t.yaml:2: access.deny[0]: invalid host pattern \"a.*.com\": '*' is only allowed as a "
       "leading \"*.\""},
      {"access:\n  allow: [\"api.example.com:443\"]\n",
       "t.yaml:2: access.allow[0]: invalid host pattern \"api.example.com:443\": a port is not "
       "allowed here"},
      {"upstream:\n  tls: true\n  tls: false\n", "t.yaml:3: upstream.tls: duplicate key"},
      {"routes:\n  - host: a.com\n  - connect_to: 10.0.0.1:443\n",
       "t.yaml:3: routes[1].host: required key is missing"},
      {"routes:\n  - host: a.com:0\n",
       "t.yaml:2: routes[0].host: invalid host pattern \"a.com:0\": port must be 1-65535"},
      {"routes:\n  - host: a.com\n    connect_to: 10.0.0.1:0\n",
       "t.yaml:3: routes[0].connect_to: port must be 1-65535 in \"10.0.0.1:0\""},
      {"routes:\n  - host: a.com\n  - host: b.com\n    max_connections: 0\n",
       "t.yaml:4: routes[1].max_connections: must be at least 1, got 0"},
      {"routes:\n  - host: b.com\n    queue: {timeout: 1y}\n",
       "t.yaml:3: routes[0].queue.timeout: invalid duration \"1y\" (use ms, s, m or h)"},
      {"routes:\n  - host: a.com\n  - host: A.com\n",
       "t.yaml:3: routes[1].host: same host as routes[0], which always matches first"},
      {"routes: {host: a.com}\n", "t.yaml:1: routes: expected a list"},
      {"- a\n- b\n", "t.yaml:1: the top level must be a mapping of keys (listen:, upstream:, ...)"},
      {"listen: 127.0.0.1:3128\nadmin: 127.0.0.1:3128\n",
       "t.yaml:2: admin: same address as listen (127.0.0.1:3128)"},
  };
  for (const auto& c : cases) {
    INFO("yaml:\n" << c.yaml);
    const std::string err = error_of(c.yaml);
    CHECK(err == c.message);
    CHECK(err.find('\n') == std::string::npos);
  }
}

TEST_CASE("unknown keys are errors at every level") {
  CHECK(error_of("listen: 127.0.0.1:3128\nlisten_port: 80\n") ==
        "t.yaml:2: listen_port: unknown key");
  CHECK(error_of("log:\n  level: info\n  colour: true\n") == "t.yaml:3: log.colour: unknown key");
  CHECK(error_of("upstream:\n  queue:\n    max_pending: 1\n    size: 2\n") ==
        "t.yaml:4: upstream.queue.size: unknown key");
  CHECK(error_of("upstream:\n  drain: {max_bytes: 1, maxtime: 2s}\n") ==
        "t.yaml:2: upstream.drain.maxtime: unknown key");
  CHECK(error_of("access:\n  allowed: []\n") == "t.yaml:2: access.allowed: unknown key");
  CHECK(error_of("limits: {max_headers: 1}\n") == "t.yaml:1: limits.max_headers: unknown key");
  CHECK(error_of("routes:\n  - host: a.com\n  - host: b.com\n    max_conections: 3\n") ==
        "t.yaml:4: routes[1].max_conections: unknown key");
  CHECK(error_of("routes:\n  - host: a.com\n    drain: {bytes: 3}\n") ==
        "t.yaml:3: routes[0].drain.bytes: unknown key");
  // A route may only carry upstream keys, not other top-level sections.
  CHECK(error_of("routes:\n  - host: a.com\n    access: {}\n") ==
        "t.yaml:3: routes[0].access: unknown key");
}

TEST_CASE("YAML syntax errors become one-line ConfigErrors with the line") {
  const std::string err = error_of("listen: 127.0.0.1:3128\nupstream: [1,\nfoo: bar\n");
  CHECK(starts_with(err, "t.yaml:4: YAML syntax error: "));
  CHECK(err.find('\n') == std::string::npos);
  CHECK(starts_with(error_of("a: b: c\n"), "t.yaml:1: YAML syntax error: "));
}

TEST_CASE("routes start from upstream and apply their own keys, whatever the key order") {
  const char* routes_first = R"(
routes:
  - host: "API.Example.com:8443"
    connect_to: "10.0.0.5:443"
    max_connections: 8
    queue: {max_pending: 7}
  - host: "*.plain.internal"
    tls: false
    port_map: {}
    drain:
      max_time: 0
  - host: "[::1]:8080"
upstream:
  max_connections: 2
  idle_timeout: 90s
  queue: {max_pending: 5, timeout: 3s}
  drain: {max_bytes: 4KiB, max_time: 1s}
  sni: upstream.sni
)";
  const Config c = load(routes_first);
  CHECK(c.upstream.max_connections == 2);
  REQUIRE(c.routes.size() == 3);

  const Route& api = c.routes[0];
  CHECK(api.host_pattern == "api.example.com");
  CHECK(api.port == std::optional<uint16_t>(8443));
  CHECK(api.connect_to == std::optional<HostPort>(HostPort{"10.0.0.5", 443}));
  CHECK(api.upstream.max_connections == 8);
  CHECK(api.upstream.queue.max_pending == 7);
  CHECK(api.upstream.queue.timeout == 3s);  // inherited sibling of an overridden key
  CHECK(api.upstream.idle_timeout == 90s);
  CHECK(api.upstream.sni == "upstream.sni");
  CHECK(api.upstream.drain == c.upstream.drain);

  const Route& plain = c.routes[1];
  CHECK(plain.host_pattern == "*.plain.internal");
  CHECK_FALSE(plain.port.has_value());
  CHECK_FALSE(plain.connect_to.has_value());
  CHECK_FALSE(plain.upstream.tls);
  CHECK(plain.upstream.port_map.empty());
  CHECK(plain.upstream.drain.max_time == 0ms);
  CHECK(plain.upstream.drain.max_bytes == 4096);
  CHECK(plain.upstream.max_connections == 2);

  const Route& v6 = c.routes[2];
  CHECK(v6.host_pattern == "::1");
  CHECK(v6.port == std::optional<uint16_t>(8080));
  CHECK(v6.upstream == c.upstream);

  // The top-level section itself is untouched by the routes.
  CHECK(c.upstream.tls);
  CHECK(c.upstream.queue.max_pending == 5);
  CHECK(c.upstream.port_map == std::map<uint16_t, uint16_t>{{80, 443}});
}

TEST_CASE("parse_duration") {
  CHECK(parse_duration("0") == 0ms);
  CHECK(parse_duration("0s") == 0ms);
  CHECK(parse_duration("0ms") == 0ms);
  CHECK(parse_duration("500ms") == 500ms);
  CHECK(parse_duration("10s") == 10s);
  CHECK(parse_duration("1m") == 60s);
  CHECK(parse_duration("2h") == 7200s);
  CHECK(parse_duration("007s") == 7s);
  for (const char* bad :
       {"", "s", "10", "10x", "1.5s", " 10s", "10s ", "10 s", "1d", "1S", "+1s", "-1s", "-0",
        "1h30m", "ms10", "99999999999999999999999h", "9223372036854775807h"}) {
    INFO("input: " << bad);
    CHECK_THROWS_AS(parse_duration(bad), ConfigError);
  }
  CHECK(error_from([] { parse_duration("10x"); }) ==
        "invalid duration \"10x\" (use ms, s, m or h)");
  CHECK(error_from([] { parse_duration("-5s"); }) ==
        "invalid duration \"-5s\": must not be negative");
  CHECK(error_from([] { parse_duration("5"); }) ==
        "invalid duration \"5\": missing unit (use ms, s, m or h)");
}

TEST_CASE("parse_size") {
  CHECK(parse_size("0") == 0);
  CHECK(parse_size("1024") == 1024);
  CHECK(parse_size("64KiB") == 64 * 1024);
  CHECK(parse_size("1MiB") == 1024 * 1024);
  CHECK(parse_size("1GiB") == uint64_t{1} << 30);
  CHECK(parse_size("16GiB") == uint64_t{16} << 30);
  for (const char* bad : {"", "KiB", "1KB", "1kib", "1 KiB", "1.5MiB", "-1", "1B", "1TiB",
                          "18446744073709551616", "17179869184GiB"}) {
    INFO("input: " << bad);
    CHECK_THROWS_AS(parse_size(bad), ConfigError);
  }
  CHECK(parse_size("18446744073709551615") == UINT64_MAX);
}

TEST_CASE("parse_host_port and HostPort::to_string") {
  CHECK(parse_host_port("127.0.0.1:3128") == HostPort{"127.0.0.1", 3128});
  CHECK(parse_host_port("[::1]:80") == HostPort{"::1", 80});
  CHECK(parse_host_port("[::]:0") == HostPort{"::", 0});
  CHECK(parse_host_port("proxy.internal:65535") == HostPort{"proxy.internal", 65535});
  CHECK(parse_host_port("localhost:0") == HostPort{"localhost", 0});
  CHECK(HostPort{"::1", 80}.to_string() == "[::1]:80");
  CHECK(HostPort{"10.0.0.1", 443}.to_string() == "10.0.0.1:443");
  for (const char* bad :
       {"", "1.2.3.4", ":80", "::1:80", "[::1]", "[::1]80", "[::1", "[foo]:80", "host:65536",
        "host:-1", "host:", "host:8x", "300.1.1.1:80", "a b:80", "-a.com:80", "a..b:80"}) {
    INFO("input: " << bad);
    CHECK_THROWS_AS(parse_host_port(bad), ConfigError);
  }
}

TEST_CASE("is_loopback_host") {
  CHECK(is_loopback_host("127.0.0.1"));
  CHECK(is_loopback_host("127.255.0.9"));
  CHECK(is_loopback_host("::1"));
  CHECK(is_loopback_host("[::1]"));
  CHECK(is_loopback_host("localhost"));
  CHECK(is_loopback_host("LocalHost"));
  CHECK(is_loopback_host("::ffff:127.0.0.1"));
  CHECK_FALSE(is_loopback_host("0.0.0.0"));
  CHECK_FALSE(is_loopback_host("::"));
  CHECK_FALSE(is_loopback_host("128.0.0.1"));
  CHECK_FALSE(is_loopback_host("10.0.0.1"));
  CHECK_FALSE(is_loopback_host("localhost.example.com"));
  CHECK_FALSE(is_loopback_host("myhost"));
  CHECK_FALSE(is_loopback_host(""));
}

TEST_CASE("deny_networks CIDRs: IPv4 and IPv6, host bits cleared") {
  const Config c = load(
      "access:\n  deny_networks: [169.254.1.2/16, 10.255.255.255/9, 192.168.1.7, "
      "\"fe80::1/10\", \"2001:db8:ffff::/33\", 0.0.0.0/0]\n");
  const auto& n = c.access.deny_networks;
  REQUIRE(n.size() == 6);
  CHECK(n[0].text == "169.254.1.2/16");
  CHECK(n[0].addr == std::vector<uint8_t>{169, 254, 0, 0});
  CHECK(n[0].prefix == 16);
  CHECK(n[1].addr == std::vector<uint8_t>{10, 128, 0, 0});
  CHECK(n[1].prefix == 9);
  CHECK(n[2].addr == std::vector<uint8_t>{192, 168, 1, 7});
  CHECK(n[2].prefix == 32);
  REQUIRE(n[3].addr.size() == 16);
  CHECK(n[3].addr[0] == 0xfe);
  CHECK(n[3].addr[1] == 0x80);
  CHECK(std::all_of(n[3].addr.begin() + 2, n[3].addr.end(), [](uint8_t b) { return b == 0; }));
  CHECK(n[3].prefix == 10);
  REQUIRE(n[4].addr.size() == 16);
  CHECK(n[4].addr[0] == 0x20);
  CHECK(n[4].addr[3] == 0xb8);
  CHECK(n[4].addr[4] == 0x80);  // 33rd bit kept, the rest of 0xff cleared
  CHECK(n[4].addr[5] == 0x00);
  CHECK(n[5].addr == std::vector<uint8_t>{0, 0, 0, 0});
  CHECK(n[5].prefix == 0);

  for (const char* bad : {"10.0.0.0/33", "fe80::/129", "10.0.0/8", "example.com/8", "10.0.0.0/",
                          "10.0.0.0/-1", "10.0.0.0/8/8", ""}) {
    INFO("input: " << bad);
    CHECK(error_of(std::string("access:\n  deny_networks: [\"") + bad + "\"]\n")
              .starts_with("t.yaml:2: access.deny_networks[0]: invalid CIDR"));
  }
}

TEST_CASE("workers: 0 means one per core") {
  const unsigned cores = std::thread::hardware_concurrency();
  CHECK(load("workers: 0\n").workers == (cores == 0 ? 1u : cores));
  CHECK(load("workers: 3\n").workers == 3);
}

TEST_CASE("host patterns are lower-cased and checked") {
  const Config c = load("access:\n  allow: [\"API.example.com\", \"*.Internal\", \"10.1.2.3\"]\n");
  CHECK(c.access.allow == std::vector<std::string>{"api.example.com", "*.internal", "10.1.2.3"});
  CHECK(error_of("access:\n  deny: [\"\"]\n").starts_with("t.yaml:2: access.deny[0]: "));
  CHECK(error_of("access:\n  deny: [\"*foo.com\"]\n").starts_with("t.yaml:2: access.deny[0]: "));
  CHECK(error_of("routes:\n  - host: \"a b\"\n").starts_with("t.yaml:2: routes[0].host: "));
}

TEST_CASE("refuses to be an open proxy by accident") {
  const std::string err = error_of("listen: 0.0.0.0:3128\n");
  CHECK(starts_with(err, "t.yaml:1: access.allow: contains \"*\" while listen 0.0.0.0:3128"));
  CHECK(err.find("access.open_proxy: true") != std::string::npos);

  // The line points at access.allow when the file sets it.
  CHECK(starts_with(error_of("listen: \"[::]:3128\"\naccess:\n  allow: [a.com, \"*\"]\n"),
                    "t.yaml:3: access.allow: "));

  CHECK_NOTHROW(load("listen: 0.0.0.0:3128\naccess:\n  open_proxy: true\n"));
  CHECK_NOTHROW(load("listen: 0.0.0.0:3128\naccess:\n  allow: [\"*.example.com\"]\n"));
  CHECK_NOTHROW(load("listen: 127.1.2.3:3128\n"));
  CHECK_NOTHROW(load("listen: \"[::1]:3128\"\n"));
  CHECK_NOTHROW(load("listen: localhost:0\n"));
}

TEST_CASE("client_cert and client_key come as a pair") {
  CHECK(error_of("upstream:\n  client_cert: /c.pem\n") ==
        "t.yaml:2: upstream.client_cert: is set but upstream.client_key is not; both are needed");
  CHECK(error_of("upstream:\n  sni: x\n  client_key: /k.pem\n") ==
        "t.yaml:3: upstream.client_key: is set but upstream.client_cert is not; both are needed");
  CHECK_NOTHROW(load("upstream:\n  client_cert: /c.pem\n  client_key: /k.pem\n"));
  // A route that clears one of an inherited pair is caught on the route, at its line.
  CHECK(error_of("upstream:\n  client_cert: /c.pem\n  client_key: /k.pem\nroutes:\n  - host: "
                 "a.com\n    client_key: \"\"\n") ==
        "t.yaml:6: routes[0].client_cert: is set but routes[0].client_key is not; both are "
        "needed");
}

TEST_CASE("access.auth must exist and must not be world-readable") {
  TempFile good("user:secret\n", 0600);
  const Config c = load("access:\n  auth: " + good.path + "\n");
  CHECK(c.access.auth == good.path);

  TempFile group("user:secret\n", 0640);
  CHECK_NOTHROW(load("access:\n  auth: " + group.path + "\n"));

  TempFile open("user:secret\n", 0644);
  const std::string err = error_of("listen: 127.0.0.1:3128\naccess:\n  auth: " + open.path + "\n");
  CHECK(starts_with(err, "t.yaml:3: access.auth: \"" + open.path + "\" is readable by every user"));

  const std::string missing = good.path + ".missing";
  CHECK(error_of("access:\n  auth: " + missing + "\n") ==
        "t.yaml:2: access.auth: cannot use \"" + missing + "\": No such file or directory");
  CHECK(error_of("access:\n  auth: /tmp\n") ==
        "t.yaml:2: access.auth: \"/tmp\" is not a regular file");
}

TEST_CASE("command-line overrides") {
  Config c = load("listen: 127.0.0.1:3128\n");
  apply_overrides(c, Overrides{"127.0.0.1:0", "", "debug"});
  CHECK(c.listen == HostPort{"127.0.0.1", 0});
  CHECK_FALSE(c.admin.has_value());
  CHECK(c.log.level == LogLevel::debug);

  apply_overrides(c, Overrides{std::nullopt, "[::1]:9000", std::nullopt});
  CHECK(c.admin == std::optional<HostPort>(HostPort{"::1", 9000}));
  CHECK(c.listen == HostPort{"127.0.0.1", 0});
  CHECK(c.log.level == LogLevel::debug);

  const Config before = c;
  CHECK(starts_with(error_from([&] {
                      apply_overrides(c, Overrides{"nonsense", {}, {}});
                    }),
                    "--listen: invalid address \"nonsense\""));
  CHECK(starts_with(error_from([&] {
                      apply_overrides(c, Overrides{{}, "x", {}});
                    }),
                    "--admin: invalid address \"x\""));
  CHECK(error_from([&] {
          apply_overrides(c, Overrides{{}, {}, "verbose"});
        }) == "--log-level: invalid value \"verbose\" (use debug, info, warn or error)");
  CHECK(c == before);

  // Validated again after the flags: an open proxy made by --listen is refused.
  Config d = load_config_string(default_config_yaml(), "<default>");
  CHECK(starts_with(error_from([&] {
                      apply_overrides(d, Overrides{"0.0.0.0:3128", {}, {}});
                    }),
                    "<default>: access.allow: contains \"*\" while listen 0.0.0.0:3128"));
  CHECK(d == load_config_string(default_config_yaml(), "<default>"));  // left untouched
  Config e = load("access: {open_proxy: true}\n");
  CHECK_NOTHROW(apply_overrides(e, Overrides{"0.0.0.0:3128", {}, {}}));
}

TEST_CASE("validate() on a hand-built Config reports the source without a line") {
  Config c;
  c.source = "/etc/upkeep.yaml";
  CHECK_NOTHROW(validate(c));
  c.upstream.client_key = "/k.pem";
  CHECK(error_from([&] { validate(c); }) ==
        "/etc/upkeep.yaml: upstream.client_key: is set but upstream.client_cert is not; both are "
        "needed");
}

TEST_CASE("to_yaml round-trips") {
  SUBCASE("default") {
    const Config c;
    CHECK(without_source(load(to_yaml(c))) == c);
  }
  SUBCASE("everything changed") {
    TempFile auth("u:p\n", 0600);
    const std::string yaml = R"(
listen: "[::1]:0"
admin: ""
workers: 3
shutdown_grace: 1500ms
log: {level: warn, format: json, access_log: false}
limits:
  max_header_bytes: 1000
  max_client_connections: 5
  client_idle_timeout: 2m
  client_header_timeout: 250ms
upstream:
  tls: false
  port_map: {8080: 8443, 80: 443}
  protocols: [http/1.1]
  max_connections: 1
  max_concurrent_streams: 7
  max_requests_per_connection: 1000
  max_connection_age: 2h
  idle_timeout: 61s
  connect_timeout: 1s
  response_timeout: 1m
  queue: {max_pending: 0, timeout: 100ms}
  drain: {max_bytes: 1536, max_time: 0}
  retry_idempotent: false
  ca_file: "/etc/ssl/my \"ca\".pem"
  verify: false
  sni: "sni.example"
  client_cert: /c.pem
  client_key: /k.pem
routes:
  - host: "api.example.com:8443"
    connect_to: "[2001:db8::1]:443"
    max_connections: 8
    queue: {timeout: 5s}
  - host: "*.plain.internal"
    tls: true
    protocols: [h2]
    drain: {max_bytes: 2GiB}
    client_cert: ""
    client_key: ""
  - host: "*"
access:
  allow: ["*.example.com", "10.0.0.1"]
  deny: ["bad.example.com"]
  deny_networks: [169.254.9.9/16, "fd00::/8"]
  connect: deny
  connect_ports: [443, 8443]
  auth: AUTH
  open_proxy: true
)";
    std::string text = yaml;
    text.replace(text.find("AUTH"), 4, auth.path);
    const Config c = load(text);
    CHECK(c.log.format == LogFormat::json);
    CHECK(c.routes[0].upstream.queue.timeout == 5s);
    CHECK(c.routes[0].upstream.queue.max_pending == 0);
    CHECK(c.upstream.ca_file == "/etc/ssl/my \"ca\".pem");

    const std::string out = to_yaml(c);
    INFO("to_yaml:\n" << out);
    const Config again = load(out);
    CHECK(again == c);
    CHECK(out.find("shutdown_grace: 1500ms") != std::string::npos);
    CHECK(out.find("max_connection_age: 2h") != std::string::npos);
    CHECK(out.find("client_idle_timeout: 2m") != std::string::npos);
    CHECK(out.find("max_bytes: 1536\n") != std::string::npos);
    CHECK(out.find("max_bytes: 2GiB\n") != std::string::npos);
    CHECK(out.find("max_time: 0s") != std::string::npos);
    CHECK(out.find("admin: \"\"") != std::string::npos);
    CHECK(out.find("connect_to: \"[2001:db8::1]:443\"") != std::string::npos);
  }
  SUBCASE("the example file") {
    const Config c = load_config_file(std::string(UPKEEP_SOURCE_DIR) + "/config/upkeep.yaml");
    CHECK(without_source(load(to_yaml(c))) == without_source(c));
  }
}

TEST_CASE("intercept keys parse, validate and round-trip") {
  const Config c = load(R"(
access: {connect: intercept}
intercept:
  hosts: ["API.example.com", "*.svc.example.com"]
  skip: ["pinned.example.com"]
  state_dir: /var/lib/upkeep-test
  cert_cache: 50
  fallback_ttl: 0s
)");
  CHECK(c.access.connect == ConnectMode::intercept);
  CHECK(c.intercept.hosts == std::vector<std::string>{"api.example.com", "*.svc.example.com"});
  CHECK(c.intercept.skip == std::vector<std::string>{"pinned.example.com"});
  CHECK(c.intercept.state_dir == "/var/lib/upkeep-test");
  CHECK(c.intercept.cert_cache == 50);
  CHECK(c.intercept.fallback_ttl == 0ms);
  CHECK(without_source(load(to_yaml(c))) == without_source(c));

  const Config d = load("");
  CHECK(d.intercept.hosts == std::vector<std::string>{"*"});
  CHECK(d.intercept.cert_cache == 1000);
  CHECK(d.intercept.fallback_ttl == 10min);

  CHECK(error_of("intercept: {bogus: 1}") == "t.yaml:1: intercept.bogus: unknown key");
  CHECK(starts_with(error_of("intercept: {cert_cache: 0}"), "t.yaml:1: intercept.cert_cache:"));
  CHECK(starts_with(error_of("intercept: {fallback_ttl: soon}"),
                    "t.yaml:1: intercept.fallback_ttl:"));
  CHECK(starts_with(error_of("intercept: {hosts: [\"bad host\"]}"), "t.yaml:1: intercept.hosts"));
  CHECK(starts_with(error_of("intercept: {ca_cert: /x/ca.pem}"),
                    "t.yaml:1: intercept.ca_cert: is set but intercept.ca_key is not"));
  CHECK(starts_with(error_of("access: {connect: intercept}\nintercept: {hosts: []}"),
                    "t.yaml:2: intercept.hosts: is empty"));
}
