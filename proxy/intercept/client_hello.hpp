// The peek-then-decide step of HTTPS interception: after answering CONNECT, the
// session recv(MSG_PEEK)s the client's first bytes and asks parse_client_hello whether
// they are a TLS ClientHello it may terminate (and for which SNI name and ALPN list),
// or something to relay blindly. Nothing is consumed and no TLS state exists yet, so
// the parser is pure: no I/O, no OpenSSL, bounded work, and the bytes are hostile.
//
// Contract of parse_client_hello(bytes), where `bytes` is everything peeked so far:
//  - not_tls: the first bytes cannot start a TLS handshake record carrying a
//    ClientHello (content type 22, record version major 3, handshake type 1;
//    RFC 8446 §5.1, §4). Decided from the first byte that shows it (usually the
//    first), so a plain HTTP request or any other protocol is relayed at once.
//  - need_more: `bytes` is a valid prefix; `need` (> bytes.size(), <=
//    kMaxClientHelloBytes) is the smallest total that can take parsing further.
//  - malformed: no well-formed ClientHello can start with these bytes. Strict where
//    the RFCs say MUST: record fragments 1..2^14 bytes, only consecutive handshake
//    records until the ClientHello ends, which is at a record boundary (RFC 8446
//    §5.1); every length consistent (§4.1.2, §3.4); no duplicate extension (§4.2);
//    pre_shared_key last (§4.2.11); server_name per RFC 6066 §3 with at most one
//    host_name, 1..255 bytes; ALPN per RFC 7301 §3.1, no empty name;
//    supported_versions per RFC 8446 §4.2.1. Everything else is skipped unread, so
//    GREASE (RFC 8701), padding, ECH outer hellos and unknown extensions pass.
//  - ok: the fields below are filled; bytes after the ClientHello's last record
//    (ChangeCipherSpec, early data) are not looked at.
// For any status but ok, every field except status and need is left at its default.
// A terminal status (not_tls, malformed, ok) of a prefix is also that of any longer
// input. Never throws, except std::bad_alloc for the few strings it copies.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace upkeep::intercept {

// The largest ClientHello handshake message (4-byte header included) accepted: one
// full record's plaintext (2^14, RFC 8446 §5.1). Real hellos are 0.2-2 KiB, and
// post-quantum key shares (X25519MLKEM768, 1.2 KiB) plus ECH still leave room.
inline constexpr std::size_t kMaxClientHelloMessage = std::size_t{1} << 14;

// How much a peek may take: that message fragmented into records of 512 bytes, the
// smallest RFC 6066 max_fragment_length (and OpenSSL's max_send_frag floor), so 32
// record headers. A hello whose records would take more is refused (malformed) as soon
// as that is certain, not waited for; finer fragments of a smaller hello are fine.
inline constexpr std::size_t kMaxClientHelloBytes = kMaxClientHelloMessage + 5 * 32;

enum class HelloStatus { need_more, not_tls, malformed, ok };

struct ClientHello {
  HelloStatus status = HelloStatus::need_more;
  std::size_t need = 0;  // need_more only: total bytes wanted before trying again (a hint)
  // server_name's host_name as sent, raw bytes (1..255 of them; "" when absent). Not
  // validated: the caller runs it through normalize_host (host_name.hpp).
  std::string sni;
  bool has_sni = false;
  std::vector<std::string> alpn;  // in offer order, each 1..255 bytes; empty when absent
  bool has_alpn = false;
  std::uint16_t legacy_version = 0;  // ClientHello.legacy_version (0x0303 for TLS 1.2/1.3)
  bool offers_tls13 = false;         // supported_versions lists 0x0304

  bool offers_alpn(std::string_view protocol) const;
  bool operator==(const ClientHello&) const = default;
};

// `bytes`: the peeked stream from its first byte. Reads at most kMaxClientHelloBytes
// of it; see the contract above.
ClientHello parse_client_hello(std::span<const std::uint8_t> bytes);

}  // namespace upkeep::intercept
