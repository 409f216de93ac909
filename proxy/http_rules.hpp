// HTTP/1.1 proxy rules as pure functions on Beast headers: request framing checks
// (smuggling), hop-by-hop removal (RFC 9110 §7.6.1), Via (§7.6.3), loop detection,
// Host regeneration, keep-alive hints. No I/O.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/beast/http/fields.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/verb.hpp>

#include "error.hpp"

namespace upkeep {

namespace http = boost::beast::http;

inline constexpr std::string_view kViaToken = "upkeep";  // our Via pseudonym

// Framing checks Beast's parser does not make (it already refuses CL+TE and
// differing Content-Lengths): a request Transfer-Encoding must be exactly
// "chunked" (RFC 9112 §6.3: anything else cannot be framed reliably -> 400),
// header values must not hold control characters, a request must not carry
// more than one Host. Returns errc::ok or errc::bad_request.
errc check_request_framing(const http::request_header<>& req);

// True when a Via field value names our pseudonym ("1.1 upkeep").
bool has_own_via(const http::fields& f);

// Removes hop-by-hop fields: Connection and every field it names, Proxy-Connection,
// Keep-Alive, TE (except "trailers", which is kept as "TE: trailers"),
// Transfer-Encoding, Upgrade, Proxy-Authorization, Proxy-Authenticate (responses).
// keep_te_trailers: keep TE: trailers (requests only).
void strip_hop_by_hop(http::fields& f, bool keep_te_trailers);

// Appends "<version> upkeep" to Via (version "1.0" or "1.1" from the message received).
void add_via(http::fields& f, unsigned received_version);

// Rewrites a client request header for the upstream: target = path, version 1.1,
// Host = host_header, hop-by-hop removed, Via added. Body framing (Content-Length
// or chunked) is left for the serializer: call req.chunked(true) for a chunked body.
void prepare_upstream_request(http::request_header<>& req, std::string_view path,
                              std::string_view host_header);

// Rewrites an upstream response header for the client: hop-by-hop removed, Via
// added, version set to client_version, keep-alive set from client_keep_alive.
void prepare_downstream_response(http::response_header<>& res, unsigned client_version,
                                 bool client_keep_alive);

// Keep-Alive: timeout=N from a response, if present and sane.
std::optional<std::chrono::seconds> keep_alive_timeout(const http::fields& f);

// Beast's message::keep_alive() and chunked(), for a bare header: the Connection
// tokens against the version's default, and "chunked" as the final transfer coding.
bool header_keep_alive(const http::fields& f, unsigned version);
bool header_chunked(const http::fields& f);

// Appends each field as "Name: value\r\n", then the blank line that ends a head.
void append_fields(std::string& out, const http::fields& f);

// Beast's field for a lower-case name as HTTP/2 delivers it (http::field::unknown
// when Beast has none), what http::string_to_field would say: the names responses
// carry most are told by length and a compare, not by its hash lookup (~100
// instructions each, every header of every response).
http::field field_of_lowercase(std::string_view name) noexcept;

// Chunked framing (RFC 9112 §7.1) around one piece of a body of n bytes: size_line()
// goes before the bytes, tail after them: the CRLF that ends the chunk and, after
// the last piece, the zero-size terminator, `trailer_lines` (each "name: value\r\n")
// and the final CRLF. An empty piece gets no chunk: a zero-size chunk terminates.
class ChunkFrame {
 public:
  ChunkFrame(std::size_t n, bool last, std::string_view trailer_lines = {});
  std::string_view size_line() const noexcept { return {size_, size_len_}; }
  std::string tail;

 private:
  char size_[20];  // 16 hex digits and CRLF at most
  std::size_t size_len_ = 0;
};

// RFC 9110 §9.2.2 idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
bool is_idempotent(http::verb v) noexcept;
// What a trailer may not carry (RFC 9110 §6.5.1): framing, routing, the fields a
// recipient must know before the body, and hop-by-hop fields.
bool allowed_in_trailer(http::field f) noexcept;
// The client asked for trailers (`TE: trailers`, RFC 9110 §10.1.4).
bool accepts_trailers(const http::fields& f);

// Credentials check for access.auth: the Proxy-Authorization value ("Basic b64")
// against a list of "user:password" lines. Constant-time per candidate.
bool basic_credentials_ok(std::string_view proxy_authorization,
                          const std::vector<std::string>& user_pass_lines);

}  // namespace upkeep
