#include "router.hpp"

#include <doctest/doctest.h>

#include <array>
#include <vector>

using namespace upkeep;

namespace {

std::shared_ptr<const Config> make(Config c) {
  return std::make_shared<const Config>(std::move(c));
}

// By value: route() returns a temporary.
RouteDecision ok(Routed<RouteDecision> r) {
  REQUIRE(std::holds_alternative<RouteDecision>(r));
  return std::get<RouteDecision>(std::move(r));
}

errc err(const Routed<RouteDecision>& r) {
  REQUIRE(std::holds_alternative<errc>(r));
  return std::get<errc>(r);
}

errc err(const Routed<HostPort>& r) {
  REQUIRE(std::holds_alternative<errc>(r));
  return std::get<errc>(r);
}

Route route_for(std::string pattern, UpstreamSettings base = {}) {
  Route r;
  r.host_pattern = std::move(pattern);
  r.upstream = std::move(base);
  return r;
}

Cidr cidr(std::vector<uint8_t> addr, unsigned prefix) {
  Cidr c;
  c.addr = std::move(addr);
  c.prefix = prefix;
  return c;
}

}  // namespace

TEST_CASE("host_matches: exact, wildcard, star") {
  CHECK(host_matches("api.example.com", "api.example.com"));
  CHECK(host_matches("api.example.com", "API.Example.COM"));
  CHECK(host_matches("API.example.com", "api.example.com"));
  CHECK_FALSE(host_matches("api.example.com", "api.example.co"));
  CHECK_FALSE(host_matches("api.example.com", "xapi.example.com"));

  CHECK(host_matches("*.example.com", "a.example.com"));
  CHECK(host_matches("*.example.com", "a.b.c.example.com"));
  CHECK(host_matches("*.example.com", "A.EXAMPLE.com"));
  CHECK_FALSE(host_matches("*.example.com", "example.com"));
  CHECK_FALSE(host_matches("*.example.com", "badexample.com"));
  CHECK_FALSE(host_matches("*.example.com", ".example.com"));
  CHECK_FALSE(host_matches("*.example.com", "example.com.evil"));

  CHECK(host_matches("*", "anything.at.all"));
  CHECK(host_matches("*", "10.0.0.1"));
  CHECK_FALSE(host_matches("", "example.com"));
}

TEST_CASE("absolute-form parsing") {
  Config c;
  c.upstream.tls = false;
  Router r(make(c));

  SUBCASE("basic http URL") {
    auto d = ok(r.route("http://Example.COM/v1/x?a=B&c=%20", ""));
    CHECK(d.origin.host == "example.com");
    CHECK(d.origin.port == 80);
    CHECK_FALSE(d.origin.tls);
    CHECK(d.path == "/v1/x?a=B&c=%20");
    CHECK(d.host_header == "example.com");
  }
  SUBCASE("scheme is case-insensitive") {
    CHECK(ok(r.route("HTTP://example.com/", "")).origin.host == "example.com");
    CHECK(ok(r.route("HtTpS://example.com/", "")).origin.tls);
  }
  SUBCASE("empty path defaults to /") {
    CHECK(ok(r.route("http://example.com", "")).path == "/");
    CHECK(ok(r.route("http://example.com:8080", "")).path == "/");
    CHECK(ok(r.route("http://example.com?q=1", "")).path == "/?q=1");
  }
  SUBCASE("path and query verbatim") {
    CHECK(ok(r.route("http://h.test/A/%2F/b;p?x=Y%26&&", "")).path == "/A/%2F/b;p?x=Y%26&&");
  }
  SUBCASE("explicit port") {
    auto d = ok(r.route("http://example.com:8080/", ""));
    CHECK(d.origin.port == 8080);
    CHECK(d.host_header == "example.com:8080");
  }
  SUBCASE("IPv4 literal") {
    auto d = ok(r.route("http://10.1.2.3:81/", ""));
    CHECK(d.origin.host == "10.1.2.3");
    CHECK(d.origin.port == 81);
    CHECK(d.host_header == "10.1.2.3:81");
  }
  SUBCASE("IPv6 literal") {
    auto d = ok(r.route("http://[2001:DB8::1]:8080/x", ""));
    CHECK(d.origin.host == "2001:db8::1");
    CHECK(d.origin.port == 8080);
    CHECK(d.host_header == "[2001:db8::1]:8080");
    auto d2 = ok(r.route("http://[::1]/", ""));
    CHECK(d2.host_header == "[::1]");
    // One spelling per address.
    CHECK(ok(r.route("http://[0:0::0001]/", "")).origin.host == "::1");
  }
  SUBCASE("trailing dot is dropped") {
    CHECK(ok(r.route("http://example.com./", "")).origin.host == "example.com");
  }
  SUBCASE("Host header is ignored for absolute-form") {
    CHECK(ok(r.route("http://a.test/", "b.test")).origin.host == "a.test");
  }
}

TEST_CASE("absolute-form rejections") {
  Router r(make(Config{}));
  const char* bad[] = {
      "ftp://example.com/",
      "http:/example.com/",
      "http//example.com/",
      "httpx://example.com/",
      "example.com/",
      "http://",
      "http:///path",
      "http://:80/",
      "http://user@example.com/",
      "http://user:pw@example.com/",
      "http://@example.com/",
      "http://example.com/#frag",
      "http://example.com/p?q#frag",
      "http://example.com#frag",
      "http://example.com:0/",
      "http://example.com:65536/",
      "http://example.com:99999/",
      "http://example.com:-1/",
      "http://example.com:80a/",
      "http://example.com:/",
      "http://example.com:123456/",
      "http://exa mple.com/",
      "http://example.com/a b",
      "http://example.com/a\tb",
      "http://example.com/a\r\nX-Injected: 1",
      "http://example.com/a\x01",
      "http://example.com/\x7f",
      "http://exa\x01mple.com/",
      "http://exa_mple!.com/",
      "http://[::1/",
      "http://[::1]x/",
      "http://[::g]/",
      "http://[fe80::1%25eth0]/",
      "http://[v1.fe]/",
      "http://::1/",
      "http://a..b/",
      "http://.example.com/",
      "http://256.1.1.1/",
      "http://127.1/",
      "http://0x7f.0.0.1/",
      "http://2130706433/",
      "http://01.2.3.4/",
      "http://1.2.3.4.5/",
      "*",
      "",
  };
  for (const char* t : bad) {
    CAPTURE(t);
    CHECK(err(r.route(t, "example.com")) == errc::bad_request);
  }
  // A NUL byte inside the target (not expressible via const char*).
  CHECK(err(r.route(std::string_view("http://example.com/a\0b", 22), "")) == errc::bad_request);
  // Raw non-ASCII is not a URI character; it must arrive percent-encoded.
  CHECK(err(r.route("http://example.com/ok\xff", "")) == errc::bad_request);
  CHECK(err(r.route("/caf\xc3\xa9", "example.com")) == errc::bad_request);
  CHECK(std::holds_alternative<RouteDecision>(r.route("/caf%C3%A9", "example.com")));
}

TEST_CASE("origin-form takes the origin from Host") {
  Config c;
  c.upstream.tls = false;
  Router r(make(c));

  auto d = ok(r.route("/v1/x?y=1", "API.example.com"));
  CHECK(d.origin.host == "api.example.com");
  CHECK(d.origin.port == 80);
  CHECK(d.path == "/v1/x?y=1");
  CHECK(d.host_header == "api.example.com");

  auto d2 = ok(r.route("/", "example.com:8080"));
  CHECK(d2.origin.port == 8080);
  CHECK(d2.host_header == "example.com:8080");

  auto d3 = ok(r.route("/", "[::1]:9000"));
  CHECK(d3.origin.host == "::1");
  CHECK(d3.host_header == "[::1]:9000");

  // A redundant default port is not repeated upstream.
  CHECK(ok(r.route("/", "example.com:80")).host_header == "example.com");

  CHECK(err(r.route("/", "")) == errc::bad_request);
  CHECK(err(r.route("/", "example.com:0")) == errc::bad_request);
  CHECK(err(r.route("/", "example.com:")) == errc::bad_request);
  CHECK(err(r.route("/", "user@example.com")) == errc::bad_request);
  CHECK(err(r.route("/", "exa mple.com")) == errc::bad_request);
  CHECK(err(r.route("/", " example.com")) == errc::bad_request);
  CHECK(err(r.route("/", "example.com/x")) == errc::bad_request);
  CHECK(err(r.route("/", "[::1")) == errc::bad_request);
  CHECK(err(r.route("/a b", "example.com")) == errc::bad_request);
  CHECK(err(r.route("/a#f", "example.com")) == errc::bad_request);
  CHECK(err(r.route("/a\r\n", "example.com")) == errc::bad_request);
}

TEST_CASE("TLS origination and port_map") {
  Config c;  // tls: true, port_map {80: 443}
  Router r(make(c));

  SUBCASE("http:// becomes https on 443") {
    auto d = ok(r.route("http://example.com/x", ""));
    CHECK(d.origin.tls);
    CHECK(d.origin.port == 443);
    CHECK(d.origin.sni == "example.com");
    CHECK(d.host_header == "example.com");
    CHECK(d.origin.label() == "https://example.com:443");
  }
  SUBCASE("explicit port 80 is mapped too") {
    auto d = ok(r.route("http://example.com:80/", ""));
    CHECK(d.origin.port == 443);
    CHECK(d.host_header == "example.com");
  }
  SUBCASE("explicit port not in port_map is kept") {
    auto d = ok(r.route("http://example.com:8443/", ""));
    CHECK(d.origin.tls);
    CHECK(d.origin.port == 8443);
    CHECK(d.host_header == "example.com:8443");
  }
  SUBCASE("origin-form goes through port_map as well") {
    auto d = ok(r.route("/", "example.com"));
    CHECK(d.origin.tls);
    CHECK(d.origin.port == 443);
    CHECK(d.host_header == "example.com");
  }
  SUBCASE("https:// keeps its port and is never remapped") {
    auto d = ok(r.route("https://example.com/", ""));
    CHECK(d.origin.port == 443);
    CHECK(ok(r.route("https://example.com:80/", "")).origin.port == 80);
    CHECK(ok(r.route("https://example.com:80/", "")).host_header == "example.com:80");
  }
  SUBCASE("custom port_map") {
    Config c2;
    c2.upstream.port_map = {{80, 443}, {8080, 8443}};
    Router r2(make(c2));
    auto d = ok(r2.route("http://example.com:8080/", ""));
    CHECK(d.origin.port == 8443);
    CHECK(d.host_header == "example.com:8443");
  }
  SUBCASE("port_map is ignored without tls") {
    Config c2;
    c2.upstream.tls = false;
    Router r2(make(c2));
    auto d = ok(r2.route("http://example.com/", ""));
    CHECK_FALSE(d.origin.tls);
    CHECK(d.origin.port == 80);
    CHECK(d.origin.sni == "");
  }
  SUBCASE("https:// implies TLS even when tls is false") {
    Config c2;
    c2.upstream.tls = false;
    Router r2(make(c2));
    auto d = ok(r2.route("https://example.com/", ""));
    CHECK(d.origin.tls);
    CHECK(d.origin.port == 443);
    CHECK(d.origin.sni == "example.com");
    CHECK(d.host_header == "example.com");
  }
  SUBCASE("IPv6 with TLS: no SNI, non-default port bracketed") {
    auto d = ok(r.route("http://[2001:db8::5]:8443/", ""));
    CHECK(d.origin.tls);
    CHECK(d.origin.sni == "");
    CHECK(d.host_header == "[2001:db8::5]:8443");
    CHECK(d.origin.label() == "https://[2001:db8::5]:8443");
  }
  SUBCASE("IPv4 literal gets no SNI") {
    CHECK(ok(r.route("http://192.0.2.1/", "")).origin.sni == "");
  }
}

TEST_CASE("origin fields copied from settings") {
  Config c;
  c.upstream.verify = false;
  c.upstream.ca_file = "/etc/ca.pem";
  c.upstream.client_cert = "/c.pem";
  c.upstream.client_key = "/k.pem";
  c.upstream.protocols = {"http/1.1"};
  c.upstream.sni = "override.test";
  Router r(make(c));
  auto d = ok(r.route("http://example.com/", ""));
  CHECK_FALSE(d.origin.verify);
  CHECK(d.origin.ca_file == "/etc/ca.pem");
  CHECK(d.origin.client_cert == "/c.pem");
  CHECK(d.origin.client_key == "/k.pem");
  CHECK(d.origin.protocols == std::vector<std::string>{"http/1.1"});
  CHECK(d.origin.sni == "override.test");
  CHECK_FALSE(d.origin.connect_to.has_value());
  CHECK(d.settings == &r.config().upstream);
  // An explicit sni applies to IP literals too: the operator asked for it.
  CHECK(ok(r.route("http://192.0.2.1/", "")).origin.sni == "override.test");
}

TEST_CASE("routes: first match wins, port-specific, connect_to, sni") {
  Config c;
  UpstreamSettings plain = c.upstream;
  plain.tls = false;
  UpstreamSettings eight = c.upstream;
  eight.max_connections = 8;
  eight.sni = "sni.internal";
  UpstreamSettings other = c.upstream;
  other.max_connections = 2;

  Route api = route_for("api.example.com", eight);
  api.connect_to = HostPort{"10.0.0.5", 443};
  Route on8080 = route_for("*.example.com", other);
  on8080.port = 8080;
  Route wild = route_for("*.example.com", plain);
  Route shadowed = route_for("www.example.com", other);  // never reached: wild first
  c.routes = {api, on8080, wild, shadowed};
  Router r(make(c));

  SUBCASE("exact route with connect_to and sni") {
    auto d = ok(r.route("http://api.example.com/x", ""));
    CHECK(d.settings == &r.config().routes[0].upstream);
    CHECK(d.settings->max_connections == 8);
    REQUIRE(d.origin.connect_to.has_value());
    CHECK(*d.origin.connect_to == HostPort{"10.0.0.5", 443});
    CHECK(d.origin.host == "api.example.com");
    CHECK(d.origin.sni == "sni.internal");
    CHECK(d.origin.tls);
    CHECK(d.origin.port == 443);
    CHECK(d.host_header == "api.example.com");
  }
  SUBCASE("port-specific route matches only its port") {
    auto d = ok(r.route("http://www.example.com:8080/", ""));
    CHECK(d.settings == &r.config().routes[1].upstream);
    CHECK(d.origin.tls);
    CHECK(d.origin.port == 8080);
    auto d2 = ok(r.route("http://www.example.com/", ""));
    CHECK(d2.settings == &r.config().routes[2].upstream);
  }
  SUBCASE("route port is compared with the URL's default port") {
    Config c2;
    Route p80 = route_for("a.test", other);
    p80.port = 80;
    Route p443 = route_for("b.test", other);
    p443.port = 443;
    c2.routes = {p80, p443};
    Router r2(make(c2));
    CHECK(ok(r2.route("http://a.test/", "")).settings == &r2.config().routes[0].upstream);
    CHECK(ok(r2.route("https://a.test/", "")).settings == &r2.config().upstream);
    CHECK(ok(r2.route("https://b.test/", "")).settings == &r2.config().routes[1].upstream);
    // Matching uses the URL port, before port_map.
    CHECK(ok(r2.route("http://b.test/", "")).settings == &r2.config().upstream);
  }
  SUBCASE("wildcard route with tls false") {
    auto d = ok(r.route("http://www.example.com/", ""));
    CHECK(d.settings == &r.config().routes[2].upstream);
    CHECK_FALSE(d.origin.tls);
    CHECK(d.origin.port == 80);
    CHECK(d.origin.sni == "");
    CHECK_FALSE(d.origin.connect_to.has_value());
  }
  SUBCASE("wildcard does not cover the bare domain") {
    auto d = ok(r.route("http://example.com/", ""));
    CHECK(d.settings == &r.config().upstream);
    CHECK(d.origin.tls);
  }
  SUBCASE("routing is case-insensitive and works for origin-form") {
    auto d = ok(r.route("/", "API.EXAMPLE.COM"));
    CHECK(d.settings == &r.config().routes[0].upstream);
  }
  SUBCASE("different routes give different pool keys") {
    auto a = ok(r.route("http://api.example.com/", ""));
    auto b = ok(r.route("http://www.example.com/", ""));
    CHECK_FALSE(a.origin == b.origin);
  }
}

TEST_CASE("access: allow and deny") {
  Config c;
  c.access.allow = {"*.example.com", "10.0.0.1", "::1"};
  c.access.deny = {"secret.example.com", "*.internal.example.com"};
  Router r(make(c));

  CHECK(r.host_allowed("a.example.com"));
  CHECK(r.host_allowed("A.Example.Com"));
  CHECK(r.host_allowed("10.0.0.1"));
  CHECK(r.host_allowed("::1"));
  CHECK(r.host_allowed("[::1]"));
  CHECK_FALSE(r.host_allowed("example.com"));
  CHECK_FALSE(r.host_allowed("other.test"));
  CHECK_FALSE(r.host_allowed("secret.example.com"));
  CHECK_FALSE(r.host_allowed("SECRET.example.com"));
  CHECK_FALSE(r.host_allowed("db.internal.example.com"));
  // A v4-mapped IPv6 literal is judged as its IPv4 address too.
  CHECK(r.host_allowed("::ffff:10.0.0.1"));
  CHECK(r.host_allowed("[::FFFF:10.0.0.1]"));
  CHECK_FALSE(r.host_allowed("::ffff:10.0.0.2"));

  CHECK(std::holds_alternative<RouteDecision>(r.route("http://a.example.com/", "")));
  CHECK(err(r.route("http://secret.example.com/", "")) == errc::host_denied);
  CHECK(err(r.route("http://Secret.Example.com./", "")) == errc::host_denied);
  CHECK(err(r.route("http://other.test/", "")) == errc::host_denied);
  CHECK(err(r.route("/", "secret.example.com")) == errc::host_denied);
  CHECK(std::holds_alternative<RouteDecision>(r.route("http://[::1]:8080/", "")));
  // Parsing errors win over policy.
  CHECK(err(r.route("http://secret.example.com/#x", "")) == errc::bad_request);

  SUBCASE("v4-mapped literal cannot dodge an IPv4 deny") {
    Config c2;
    c2.access.deny = {"127.0.0.1"};
    Router r2(make(c2));
    CHECK_FALSE(r2.host_allowed("::ffff:127.0.0.1"));
    CHECK(err(r2.route("http://[::ffff:127.0.0.1]/", "")) == errc::host_denied);
    CHECK(err(r2.route("http://[::ffff:7f00:1]/", "")) == errc::host_denied);
    CHECK(r2.host_allowed("::ffff:127.0.0.2"));
  }
  SUBCASE("deny beats allow *") {
    Config c2;
    c2.access.deny = {"*"};
    Router r2(make(c2));
    CHECK_FALSE(r2.host_allowed("example.com"));
    CHECK(err(r2.route("http://example.com/", "")) == errc::host_denied);
  }
  SUBCASE("empty allow list allows nothing") {
    Config c2;
    c2.access.allow.clear();
    Router r2(make(c2));
    CHECK_FALSE(r2.host_allowed("example.com"));
  }
  SUBCASE("default allows all") {
    Router r2(make(Config{}));
    CHECK(r2.host_allowed("anything.test"));
  }
}

TEST_CASE("address_denied: CIDR v4, v6 and v4-mapped") {
  Config c;
  c.access.deny_networks = {
      cidr({169, 254, 0, 0}, 16),
      cidr({10, 0, 0, 0}, 8),
      cidr({192, 168, 1, 128}, 25),
      cidr({0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 10),
      cidr({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 128),
  };
  Router r(make(c));
  using A4 = std::array<uint8_t, 4>;
  using A16 = std::array<uint8_t, 16>;

  CHECK(r.address_denied(A4{169, 254, 169, 254}));
  CHECK(r.address_denied(A4{169, 254, 0, 0}));
  CHECK_FALSE(r.address_denied(A4{169, 255, 0, 1}));
  CHECK(r.address_denied(A4{10, 255, 255, 255}));
  CHECK_FALSE(r.address_denied(A4{11, 0, 0, 0}));
  // Non-byte-aligned prefix.
  CHECK(r.address_denied(A4{192, 168, 1, 128}));
  CHECK(r.address_denied(A4{192, 168, 1, 255}));
  CHECK_FALSE(r.address_denied(A4{192, 168, 1, 127}));
  CHECK_FALSE(r.address_denied(A4{8, 8, 8, 8}));

  CHECK(r.address_denied(A16{0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}));
  CHECK(r.address_denied(A16{0xfe, 0xbf, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}));
  CHECK_FALSE(r.address_denied(A16{0xfe, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}));
  CHECK(r.address_denied(A16{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}));
  CHECK_FALSE(r.address_denied(A16{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2}));
  CHECK_FALSE(r.address_denied(A16{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}));

  // ::ffff:169.254.169.254 is the v4 address in disguise.
  CHECK(r.address_denied(A16{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 169, 254, 169, 254}));
  CHECK(r.address_denied(A16{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3}));
  CHECK_FALSE(r.address_denied(A16{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 8, 8, 8, 8}));
  // Not mapped (wrong marker): the v4 rule must not apply.
  CHECK_FALSE(r.address_denied(A16{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe, 169, 254, 169, 254}));
  // A v4 rule never matches an unrelated v6 address with the same leading bytes.
  CHECK_FALSE(r.address_denied(A16{10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}));

  SUBCASE("v6 rule covering the mapped range") {
    Config c2;
    c2.access.deny_networks = {cidr({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0}, 96)};
    Router r2(make(c2));
    CHECK(r2.address_denied(A16{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4}));
    CHECK_FALSE(r2.address_denied(A4{1, 2, 3, 4}));
  }
  SUBCASE("/0 matches its family only") {
    Config c2;
    c2.access.deny_networks = {cidr({0, 0, 0, 0}, 0)};
    Router r2(make(c2));
    CHECK(r2.address_denied(A4{8, 8, 8, 8}));
    CHECK_FALSE(r2.address_denied(A16{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}));
  }
  SUBCASE("no rules") {
    Router r2(make(Config{}));
    CHECK_FALSE(r2.address_denied(A4{169, 254, 169, 254}));
  }
}

TEST_CASE("route_connect") {
  Config c;
  c.access.connect_ports = {443, 8443};
  c.access.deny = {"blocked.test"};
  Router r(make(c));

  auto good = r.route_connect("Example.com:443");
  REQUIRE(std::holds_alternative<HostPort>(good));
  CHECK(std::get<HostPort>(good) == HostPort{"example.com", 443});

  auto v6 = r.route_connect("[2001:db8::1]:8443");
  REQUIRE(std::holds_alternative<HostPort>(v6));
  CHECK(std::get<HostPort>(v6) == HostPort{"2001:db8::1", 8443});

  CHECK(err(r.route_connect("example.com:22")) == errc::connect_denied);
  CHECK(err(r.route_connect("example.com:80")) == errc::connect_denied);
  CHECK(err(r.route_connect("blocked.test:443")) == errc::host_denied);
  CHECK(err(r.route_connect("example.com")) == errc::bad_request);
  CHECK(err(r.route_connect("example.com:")) == errc::bad_request);
  CHECK(err(r.route_connect("example.com:0")) == errc::bad_request);
  CHECK(err(r.route_connect("example.com:70000")) == errc::bad_request);
  CHECK(err(r.route_connect(":443")) == errc::bad_request);
  CHECK(err(r.route_connect("user@example.com:443")) == errc::bad_request);
  CHECK(err(r.route_connect("http://example.com:443")) == errc::bad_request);
  CHECK(err(r.route_connect("example.com:443/")) == errc::bad_request);
  CHECK(err(r.route_connect("exa mple.com:443")) == errc::bad_request);
  CHECK(err(r.route_connect("::1:443")) == errc::bad_request);
  CHECK(err(r.route_connect("")) == errc::bad_request);

  SUBCASE("mode deny refuses everything") {
    Config c2;
    c2.access.connect = ConnectMode::deny;
    Router r2(make(c2));
    CHECK(err(r2.route_connect("example.com:443")) == errc::connect_denied);
  }
  SUBCASE("port check comes before host check") {
    CHECK(err(r.route_connect("blocked.test:22")) == errc::connect_denied);
  }
  SUBCASE("default config tunnels 443 only") {
    Router r2(make(Config{}));
    CHECK(std::holds_alternative<HostPort>(r2.route_connect("example.com:443")));
    CHECK(err(r2.route_connect("example.com:8443")) == errc::connect_denied);
  }
}

TEST_CASE("requests inside an intercepted CONNECT must name its host and port") {
  Config c;
  Route plain = route_for("api.example.com");
  plain.upstream.tls = false;  // a route's tls: false does not apply inside the client's TLS
  plain.upstream.port_map = {{8443, 9443}};
  c.routes.push_back(plain);
  Router r(make(c));
  const HostPort connect{"api.example.com", 8443};

  auto d = ok(r.route_intercepted("/v1/x?q=1", "API.example.com:8443", connect));
  CHECK(d.origin.tls);
  CHECK(d.origin.port == 8443);  // no port_map
  CHECK(d.origin.sni == "api.example.com");
  CHECK(d.path == "/v1/x?q=1");
  CHECK(d.host_header == "api.example.com:8443");
  auto a = ok(r.route_intercepted("https://api.example.com:8443/y", "", connect));
  CHECK(a.path == "/y");
  CHECK(a.origin.port == 8443);

  CHECK(err(r.route_intercepted("/v1", "api.example.com", connect)) == errc::misdirected);
  CHECK(err(r.route_intercepted("/v1", "other.example.com:8443", connect)) == errc::misdirected);
  CHECK(err(r.route_intercepted("http://api.example.com:8443/", "", connect)) == errc::misdirected);
  CHECK(err(r.route_intercepted("/v1", "", connect)) == errc::bad_request);

  const HostPort on443{"api.example.com", 443};
  auto p = ok(r.route_intercepted("/", "api.example.com", on443));
  CHECK(p.origin.port == 443);
  CHECK(p.host_header == "api.example.com");
}

// route_cached's answer is route()'s: the same error, or the same decision.
static void check_same(const Routed<RouteDecision>& want, const Routed<RouteDecision*>& got) {
  if (const auto* e = std::get_if<errc>(&want)) {
    REQUIRE(std::holds_alternative<errc>(got));
    CHECK(std::get<errc>(got) == *e);
    return;
  }
  REQUIRE(std::holds_alternative<RouteDecision*>(got));
  const RouteDecision& w = std::get<RouteDecision>(want);
  const RouteDecision& g = *std::get<RouteDecision*>(got);
  CHECK(g.origin == w.origin);
  CHECK(g.settings == w.settings);
  CHECK(g.host_header == w.host_header);
  CHECK(g.path == w.path);
}

// Plain upstreams by default, api.example.com over TLS, denied.example.com denied.
static Config cached_config() {
  Config c;
  c.upstream.tls = false;
  c.access.allow = {"*"};
  c.access.deny = {"denied.example.com"};
  Route api = route_for("api.example.com");
  api.upstream.tls = true;
  api.upstream.port_map = {{80, 443}};
  c.routes.push_back(api);
  return c;
}

TEST_CASE("route_cached decides exactly as route() does, over a mixed sequence") {
  Config c = cached_config();
  auto r = std::make_shared<const Router>(make(c));
  struct Req {
    const char* target;
    const char* host;
  };
  const std::vector<Req> reqs{
      {"http://api.example.com/v1/a", ""},      {"http://api.example.com/v1/b?x=1", ""},
      {"http://api.example.com", ""},           {"http://api.example.com?q=2", ""},
      {"http://api.example.com/bad path", ""},  {"http://api.example.com/frag#x", ""},
      {"http://api.example.com/v1/c", ""},      {"http://API.example.com/v1/d", ""},
      {"http://api.example.com:8080/v1/e", ""}, {"/origin/form", "api.example.com"},
      {"/origin/other?y", "api.example.com"},   {"/origin/form", "other.example.com"},
      {"/bad\x01", "other.example.com"},        {"http://denied.example.com/", ""},
      {"http://denied.example.com/again", ""},  {"/x", ""},
      {"ftp://api.example.com/", ""},           {"http://other.example.com/z", ""},
  };
  LastRoute last;
  uint64_t generation = last.generation;
  for (int round = 0; round < 2; ++round) {
    for (const auto& q : reqs) {
      CAPTURE(q.target);
      CAPTURE(q.host);
      check_same(r->route(q.target, q.host), route_cached(last, r, q.target, q.host, nullptr));
    }
  }
  // Same origin, new path: the decision is reused, not routed again.
  REQUIRE(std::holds_alternative<RouteDecision*>(
      route_cached(last, r, "http://other.example.com/1", "", nullptr)));
  generation = last.generation;
  REQUIRE(std::holds_alternative<RouteDecision*>(
      route_cached(last, r, "http://other.example.com/2", "", nullptr)));
  CHECK(last.generation == generation);
  CHECK(last.decision.path == "/2");
  // Another Router (a reload) routes afresh, even for the same key.
  auto r2 = std::make_shared<const Router>(make(c));
  REQUIRE(std::holds_alternative<RouteDecision*>(
      route_cached(last, r2, "http://other.example.com/3", "", nullptr)));
  CHECK(last.generation == generation + 1);
  // So does the same key inside an intercepted CONNECT.
  const HostPort connect{"other.example.com", 443};
  auto in = route_cached(last, r2, "https://other.example.com/4", "", &connect);
  REQUIRE(std::holds_alternative<RouteDecision*>(in));
  CHECK(std::get<RouteDecision*>(in)->origin.tls);
  CHECK(last.generation == generation + 2);
}

TEST_CASE("route_cached with a seed: connections that each send one request route as route()") {
  const Config c = cached_config();
  auto r = std::make_shared<const Router>(make(c));
  const std::vector<std::pair<const char*, const char*>> reqs{
      {"http://api.example.com/a", ""},        {"http://api.example.com/b?x", ""},
      {"http://api.example.com/bad path", ""}, {"http://api.example.com", ""},
      {"/origin", "api.example.com"},          {"/origin?2", "api.example.com"},
      {"/origin", "other.example.com"},        {"http://denied.example.com/", ""},
      {"http://other.example.com/", ""},       {"http://api.example.com/c", ""},
  };
  LastRoute seed;
  for (int round = 0; round < 2; ++round) {
    for (const auto& [target, host] : reqs) {
      CAPTURE(target);
      LastRoute fresh;  // a new client connection
      const auto want = r->route(target, host);
      check_same(want, route_cached(fresh, r, target, host, nullptr, &seed));
      if (std::holds_alternative<errc>(want)) continue;
      // The decision is the seed's present state, whichever way it was reached.
      CHECK(fresh.seed_generation == seed.generation);
      CHECK(fresh.generation == 1);
    }
  }
  // A second connection to the seed's origin takes it as it is: no new state.
  const uint64_t state = seed.generation;
  LastRoute second;
  REQUIRE(std::holds_alternative<RouteDecision*>(
      route_cached(second, r, "http://api.example.com/d", "", nullptr, &seed)));
  CHECK(seed.generation == state);
  CHECK(second.seed_generation == state);
  CHECK(second.decision.path == "/d");
  // Inside an intercepted CONNECT the seed is neither read nor written.
  const HostPort connect{"api.example.com", 443};
  LastRoute inside;
  REQUIRE(std::holds_alternative<RouteDecision*>(
      route_cached(inside, r, "https://api.example.com/e", "", &connect, &seed)));
  CHECK(inside.seed_generation == 0);
  CHECK(seed.generation == state);
  CHECK_FALSE(seed.intercepted);
  // A reload's Router does not match the seed of the old one.
  auto r2 = std::make_shared<const Router>(make(c));
  LastRoute after;
  REQUIRE(std::holds_alternative<RouteDecision*>(
      route_cached(after, r2, "http://api.example.com/f", "", nullptr, &seed)));
  CHECK(seed.generation == state + 1);
  CHECK(seed.router == r2);
}
