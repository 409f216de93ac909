// parse_client_hello against real ClientHellos (captured once, below) and hand-built
// ones whose every length field can be corrupted in turn.
#include "intercept/client_hello.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

using upkeep::intercept::ClientHello;
using upkeep::intercept::HelloStatus;
using upkeep::intercept::kMaxClientHelloBytes;
using upkeep::intercept::kMaxClientHelloMessage;
using upkeep::intercept::parse_client_hello;

namespace {

using Bytes = std::vector<std::uint8_t>;

// Captured from a Python listener on 127.0.0.1 (Debian 12: OpenSSL 3.0, curl 7.88,
// Python 3 ssl), the stream's bytes up to the end of the ClientHello:
//  kOpensslH2:   openssl s_client -servername api.example.com -alpn h2,http/1.1
//  kOpensslTls12: openssl s_client -servername legacy.example.com -tls1_2 -alpn http/1.1
//  kOpensslFragmented: openssl s_client -servername frag.example.com -max_send_frag 512
//                -alpn h2,http/1.1,proto-000-xxxxxxxxxxxxxxxxxx,...,proto-019-... (two records)
//  kCurl:        curl -k https://api.example.com:PORT/ (h2, padding extension)
//  kPython:      ssl.create_default_context(), ALPN h2,http/1.1, server_hostname py.example.net
constexpr std::string_view kOpensslH2 =
    "160301014e0100014a0303980663c3f8afad7976cad020b42bb3220af6bf031ebee8834f761dfbc1b2535820ef85"
    "53d05a0e2645902a438942ffa0ebface364a97bc3fdccb824002410c81bd003e130213031301c02cc030009fcca9"
    "cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c0035002f"
    "00ff010000c300000014001200000f6170692e6578616d706c652e636f6d000b000403000102000a00160014001d"
    "0017001e0019001801000101010201030104002300000010000e000c02683208687474702f312e31001600000017"
    "0000000d002a0028040305030603080708080809080a080b08040805080604010501060103030301030204020502"
    "0602002b0009080304030303020301002d00020101003300260024001d00201b58aed710f6163d220d9efe6a5b30"
    "e0b6d62183a8fe480f10aefc1d9fde1d74";
constexpr std::string_view kOpensslTls12 =
    "16030100e1010000dd03037ad6ae0a95b07c4a2260386ceee9daf31c95402b0013541abd2a8a53d0e2564f000038"
    "c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c"
    "003d003c0035002f00ff0100007c0000001700150000126c65676163792e6578616d706c652e636f6d000b000403"
    "000102000a000c000a001d0017001e00190018002300000010000b000908687474702f312e310016000000170000"
    "000d002a0028040305030603080708080809080a080b080408050806040105010601030303010302040205020602";
constexpr std::string_view kOpensslFragmented =
    "16030102000100038f0303dd68c35fded913c74b036940c3d44072f1e7ab73b4b954e0f05e26279eff9d05200490"
    "296f4ddf37787122647cd99e022a2fd48cc73a0aae4db849cb0c4789e107003e130213031301c02cc030009fcca9"
    "cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c0035002f"
    "00ff01000308000000150013000010667261672e6578616d706c652e636f6d000b000403000102000a0016001400"
    "1d0017001e00190018010001010102010301040023000000100252025002683208687474702f312e311c70726f74"
    "6f2d3030302d7878787878787878787878787878787878781c70726f746f2d3030312d7878787878787878787878"
    "787878787878781c70726f746f2d3030322d7878787878787878787878787878787878781c70726f746f2d303033"
    "2d7878787878787878787878787878787878781c70726f746f2d3030342d78787878787878787878787878787878"
    "78781c70726f746f2d3030352d7878787878787878787878787878787878781c70726f746f2d3030362d78787878"
    "78787878787878787878787878781c70726f746f2d3030372d7878787878787878787878787878787878781c7072"
    "6f746f2d3030382d7878787878787878787878787878787878781c70726f746f2d3030392d787878787878787878"
    "7878787878787878781c701603010193726f746f2d3031302d7878787878787878787878787878787878781c7072"
    "6f746f2d3031312d7878787878787878787878787878787878781c70726f746f2d3031322d787878787878787878"
    "7878787878787878781c70726f746f2d3031332d7878787878787878787878787878787878781c70726f746f2d30"
    "31342d7878787878787878787878787878787878781c70726f746f2d3031352d7878787878787878787878787878"
    "787878781c70726f746f2d3031362d7878787878787878787878787878787878781c70726f746f2d3031372d7878"
    "787878787878787878787878787878781c70726f746f2d3031382d7878787878787878787878787878787878781c"
    "70726f746f2d3031392d7878787878787878787878787878787878780016000000170000000d002a002804030503"
    "0603080708080809080a080b080408050806040105010601030303010302040205020602002b0009080304030303"
    "020301002d00020101003300260024001d00200d79efe4671134be605e446ecdb85b1ab20cf0b98759d9a703e253"
    "f6ecac445a";
constexpr std::string_view kCurl =
    "1603010200010001fc03032e81d0bfa6cef0794e35aca70e19ef5a8498d8b8ddd77247d91fb006378433d8206e81"
    "7dd21b3f267020021b39fa9c9e3288917214b96e70785986d2c91973ccb0003e130213031301c02cc030009fcca9"
    "cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c0035002f"
    "00ff0100017500000014001200000f6170692e6578616d706c652e636f6d000b000403000102000a00160014001d"
    "0017001e00190018010001010102010301040010000e000c02683208687474702f312e3100160000001700000031"
    "0000000d002a0028040305030603080708080809080a080b08040805080604010501060103030301030204020502"
    "0602002b0009080304030303020301002d00020101003300260024001d0020be94af8d2c36217a80760aefa80d8d"
    "ab55dc2394236859fa725832dc28e36076001500ae00000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000";
constexpr std::string_view kPython =
    "1603010200010001fc030383e5daec7e89aff613208e66e51aa7882791771768a37a74b29a595c8252119120946a"
    "ebb7328405d417e258fecdb9b94fdf78604ad65f419b53e5dc36865072030024130213031301c02cc030c02bc02f"
    "cca9cca8c024c028c023c027009f009e006b006700ff0100018f00000013001100000e70792e6578616d706c652e"
    "6e6574000b000403000102000a00160014001d0017001e0019001801000101010201030104002300000010000e00"
    "0c02683208687474702f312e310016000000170000000d002a0028040305030603080708080809080a080b080408"
    "050806040105010601030303010302040205020602002b00050403040303002d00020101003300260024001d0020"
    "b495b69c90948c5a8a6399ea806c4eb138d29f3bcf2d2229329637423834f529001500cd00000000000000000000"
    "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000";

Bytes from_hex(std::string_view hex) {
  auto nibble = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  Bytes out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<std::uint8_t>(nibble(hex[i]) << 4 | nibble(hex[i + 1])));
  return out;
}

Bytes bytes_of(std::string_view s) {
  return {s.begin(), s.end()};
}

// A result with nothing but its status set.
ClientHello only(HelloStatus s) {
  ClientHello h;
  h.status = s;
  return h;
}

ClientHello parse(const Bytes& b) {
  return parse_client_hello(b);
}

ClientHello parse_prefix(const Bytes& b, std::size_t n) {
  return parse_client_hello(std::span<const std::uint8_t>(b).first(n));
}

// Appends TLS vectors and remembers where each length field went, by name.
struct Field {
  std::size_t at = 0;
  std::size_t width = 0;
};

class Writer {
 public:
  Bytes out;
  std::map<std::string, Field> fields;

  void u8(std::size_t v) { out.push_back(static_cast<std::uint8_t>(v)); }
  void u16(std::size_t v) {
    u8(v >> 8);
    u8(v);
  }
  void raw(const Bytes& b) { out.insert(out.end(), b.begin(), b.end()); }
  void raw(std::string_view s) { out.insert(out.end(), s.begin(), s.end()); }
  void open(std::string name, std::size_t width) {
    open_.push_back({std::move(name), {out.size(), width}});
    out.resize(out.size() + width);
  }
  void close() {
    auto [name, f] = open_.back();
    open_.pop_back();
    put(out, f, out.size() - f.at - f.width);
    fields[name] = f;
  }
  static void put(Bytes& b, Field f, std::size_t v) {
    for (std::size_t i = 0; i < f.width; ++i)
      b[f.at + i] = static_cast<std::uint8_t>(v >> (8 * (f.width - 1 - i)));
  }
  static std::size_t get(const Bytes& b, Field f) {
    std::size_t v = 0;
    for (std::size_t i = 0; i < f.width; ++i)
      v = v << 8 | b[f.at + i];
    return v;
  }

 private:
  std::vector<std::pair<std::string, Field>> open_;
};

// A ClientHello built field by field; extensions in the order added.
class HelloBuilder {
 public:
  std::size_t legacy_version = 0x0303;
  std::size_t session_id = 32;
  Bytes suites{0x13, 0x01, 0x13, 0x02, 0xc0, 0x2f};
  Bytes compression{0};
  bool extensions_block = true;
  Bytes trailer;                        // after the extensions, inside the message
  std::map<std::string, Field> fields;  // of the last message()/record() built

  HelloBuilder& ext(std::size_t type, std::function<void(Writer&)> data) {
    exts_.push_back({type, std::move(data)});
    return *this;
  }
  HelloBuilder& ext(std::size_t type, Bytes data) {
    return ext(type, [data](Writer& w) { w.raw(data); });
  }
  HelloBuilder& sni(std::string host) {
    return ext(0, [host](Writer& w) {
      w.open("sni_list", 2);
      w.u8(0);
      w.open("sni_name", 2);
      w.raw(host);
      w.close();
      w.close();
    });
  }
  HelloBuilder& alpn(std::vector<std::string> names) {
    return ext(16, [names](Writer& w) {
      w.open("alpn_list", 2);
      for (const auto& n : names) {
        w.open("alpn_name:" + n, 1);
        w.raw(n);
        w.close();
      }
      w.close();
    });
  }
  HelloBuilder& versions(std::vector<std::size_t> vs) {
    return ext(43, [vs](Writer& w) {
      w.open("versions", 1);
      for (auto v : vs)
        w.u16(v);
      w.close();
    });
  }

  // The handshake message: header and body.
  Bytes message() {
    Writer w;
    w.u8(1);
    w.open("handshake", 3);
    w.u16(legacy_version);
    w.raw(Bytes(32, 0x11));
    w.open("session_id", 1);
    w.raw(Bytes(session_id, 0x22));
    w.close();
    w.open("cipher_suites", 2);
    w.raw(suites);
    w.close();
    w.open("compression", 1);
    w.raw(compression);
    w.close();
    if (extensions_block) {
      w.open("extensions", 2);
      for (auto& [type, data] : exts_) {
        w.u16(type);
        w.open("ext:" + std::to_string(type), 2);
        data(w);
        w.close();
      }
      w.close();
    }
    w.raw(trailer);
    w.close();
    fields = w.fields;
    return w.out;
  }

  // The message in records whose fragments have the given sizes, the last taking the
  // rest; fields() are then offsets into the whole stream, plus "record" (the first).
  Bytes records(std::vector<std::size_t> sizes = {}) {
    const Bytes m = message();
    Bytes out;
    std::size_t at = 0;
    for (std::size_t i = 0; at < m.size(); ++i) {
      const std::size_t n = std::min(i < sizes.size() ? sizes[i] : m.size(), m.size() - at);
      Writer h;
      h.u8(22);
      h.u16(0x0301);
      h.u16(n);
      out.insert(out.end(), h.out.begin(), h.out.end());
      out.insert(out.end(), m.begin() + static_cast<std::ptrdiff_t>(at),
                 m.begin() + static_cast<std::ptrdiff_t>(at + n));
      at += n;
    }
    for (auto& [name, f] : fields)
      f.at += 5;
    fields["record"] = {3, 2};
    return out;
  }

 private:
  std::vector<std::pair<std::size_t, std::function<void(Writer&)>>> exts_;
};

HelloBuilder typical() {
  HelloBuilder b;
  b.sni("api.example.com").alpn({"h2", "http/1.1"}).versions({0x0304, 0x0303});
  return b;
}

Bytes record(std::uint8_t type, Bytes fragment) {
  Bytes r{type, 0x03, 0x03, static_cast<std::uint8_t>(fragment.size() >> 8),
          static_cast<std::uint8_t>(fragment.size())};
  r.insert(r.end(), fragment.begin(), fragment.end());
  return r;
}

Bytes operator+(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

void check_every_prefix_needs_more(const Bytes& hello) {
  for (std::size_t n = 0; n < hello.size(); ++n) {
    const ClientHello h = parse_prefix(hello, n);
    CAPTURE(n);
    REQUIRE(h.status == HelloStatus::need_more);
    REQUIRE(h.need > n);
    REQUIRE(h.need <= hello.size());  // the hint never overshoots what is really needed
  }
  CHECK(parse(hello).status == HelloStatus::ok);
}

}  // namespace

TEST_CASE("real ClientHellos: SNI, ALPN and versions as the clients sent them") {
  SUBCASE("openssl s_client, TLS 1.3, -alpn h2,http/1.1") {
    const ClientHello h = parse(from_hex(kOpensslH2));
    REQUIRE(h.status == HelloStatus::ok);
    CHECK(h.has_sni);
    CHECK(h.sni == "api.example.com");
    CHECK(h.has_alpn);
    CHECK(h.alpn == std::vector<std::string>{"h2", "http/1.1"});
    CHECK(h.legacy_version == 0x0303);
    CHECK(h.offers_tls13);
    CHECK(h.offers_alpn("h2"));
    CHECK(h.offers_alpn("http/1.1"));
    CHECK_FALSE(h.offers_alpn("h3"));
    CHECK_FALSE(h.offers_alpn("h"));
  }
  SUBCASE("openssl s_client -tls1_2: no supported_versions, empty session id") {
    const ClientHello h = parse(from_hex(kOpensslTls12));
    REQUIRE(h.status == HelloStatus::ok);
    CHECK(h.sni == "legacy.example.com");
    CHECK(h.alpn == std::vector<std::string>{"http/1.1"});
    CHECK_FALSE(h.offers_tls13);
  }
  SUBCASE("openssl s_client -max_send_frag 512: the hello spans two records") {
    const Bytes b = from_hex(kOpensslFragmented);
    REQUIRE(b[3] == 0x02);  // first record: 512 bytes, the rest in the second
    REQUIRE(b[4] == 0x00);
    const ClientHello h = parse(b);
    REQUIRE(h.status == HelloStatus::ok);
    CHECK(h.sni == "frag.example.com");
    REQUIRE(h.alpn.size() == 22);
    CHECK(h.alpn.front() == "h2");
    CHECK(h.alpn[2] == "proto-000-xxxxxxxxxxxxxxxxxx");
    CHECK(h.alpn.back() == "proto-019-xxxxxxxxxxxxxxxxxx");
  }
  SUBCASE("curl") {
    const ClientHello h = parse(from_hex(kCurl));
    REQUIRE(h.status == HelloStatus::ok);
    CHECK(h.sni == "api.example.com");
    CHECK(h.alpn == std::vector<std::string>{"h2", "http/1.1"});
    CHECK(h.offers_tls13);
  }
  SUBCASE("Python ssl") {
    const ClientHello h = parse(from_hex(kPython));
    REQUIRE(h.status == HelloStatus::ok);
    CHECK(h.sni == "py.example.net");
    CHECK(h.alpn == std::vector<std::string>{"h2", "http/1.1"});
    CHECK(h.offers_tls13);
  }
}

TEST_CASE("every prefix of a real hello is need_more with an honest hint; the whole is ok") {
  SUBCASE("one record") {
    check_every_prefix_needs_more(from_hex(kCurl));
  }
  SUBCASE("two records") {
    check_every_prefix_needs_more(from_hex(kOpensslFragmented));
  }
  SUBCASE("hand-built, header split over three records") {
    check_every_prefix_needs_more(typical().records({1, 2}));
  }
}

TEST_CASE("bytes after the ClientHello's last record are not looked at") {
  const Bytes hello = from_hex(kOpensslH2);
  const ClientHello alone = parse(hello);
  REQUIRE(alone.status == HelloStatus::ok);
  CHECK(parse(hello + record(20, {1})) == alone);               // ChangeCipherSpec
  CHECK(parse(hello + record(23, Bytes(100, 0xee))) == alone);  // early data
  CHECK(parse(hello + bytes_of("garbage")) == alone);
}

TEST_CASE("hand-built hellos: present and absent SNI and ALPN") {
  SUBCASE("both") {
    const ClientHello h = parse(typical().records());
    REQUIRE(h.status == HelloStatus::ok);
    CHECK(h.sni == "api.example.com");
    CHECK(h.alpn == std::vector<std::string>{"h2", "http/1.1"});
    CHECK(h.offers_tls13);
  }
  SUBCASE("no SNI") {
    HelloBuilder b;
    b.alpn({"h2"});
    const ClientHello h = parse(b.records());
    REQUIRE(h.status == HelloStatus::ok);
    CHECK_FALSE(h.has_sni);
    CHECK(h.sni.empty());
    CHECK(h.alpn == std::vector<std::string>{"h2"});
    CHECK_FALSE(h.offers_tls13);
  }
  SUBCASE("no ALPN") {
    HelloBuilder b;
    b.sni("x.test");
    const ClientHello h = parse(b.records());
    REQUIRE(h.status == HelloStatus::ok);
    CHECK(h.sni == "x.test");
    CHECK_FALSE(h.has_alpn);
    CHECK(h.alpn.empty());
    CHECK_FALSE(h.offers_alpn("http/1.1"));
  }
  SUBCASE("ALPN h2 only") {
    HelloBuilder b;
    b.sni("h2.test").alpn({"h2"});
    const ClientHello h = parse(b.records());
    REQUIRE(h.status == HelloStatus::ok);
    CHECK(h.offers_alpn("h2"));
    CHECK_FALSE(h.offers_alpn("http/1.1"));
  }
  SUBCASE("no extensions at all (a TLS 1.2-era hello)") {
    HelloBuilder b;
    b.extensions_block = false;
    b.session_id = 0;
    const ClientHello h = parse(b.records());
    REQUIRE(h.status == HelloStatus::ok);
    CHECK_FALSE(h.has_sni);
    CHECK_FALSE(h.has_alpn);
    CHECK(h.legacy_version == 0x0303);
  }
  SUBCASE("an empty extensions block") {
    HelloBuilder b;
    CHECK(parse(b.records()).status == HelloStatus::ok);
  }
  SUBCASE("a server_name entry of an unknown type beside the host_name") {
    HelloBuilder b;
    b.ext(0, from_hex("000e"
                      "0700037a7a7a"
                      "000005612e746573"));
    const ClientHello h = parse(b.records());
    REQUIRE(h.status == HelloStatus::ok);
    CHECK(h.sni == "a.tes");
  }
  SUBCASE("SNI of 255 bytes is taken as is, unvalidated") {
    HelloBuilder b;
    b.sni(std::string(254, 'a') + ",");
    const ClientHello h = parse(b.records());
    REQUIRE(h.status == HelloStatus::ok);
    CHECK(h.sni.size() == 255);
    CHECK(h.sni.back() == ',');
  }
}

TEST_CASE("a Chrome-shaped hello: GREASE, ECH outer, ALPS, a 1.2 KiB key share, padding") {
  HelloBuilder b;
  b.suites = from_hex("3a3a130113021303c02bc02f");
  b.ext(0x0a0a, Bytes{})
      .sni("www.example.com")
      .ext(0x0017, Bytes{})
      .ext(0xff01, Bytes{0})
      .ext(0x000a, from_hex("000a4a4a11ec001d00170018"))
      .ext(0x000b, from_hex("0100"))
      .ext(0x0023, Bytes{})
      .alpn({"h2", "http/1.1"})
      .ext(0x0005, from_hex("0100000000"))
      .ext(0x000d, from_hex("00080403080404010503"))
      .ext(0x0012, Bytes{})
      .ext(0x0033,
           [](Writer& w) {
             w.open("key_shares", 2);
             w.raw(from_hex("4a4a000100"));
             w.u16(0x11ec);
             w.u16(1216);
             w.raw(Bytes(1216, 0x5a));
             w.u16(0x001d);
             w.u16(32);
             w.raw(Bytes(32, 0x6b));
             w.close();
           })
      .ext(0x002d, from_hex("0101"))
      .versions({0x7a7a, 0x0304, 0x0303})
      .ext(0x001b, from_hex("020002"))
      .ext(0x4469, from_hex("0003026832"))
      .ext(0xfe0d, Bytes(250, 0x7e))
      .ext(0x1a1a, Bytes{0})
      .ext(0x0015, Bytes(200, 0));
  const ClientHello h = parse(b.records());
  REQUIRE(h.status == HelloStatus::ok);
  CHECK(h.sni == "www.example.com");
  CHECK(h.alpn == std::vector<std::string>{"h2", "http/1.1"});
  CHECK(h.offers_tls13);
}

TEST_CASE("reassembly across handshake records") {
  HelloBuilder b = typical();
  const ClientHello whole = parse(b.records());
  REQUIRE(whole.status == HelloStatus::ok);
  const std::size_t len = b.message().size();

  SUBCASE("two records, split at every offset") {
    for (std::size_t k = 1; k < len; ++k) {
      CAPTURE(k);
      REQUIRE(parse(b.records({k})) == whole);
    }
  }
  SUBCASE("three records, split at a grid of offsets") {
    for (std::size_t k = 1; k < len; k += 7)
      for (std::size_t j = 1; k + j < len; j += 5) {
        CAPTURE(k);
        CAPTURE(j);
        REQUIRE(parse(b.records({k, j})) == whole);
      }
  }
  SUBCASE("one byte per record") {
    const Bytes tiny = b.records(std::vector<std::size_t>(len, 1));
    REQUIRE(tiny.size() == 6 * len);
    CHECK(parse(tiny) == whole);
  }
  SUBCASE("a record of another type in the middle") {
    const Bytes first = b.records({40});
    const Bytes head(first.begin(), first.begin() + 45);
    const Bytes tail(first.begin() + 45, first.end());
    CHECK(parse(head + tail) == whole);
    for (std::uint8_t type : {20, 21, 23, 24}) {
      CAPTURE(type);
      CHECK(parse(head + record(type, {1, 0}) + tail).status == HelloStatus::malformed);
      // Decided on the record's first byte, before the rest arrives.
      CHECK(parse(head + Bytes{type}).status == HelloStatus::malformed);
    }
  }
  SUBCASE("a continuation record whose version is not 3.x") {
    Bytes split = b.records({40});
    split[45 + 1] = 0x02;
    CHECK(parse(split).status == HelloStatus::malformed);
  }
}

TEST_CASE("not_tls is decided on the first bytes that show it") {
  for (std::string_view s : {"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "SSH-2.0-OpenSSH_9.2p1\r\n",
                             "random text, not a handshake", "\x80\x2e\x01\x03\x01"}) {
    CAPTURE(s);
    const Bytes b = bytes_of(s);
    CHECK(parse(b).status == HelloStatus::not_tls);
    CHECK(parse_prefix(b, 1).status == HelloStatus::not_tls);
  }
  CHECK(parse(from_hex("1602")).status == HelloStatus::not_tls);          // record major 2
  CHECK(parse(from_hex("160303004a02")).status == HelloStatus::not_tls);  // a ServerHello
  const ClientHello h = parse(from_hex("17"));
  CHECK(h.status == HelloStatus::not_tls);
  CHECK(h == only(HelloStatus::not_tls));
}

TEST_CASE("need_more hints") {
  CHECK(parse({}).status == HelloStatus::need_more);
  CHECK(parse({}).need == 5);
  CHECK(parse(from_hex("1603")).need == 5);
  CHECK(parse(from_hex("1603010200")).need == 5 + 512);
  CHECK(parse(from_hex("160301020001")).need == 5 + 512);
  // The handshake header says 300 bytes, the record holds 100: at the record's end the
  // rest (204 bytes) needs one more header.
  const Bytes part = from_hex(
                         "1603010064"
                         "0100012c") +
                     Bytes(96, 0);
  CHECK(parse(part).status == HelloStatus::need_more);
  CHECK(parse(part).need == part.size() + 5 + 204);
}

TEST_CASE("each length field one too long or one too short is rejected") {
  HelloBuilder b = typical();
  const Bytes good = b.records();
  REQUIRE(parse(good).status == HelloStatus::ok);
  const auto fields = b.fields;
  REQUIRE(fields.size() == 15);
  for (const auto& entry : fields) {
    const std::string& name = entry.first;  // named, not bound: CAPTURE's lambda takes it
    const Field f = entry.second;
    for (int delta : {-1, +1}) {
      CAPTURE(name);
      CAPTURE(delta);
      Bytes bad = good;
      Writer::put(bad, f, Writer::get(good, f) + static_cast<std::size_t>(delta));
      // A handshake header claiming one byte more is a valid prefix: the byte could
      // come in the next record.
      const bool prefix = name == "handshake" && delta == +1;
      CHECK(parse(bad).status == (prefix ? HelloStatus::need_more : HelloStatus::malformed));
    }
  }
}

TEST_CASE("malformed hellos") {
  auto status = [](HelloBuilder& b) { return parse(b.records()).status; };
  using enum HelloStatus;

  SUBCASE("duplicate server_name extension") {
    HelloBuilder b;
    b.sni("a.test").sni("b.test");
    CHECK(status(b) == malformed);
  }
  SUBCASE("any duplicate extension, even an unknown one") {
    HelloBuilder b;
    b.ext(0x1234, Bytes{}).sni("a.test").ext(0x1234, Bytes{1});
    CHECK(status(b) == malformed);
  }
  SUBCASE("two host_name entries in one server_name") {
    HelloBuilder b;
    b.ext(0, from_hex("0011"
                      "000006612e74657374"
                      "000005622e746573"));
    CHECK(status(b) == malformed);
  }
  SUBCASE("SNI of 256 bytes") {
    HelloBuilder b;
    b.sni(std::string(256, 'a'));
    CHECK(status(b) == malformed);
  }
  SUBCASE("empty SNI host_name, empty server_name list") {
    HelloBuilder b;
    b.sni("");
    CHECK(status(b) == malformed);
    HelloBuilder c;
    c.ext(0, from_hex("0000"));
    CHECK(status(c) == malformed);
    HelloBuilder d;
    d.ext(0, Bytes{});
    CHECK(status(d) == malformed);
  }
  SUBCASE("an empty ALPN name, an empty ALPN list") {
    HelloBuilder b;
    b.alpn({"h2", ""});
    CHECK(status(b) == malformed);
    HelloBuilder c;
    c.ext(16, from_hex("0000"));
    CHECK(status(c) == malformed);
  }
  SUBCASE("supported_versions of odd length or empty") {
    HelloBuilder b;
    b.ext(43, from_hex("03030403"));
    CHECK(status(b) == malformed);
    HelloBuilder c;
    c.ext(43, from_hex("00"));
    CHECK(status(c) == malformed);
  }
  SUBCASE("pre_shared_key before another extension") {
    HelloBuilder b;
    b.ext(41, Bytes{1, 2, 3}).sni("a.test");
    CHECK(status(b) == malformed);
    HelloBuilder last;
    last.sni("a.test").ext(41, Bytes{1, 2, 3});
    CHECK(status(last) == ok);
  }
  SUBCASE("session id of 33 bytes") {
    HelloBuilder b;
    b.session_id = 33;
    CHECK(status(b) == malformed);
  }
  SUBCASE("cipher suites empty or of odd length") {
    HelloBuilder b;
    b.suites = {};
    CHECK(status(b) == malformed);
    b.suites = {0x13, 0x01, 0x13};
    CHECK(status(b) == malformed);
  }
  SUBCASE("no compression method") {
    HelloBuilder b;
    b.compression = {};
    CHECK(status(b) == malformed);
    b.compression = {1, 0};  // any non-empty list parses; the server picks
    CHECK(status(b) == ok);
  }
  SUBCASE("bytes after the extensions block, inside the message") {
    HelloBuilder b = typical();
    b.trailer = {0};
    CHECK(status(b) == malformed);
  }
  SUBCASE("legacy_version not 3.x") {
    HelloBuilder b;
    b.legacy_version = 0x0203;
    CHECK(status(b) == malformed);
  }
  SUBCASE("the hello's last record carries more than the hello") {
    HelloBuilder b = typical();
    const Bytes m = b.message();
    const Bytes over = record(22, m + Bytes{0x16});
    CHECK(parse(over).status == malformed);
    // Known from the record header, before the record is complete.
    CHECK(parse_prefix(over, 10).status == malformed);
  }
  SUBCASE("a continuation record that runs past the hello") {
    HelloBuilder b = typical();
    Bytes split = b.records({40}) + Bytes{0x16};
    const std::size_t second = 5 + 40;
    Writer::put(split, {second + 3, 2}, Writer::get(split, {second + 3, 2}) + 1);
    CHECK(parse(split).status == malformed);
    CHECK(parse_prefix(split, second + 5).status == malformed);
  }
  SUBCASE("zero-length and oversized records") {
    CHECK(parse(from_hex("1603010000")).status == malformed);
    CHECK(parse(from_hex("1603014001")).status == malformed);  // 2^14 + 1
  }
}

TEST_CASE("the size bound") {
  using enum HelloStatus;
  // A message of exactly kMaxClientHelloMessage bytes, grown by the padding extension.
  auto of_size = [](std::size_t total) {
    HelloBuilder b = typical();
    const std::size_t base = b.message().size() + 4;
    b.ext(21, Bytes(total - base, 0));
    REQUIRE(b.message().size() == total);
    return b;
  };
  HelloBuilder largest = of_size(kMaxClientHelloMessage);
  CHECK(parse(largest.records()).status == ok);
  // In 512-byte fragments it takes 32 records: exactly the peek bound.
  const Bytes in512 = largest.records(std::vector<std::size_t>(32, 512));
  CHECK(in512.size() == kMaxClientHelloBytes);
  CHECK(parse(in512).status == ok);
  // In 511-byte ones the last header would cross the bound: refused, not waited for.
  const Bytes in511 = largest.records(std::vector<std::size_t>(33, 511));
  CHECK(parse(in511).status == malformed);
  CHECK(parse_prefix(in511, 32 * (5 + 511)).status == malformed);

  HelloBuilder over = of_size(kMaxClientHelloMessage + 1);
  const Bytes big = over.records(std::vector<std::size_t>(2, 10000));
  CHECK(parse(big).status == malformed);
  CHECK(parse_prefix(big, 9).status == malformed);  // the handshake header says so
}

TEST_CASE("results are deterministic and non-ok results carry no data") {
  const Bytes b = from_hex(kCurl);
  CHECK(parse(b) == parse(b));
  for (std::size_t n : {std::size_t{0}, std::size_t{9}, std::size_t{200}, b.size() - 1}) {
    const ClientHello h = parse_prefix(b, n);
    CHECK(h.sni.empty());
    CHECK(h.alpn.empty());
    CHECK_FALSE(h.has_sni);
    CHECK(h.legacy_version == 0);
  }
  Bytes broken = b;
  broken[b.size() - 1] ^= 0xff;  // inside the padding extension: still ok
  CHECK(parse(broken).status == HelloStatus::ok);
  broken[9 + 2 + 32] = 33;  // the session id length
  const ClientHello h = parse(broken);
  CHECK(h.status == HelloStatus::malformed);
  CHECK(h == only(HelloStatus::malformed));
}
