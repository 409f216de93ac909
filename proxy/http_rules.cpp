#include "http_rules.hpp"

#include <charconv>

#include "text.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace upkeep {

namespace {

bool is_ows(char c) noexcept {
  return c == ' ' || c == '\t';
}

std::string_view trim_ows(std::string_view s) noexcept {
  while (!s.empty() && is_ows(s.front()))
    s.remove_prefix(1);
  while (!s.empty() && is_ows(s.back()))
    s.remove_suffix(1);
  return s;
}

std::string_view sv(boost::beast::string_view s) noexcept {
  return {s.data(), s.size()};
}

struct FieldRange {
  http::fields::const_iterator b, e;
  http::fields::const_iterator begin() const { return b; }
  http::fields::const_iterator end() const { return e; }
};

FieldRange values_of(const http::fields& f, http::field name) {
  auto [b, e] = f.equal_range(name);
  return {b, e};
}

bool is_tchar(char c) noexcept {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

// RFC 9110 §5.5: field values are VCHAR / obs-text / SP / HTAB. NUL, CR, LF and
// the other controls are what header-injection and request-splitting ride on.
bool has_forbidden_ctl(std::string_view v) noexcept {
  return std::any_of(v.begin(), v.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return (u < 0x20 && c != '\t') || u == 0x7f;
  });
}

// Splits a comma-separated list, skipping empty elements (RFC 9110 §5.6.1).
// Commas inside a parenthesised comment do not split (Via carries comments).
template <class F>
void for_each_list_element(std::string_view v, F&& fn) {
  size_t start = 0;
  int depth = 0;
  for (size_t i = 0; i <= v.size(); ++i) {
    if (i < v.size()) {
      char c = v[i];
      if (c == '(') ++depth;
      if (c == ')' && depth > 0) --depth;
      if (c != ',' || depth > 0) continue;
    }
    auto elem = trim_ows(v.substr(start, i - start));
    if (!elem.empty()) fn(elem);
    start = i + 1;
  }
}

// Connection may name any field, but stripping the ones that frame or address
// the message would let a client rewrite how the next hop reads it.
bool protected_from_connection(std::string_view name) noexcept {
  return iequals(name, "host") || iequals(name, "content-length");
}

std::string via_version(unsigned v) {
  unsigned major = v / 10, minor = v % 10;
  // RFC 9110 §7.6.3 uses the bare major version for HTTP/2 and later.
  if (major >= 2 && minor == 0) return std::to_string(major);
  return std::to_string(major) + '.' + std::to_string(minor);
}

int b64_value(char c) noexcept {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

// Strict RFC 4648 §4: padded, no whitespace, no stray bits in the last group.
std::optional<std::string> b64_decode(std::string_view in) {
  if (in.empty() || in.size() % 4 != 0) return std::nullopt;
  size_t pad = 0;
  if (in.back() == '=') ++pad;
  if (in.size() >= 2 && in[in.size() - 2] == '=') ++pad;
  std::string out;
  out.reserve(in.size() / 4 * 3);
  for (size_t i = 0; i < in.size(); i += 4) {
    bool last = i + 4 == in.size();
    std::array<int, 4> q{};
    for (size_t j = 0; j < 4; ++j) {
      if (last && j >= 4 - pad) {
        q[j] = 0;
        continue;
      }
      q[j] = b64_value(in[i + j]);
      if (q[j] < 0) return std::nullopt;
    }
    uint32_t n = (static_cast<uint32_t>(q[0]) << 18) | (static_cast<uint32_t>(q[1]) << 12) |
                 (static_cast<uint32_t>(q[2]) << 6) | static_cast<uint32_t>(q[3]);
    out += static_cast<char>((n >> 16) & 0xff);
    if (last && pad == 2) {
      if ((n & 0xffff) != 0) return std::nullopt;
      break;
    }
    out += static_cast<char>((n >> 8) & 0xff);
    if (last && pad == 1) {
      if ((n & 0xff) != 0) return std::nullopt;
      break;
    }
    out += static_cast<char>(n & 0xff);
  }
  return out;
}

// Time depends only on the lengths, never on where the first difference is.
bool constant_time_equal(std::string_view a, std::string_view b) noexcept {
  size_t n = std::max(a.size(), b.size());
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  for (size_t i = 0; i < n; ++i) {
    auto x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0u;
    auto y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0u;
    diff |= x ^ y;
  }
  return diff == 0;
}

}  // namespace

errc check_request_framing(const http::request_header<>& req) {
  size_t hosts = 0, te_fields = 0, cl_fields = 0;
  for (const auto& f : req) {
    std::string_view name = sv(f.name_string());
    std::string_view value = sv(f.value());
    if (name.empty() || !std::all_of(name.begin(), name.end(), is_tchar)) return errc::bad_request;
    if (has_forbidden_ctl(value)) return errc::bad_request;
    switch (f.name()) {
      case http::field::host: {
        ++hosts;
        auto h = trim_ows(value);
        if (std::any_of(h.begin(), h.end(), is_ows)) return errc::bad_request;
        break;
      }
      case http::field::transfer_encoding:
        // RFC 9112 §6.3: only a final "chunked" frames a request; anything else
        // (other codings, lists, parameters, repeats) is read differently by
        // different hops, which is what request smuggling exploits.
        ++te_fields;
        if (!iequals(trim_ows(value), "chunked")) return errc::bad_request;
        break;
      case http::field::content_length: {
        ++cl_fields;
        auto v = trim_ows(value);
        if (v.empty() || v.size() > 19 ||
            !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; })) {
          return errc::bad_request;
        }
        break;
      }
      default:
        break;
    }
  }
  // RFC 9112 §3.2: more than one Host is a 400, and so is its absence in HTTP/1.1.
  if (hosts > 1 || (hosts == 0 && req.version() >= 11)) return errc::bad_request;
  // Repeated Content-Length, even with equal values, is refused as nginx does.
  if (te_fields > 1 || cl_fields > 1) return errc::bad_request;
  if (te_fields > 0 && cl_fields > 0) return errc::bad_request;
  // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing.
  if (te_fields > 0 && req.version() < 11) return errc::bad_request;
  return errc::ok;
}

bool has_own_via(const http::fields& f) {
  bool found = false;
  for (const auto& fld : values_of(f, http::field::via)) {
    auto value = sv(fld.value());
    // An unclosed comment would hide every later entry from a comment-aware split
    // (and our own appended entry from the next upkeep): split on every comma then.
    int depth = 0;
    for (char c : value)
      depth += c == '(' ? 1 : (c == ')' && depth > 0 ? -1 : 0);
    if (depth != 0) {
      std::size_t start = 0;
      while (start <= value.size()) {
        auto comma = value.find(',', start);
        auto entry =
            trim_ows(value.substr(start, comma == value.npos ? value.npos : comma - start));
        auto sp = entry.find_first_of(" \t");
        if (sp != std::string_view::npos) {
          auto rest = trim_ows(entry.substr(sp));
          if (iequals(rest.substr(0, rest.find_first_of(" \t(")), kViaToken)) found = true;
        }
        if (comma == value.npos) break;
        start = comma + 1;
      }
      continue;
    }
    for_each_list_element(value, [&found](std::string_view entry) {
      // entry = received-protocol RWS received-by [ RWS comment ]
      auto sp = entry.find_first_of(" \t");
      if (sp == std::string_view::npos) return;
      auto rest = trim_ows(entry.substr(sp));
      auto end = rest.find_first_of(" \t(");
      if (iequals(rest.substr(0, end), kViaToken)) found = true;
    });
  }
  return found;
}

namespace {

bool is_hop_by_hop(http::field name) noexcept {
  switch (name) {
    case http::field::connection:
    case http::field::proxy_connection:
    case http::field::keep_alive:
    case http::field::te:
    case http::field::transfer_encoding:
    case http::field::upgrade:
    case http::field::proxy_authorization:
    case http::field::proxy_authenticate:
      return true;
    default:
      return false;
  }
}

}  // namespace

// Two passes over the fields in order, not a lookup in Beast's name index per
// field name: the index compares names as strings, and eight lookups cost more
// than reading the whole head.
void strip_hop_by_hop(http::fields& f, bool keep_te_trailers) {
  std::vector<std::string> named;
  bool te_trailers = false;
  for (const auto& fld : f) {
    if (fld.name() == http::field::connection) {
      for_each_list_element(sv(fld.value()), [&named](std::string_view tok) {
        if (!protected_from_connection(tok)) named.push_back(to_ascii_lower(tok));
      });
    } else if (keep_te_trailers && fld.name() == http::field::te) {
      for_each_list_element(sv(fld.value()), [&te_trailers](std::string_view tok) {
        auto semi = tok.find(';');
        if (iequals(trim_ows(tok.substr(0, semi)), "trailers")) te_trailers = true;
      });
    }
  }
  for (auto it = f.begin(); it != f.end();) {
    const std::string_view name = sv(it->name_string());
    const bool listed = std::any_of(named.begin(), named.end(),
                                    [name](const std::string& n) { return iequals(n, name); });
    if (is_hop_by_hop(it->name()) || listed) {
      it = f.erase(it);
    } else {
      ++it;
    }
  }
  // "trailers" is the one TE value an end-to-end request still needs (gRPC,
  // and HTTP/2 permits exactly this value).
  if (te_trailers) f.set(http::field::te, "trailers");
}

void add_via(http::fields& f, unsigned received_version) {
  // Most messages come straight from a client or an origin: no Via yet, and the
  // entry is one of three constants.
  static constexpr std::string_view k10 = "1.0 upkeep", k11 = "1.1 upkeep", k2 = "2 upkeep";
  static_assert(k10.ends_with(kViaToken) && k11.ends_with(kViaToken) && k2.ends_with(kViaToken));
  if (f.find(http::field::via) == f.end()) {
    const std::string_view own = received_version == 11   ? k11
                                 : received_version == 10 ? k10
                                 : received_version == 20 ? k2
                                                          : std::string_view{};
    if (!own.empty()) {
      f.insert(http::field::via, own);
      return;
    }
  }
  // One combined field: equivalent per RFC 9110 §5.3, and some origins read only
  // the first Via line.
  std::string v;
  for (const auto& fld : values_of(f, http::field::via)) {
    auto val = trim_ows(sv(fld.value()));
    if (val.empty()) continue;
    if (!v.empty()) v += ", ";
    v += val;
  }
  if (!v.empty()) v += ", ";
  v += via_version(received_version);
  v += ' ';
  v += kViaToken;
  f.set(http::field::via, v);
}

void prepare_upstream_request(http::request_header<>& req, std::string_view path,
                              std::string_view host_header) {
  strip_hop_by_hop(req, true);
  add_via(req, req.version());
  req.target(path);
  req.version(11);
  req.set(http::field::host, host_header);
}

void prepare_downstream_response(http::response_header<>& res, unsigned client_version,
                                 bool client_keep_alive) {
  strip_hop_by_hop(res, false);
  add_via(res, res.version());
  res.version(client_version);
  // Connection is gone after the strip, so only the non-default case needs a
  // token: 1.0 closes unless told "keep-alive", 1.1 stays open unless told "close".
  if (client_version < 11 && client_keep_alive) res.set(http::field::connection, "keep-alive");
  if (client_version >= 11 && !client_keep_alive) res.set(http::field::connection, "close");
}

std::optional<std::chrono::seconds> keep_alive_timeout(const http::fields& f) {
  // A day is far past any idle_timeout; larger values are noise, not hints.
  constexpr long kMax = 86400;
  std::optional<std::chrono::seconds> out;
  for (const auto& fld : values_of(f, http::field::keep_alive)) {
    for_each_list_element(sv(fld.value()), [&out](std::string_view param) {
      if (out) return;
      auto eq = param.find('=');
      if (eq == std::string_view::npos || !iequals(trim_ows(param.substr(0, eq)), "timeout"))
        return;
      auto v = trim_ows(param.substr(eq + 1));
      if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
      if (v.empty() || v.size() > 6 ||
          !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return;
      }
      long n = std::stol(std::string(v));
      // timeout=0 would make every pooled connection unusable; treat it as no hint.
      if (n >= 1 && n <= kMax) out = std::chrono::seconds(n);
    });
  }
  return out;
}

bool header_keep_alive(const http::fields& f, unsigned version) {
  bool close = false;
  bool keep_alive = false;
  for (const auto& fld : values_of(f, http::field::connection)) {
    for_each_list_element(sv(fld.value()), [&](std::string_view tok) {
      if (iequals(tok, "close")) close = true;
      if (iequals(tok, "keep-alive")) keep_alive = true;
    });
  }
  return version >= 11 ? !close : keep_alive && !close;
}

bool header_chunked(const http::fields& f) {
  std::string_view last;
  for (const auto& fld : values_of(f, http::field::transfer_encoding)) {
    for_each_list_element(sv(fld.value()), [&last](std::string_view tok) { last = tok; });
  }
  auto semi = last.find(';');
  return iequals(trim_ows(last.substr(0, semi == std::string_view::npos ? last.size() : semi)),
                 "chunked");
}

void append_fields(std::string& out, const http::fields& f) {
  for (const auto& fld : f) {
    out += fld.name_string();
    out += ": ";
    out += fld.value();
    out += "\r\n";
  }
  out += "\r\n";
}

ChunkFrame::ChunkFrame(std::size_t n, bool last, std::string_view trailer_lines) {
  if (n > 0) {
    auto [end, ec] = std::to_chars(size_, size_ + 16, n, 16);
    end[0] = '\r';
    end[1] = '\n';
    size_len_ = static_cast<std::size_t>(end + 2 - size_);
    tail = "\r\n";
  }
  if (last) {
    tail += "0\r\n";
    tail += trailer_lines;
    tail += "\r\n";
  }
}

bool allowed_in_trailer(http::field f) noexcept {
  switch (f) {
    case http::field::content_length:
    case http::field::transfer_encoding:
    case http::field::content_type:
    case http::field::content_encoding:
    case http::field::content_range:
    case http::field::host:
    case http::field::connection:
    case http::field::keep_alive:
    case http::field::proxy_connection:
    case http::field::te:
    case http::field::trailer:
    case http::field::upgrade:
    case http::field::authorization:
    case http::field::set_cookie:
    case http::field::cache_control:
    case http::field::expect:
    case http::field::via:
      return false;
    default:
      return true;
  }
}

bool accepts_trailers(const http::fields& f) {
  bool yes = false;
  for (const auto& fld : values_of(f, http::field::te)) {
    for_each_list_element(sv(fld.value()), [&yes](std::string_view tok) {
      auto semi = tok.find(';');
      if (iequals(trim_ows(tok.substr(0, semi)), "trailers")) yes = true;
    });
  }
  return yes;
}

bool is_idempotent(http::verb v) noexcept {
  switch (v) {
    case http::verb::get:
    case http::verb::head:
    case http::verb::options:
    case http::verb::trace:
    case http::verb::put:
    case http::verb::delete_:
      return true;
    default:
      return false;
  }
}

bool basic_credentials_ok(std::string_view proxy_authorization,
                          const std::vector<std::string>& user_pass_lines) {
  auto v = trim_ows(proxy_authorization);
  auto sp = v.find(' ');
  if (sp == std::string_view::npos || !iequals(v.substr(0, sp), "basic")) return false;
  auto decoded = b64_decode(trim_ows(v.substr(sp + 1)));
  if (!decoded || decoded->find(':') == std::string::npos) return false;
  bool ok = false;
  // Every candidate is compared, so the time does not reveal which line matched.
  for (const auto& line : user_pass_lines) {
    std::string_view cand = line;
    if (!cand.empty() && cand.back() == '\r') cand.remove_suffix(1);
    if (cand.empty()) continue;
    ok |= constant_time_equal(*decoded, cand);
  }
  return ok;
}

http::field field_of_lowercase(std::string_view n) noexcept {
  using F = http::field;
  switch (n.size()) {
    case 3:
      if (n == "age") return F::age;
      if (n == "via") return F::via;
      break;
    case 4:
      if (n == "date") return F::date;
      if (n == "etag") return F::etag;
      if (n == "vary") return F::vary;
      if (n == "link") return F::link;
      break;
    case 6:
      if (n == "server") return F::server;
      break;
    case 7:
      if (n == "expires") return F::expires;
      break;
    case 8:
      if (n == "location") return F::location;
      break;
    case 10:
      if (n == "set-cookie") return F::set_cookie;
      break;
    case 12:
      if (n == "content-type") return F::content_type;
      break;
    case 13:
      if (n == "cache-control") return F::cache_control;
      if (n == "accept-ranges") return F::accept_ranges;
      if (n == "last-modified") return F::last_modified;
      break;
    case 14:
      if (n == "content-length") return F::content_length;
      break;
    case 16:
      if (n == "content-encoding") return F::content_encoding;
      break;
    default:
      break;
  }
  return http::string_to_field(n);
}

}  // namespace upkeep
