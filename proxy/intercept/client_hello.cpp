#include "intercept/client_hello.hpp"

#include <algorithm>
#include <array>
#include <bitset>

namespace upkeep::intercept {

namespace {

using Bytes = std::span<const std::uint8_t>;

constexpr std::uint8_t kHandshakeRecord = 22;
constexpr std::uint8_t kClientHelloType = 1;
constexpr std::size_t kRecordHeader = 5;
constexpr std::size_t kHandshakeHeader = 4;
constexpr std::size_t kMaxFragment = std::size_t{1} << 14;

constexpr std::uint16_t kExtServerName = 0;
constexpr std::uint16_t kExtAlpn = 16;
constexpr std::uint16_t kExtPreSharedKey = 41;
constexpr std::uint16_t kExtSupportedVersions = 43;

std::size_t be16(Bytes b, std::size_t at) {
  return std::size_t{b[at]} << 8 | b[at + 1];
}

// Every read is checked against what is left; a failed read leaves the reader as it
// was and the caller gives up on the whole hello.
class Reader {
 public:
  explicit Reader(Bytes s) : s_(s) {}
  bool empty() const { return s_.empty(); }

  bool take(std::size_t n, Bytes& out) {
    if (n > s_.size()) return false;
    out = s_.first(n);
    s_ = s_.subspan(n);
    return true;
  }
  bool u8(std::uint8_t& v) {
    Bytes b;
    if (!take(1, b)) return false;
    v = b[0];
    return true;
  }
  bool u16(std::uint16_t& v) {
    Bytes b;
    if (!take(2, b)) return false;
    v = static_cast<std::uint16_t>(be16(b, 0));
    return true;
  }
  // TLS vectors (RFC 8446 §3.4): a 1- or 2-byte big-endian length, then the bytes.
  bool vec8(Bytes& out) {
    std::uint8_t n = 0;
    return u8(n) && take(n, out);
  }
  bool vec16(Bytes& out) {
    std::uint16_t n = 0;
    return u16(n) && take(n, out);
  }

 private:
  Bytes s_;
};

std::string to_string(Bytes b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

// RFC 6066 §3. Entries of other name types are skipped: none is defined, and a
// future one may well share the opaque<1..2^16-1> shape.
bool parse_server_name(Bytes data, ClientHello& h) {
  Reader r(data);
  Bytes list;
  if (!r.vec16(list) || !r.empty() || list.empty()) return false;
  Reader entries(list);
  while (!entries.empty()) {
    std::uint8_t type = 0;
    Bytes name;
    if (!entries.u8(type) || !entries.vec16(name) || name.empty()) return false;
    if (type != 0) continue;
    if (h.has_sni || name.size() > 255) return false;
    h.sni = to_string(name);
    h.has_sni = true;
  }
  return true;
}

// RFC 7301 §3.1.
bool parse_alpn(Bytes data, ClientHello& h) {
  Reader r(data);
  Bytes list;
  if (!r.vec16(list) || !r.empty() || list.empty()) return false;
  Reader names(list);
  while (!names.empty()) {
    Bytes name;
    if (!names.vec8(name) || name.empty()) return false;
    h.alpn.push_back(to_string(name));
  }
  h.has_alpn = true;
  return true;
}

// RFC 8446 §4.2.1: versions<2..254>, two bytes each.
bool parse_supported_versions(Bytes data, ClientHello& h) {
  Reader r(data);
  Bytes list;
  if (!r.vec8(list) || !r.empty() || list.size() < 2 || list.size() % 2 != 0) return false;
  for (std::size_t i = 0; i < list.size(); i += 2)
    if (be16(list, i) == 0x0304) h.offers_tls13 = true;
  return true;
}

// The ClientHello body, RFC 8446 §4.1.2 (legacy fields as RFC 5246 §7.4.1.2 has them).
bool parse_body(Bytes body, ClientHello& h) {
  Reader r(body);
  Bytes random, session_id, suites, compression, extensions;
  if (!r.u16(h.legacy_version) || h.legacy_version >> 8 != 3) return false;
  if (!r.take(32, random) || !r.vec8(session_id) || session_id.size() > 32) return false;
  if (!r.vec16(suites) || suites.size() < 2 || suites.size() % 2 != 0) return false;
  if (!r.vec8(compression) || compression.empty()) return false;
  // TLS 1.2 and older may end here; TLS 1.3 hellos always carry supported_versions.
  if (r.empty()) return true;
  if (!r.vec16(extensions) || !r.empty()) return false;

  // One bit per extension type: duplicates cost O(1) to find, and 8 KiB of stack
  // beats an allocation per hello.
  std::bitset<65536> seen;
  bool after_psk = false;
  Reader exts(extensions);
  while (!exts.empty()) {
    std::uint16_t type = 0;
    Bytes data;
    if (!exts.u16(type) || !exts.vec16(data)) return false;
    if (seen.test(type) || after_psk) return false;
    seen.set(type);
    switch (type) {
      case kExtServerName:
        if (!parse_server_name(data, h)) return false;
        break;
      case kExtAlpn:
        if (!parse_alpn(data, h)) return false;
        break;
      case kExtSupportedVersions:
        if (!parse_supported_versions(data, h)) return false;
        break;
      case kExtPreSharedKey:
        after_psk = true;  // it binds everything before it, so must come last
        break;
      default:
        break;
    }
  }
  return true;
}

ClientHello with_status(HelloStatus status, std::size_t need = 0) {
  ClientHello h;
  h.status = status;
  h.need = need;
  return h;
}

}  // namespace

bool ClientHello::offers_alpn(std::string_view protocol) const {
  return std::find(alpn.begin(), alpn.end(), protocol) != alpn.end();
}

ClientHello parse_client_hello(Bytes bytes) {
  using enum HelloStatus;
  bytes = bytes.first(std::min(bytes.size(), kMaxClientHelloBytes));

  // Walk the handshake records (RFC 8446 §5.1) until the ClientHello is complete. The
  // checks run in the order of the bytes they need, so a verdict reached on a prefix
  // is the one any longer input gets.
  std::array<std::uint8_t, kHandshakeHeader> header{};
  std::size_t got = 0;      // handshake bytes seen in complete records
  std::size_t message = 0;  // header + body; 0 until the header is known
  std::size_t records = 0;
  std::size_t pos = 0;
  while (message == 0 || got < message) {
    // The least the rest of the message can take: one more header, if it is known.
    const std::size_t least = pos + kRecordHeader + (message != 0 ? message - got : 0);
    if (least > kMaxClientHelloBytes) return with_status(malformed);
    const Bytes rest = bytes.subspan(pos);
    const bool first = pos == 0;
    if (rest.empty()) return with_status(need_more, least);
    if (rest[0] != kHandshakeRecord) return with_status(first ? not_tls : malformed);
    if (rest.size() >= 2 && rest[1] != 3) return with_status(first ? not_tls : malformed);
    if (rest.size() < kRecordHeader) return with_status(need_more, least);
    const std::size_t length = be16(rest, 3);
    // Zero-length handshake fragments are forbidden.
    if (length == 0 || length > kMaxFragment) return with_status(malformed);
    if (pos + kRecordHeader + length > kMaxClientHelloBytes) return with_status(malformed);
    // The ClientHello must end on a record boundary: no fragment runs past it.
    if (message != 0 && got + length > message) return with_status(malformed);

    // The handshake header may itself be split across records.
    const Bytes fragment =
        rest.subspan(kRecordHeader, std::min(length, rest.size() - kRecordHeader));
    for (std::size_t i = 0; i < fragment.size() && got + i < kHandshakeHeader; ++i) {
      header[got + i] = fragment[i];
      if (got + i == 0 && fragment[i] != kClientHelloType) return with_status(not_tls);
      if (got + i + 1 == kHandshakeHeader) {
        message = kHandshakeHeader + (std::size_t{header[1]} << 16 | be16(header, 2));
        if (message > kMaxClientHelloMessage || got + length > message)
          return with_status(malformed);
      }
    }
    if (fragment.size() < length) return with_status(need_more, pos + kRecordHeader + length);
    ++records;
    got += length;
    pos += kRecordHeader + length;
  }

  ClientHello h;
  h.status = ok;
  bool well_formed = false;
  if (records == 1) {
    well_formed =
        parse_body(bytes.subspan(kRecordHeader + kHandshakeHeader, message - kHandshakeHeader), h);
  } else {
    std::vector<std::uint8_t> joined;
    joined.reserve(message);
    for (std::size_t at = 0; joined.size() < message;) {
      const std::size_t length = be16(bytes, at + 3);
      const Bytes fragment = bytes.subspan(at + kRecordHeader, length);
      joined.insert(joined.end(), fragment.begin(), fragment.end());
      at += kRecordHeader + length;
    }
    well_formed = parse_body(Bytes(joined).subspan(kHandshakeHeader), h);
  }
  return well_formed ? h : with_status(malformed);
}

}  // namespace upkeep::intercept
