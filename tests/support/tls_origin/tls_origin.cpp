// tls_origin: a TLS HTTP/1.1 origin for upkeep's integration tests that decides exactly
// which TLS records leave in which send(), and when.
//
// One thread, poll(), non-blocking sockets. Every SSL works on a memory BIO pair and the
// loop moves bytes between those and the socket itself, so a session ticket, a KeyUpdate
// or a close_notify goes out at a chosen moment and in a chosen write. Bound to
// 127.0.0.1; every event is one JSON object a line on stdout, flushed, so a test can wait
// on it (upkeep_test/tls_origin.py).
//
//   tls_origin --cert FILE --key FILE [--port 0] [--tls-min 1.2|1.3] [--tls-max 1.2|1.3]
//              [--tickets N] [--ticket-delay-ms N] [--key-update-ms N]
//              [--close-notify-after N] [--idle-close-ms N]
//
// ALPN: "http/1.1" or none; an offer without http/1.1 fails with no_application_protocol.
// Paths: /ok?size=N  /chunked?size=N&chunk=K  /trailers?size=N&chunk=K
//        /upgrade-advert?size=N  /close?size=N  /echo   (anything else: 404)
// Events: listening accepted handshake tls_failed tls_error request response_done
//         ticket_sent key_update_sent close_notify_sent discarded bad_request closed exit
// Their fields, and what each mode does: tests/support/upkeep_test/tls_origin.py.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;
using Headers = std::vector<std::pair<std::string, std::string>>;

// Below this much unsent ciphertext more of a response is encrypted, so a large body or
// a client that stopped reading does not pile up in memory.
constexpr size_t kWriteHigh = 256 * 1024;
// Decrypted input not yet parsed (pipelined requests) above which the socket is not read.
constexpr size_t kReadHigh = 1024 * 1024;
constexpr size_t kMaxHead = 64 * 1024;
constexpr size_t kRecord = 16384;
// After our FIN the socket is drained this long, so late bytes from the peer do not turn
// the close into an RST that could destroy a response it has not read yet.
constexpr auto kLinger = std::chrono::seconds(2);
constexpr auto kHandshakeTimeout = std::chrono::seconds(10);

struct Options {
  std::string cert, key;
  int64_t port = 0, tickets = -1, ticket_delay_ms = -1, key_update_ms = -1;
  int64_t close_notify_after = 0, idle_close_ms = -1;
  int tls_min = TLS1_2_VERSION, tls_max = TLS1_3_VERSION;
};

Options g_opt;
int g_signal_pipe[2] = {-1, -1};

// ---- events -----------------------------------------------------------------------------

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (unsigned char ch : s) {
    // Bytes >= 0x80 become code points of the same value: the line stays valid JSON
    // whatever a client put in a header.
    char esc[8];
    std::snprintf(esc, sizeof esc, "\\u%04x", ch);
    if (ch < 0x20 || ch >= 0x7f || ch == '"' || ch == '\\') {
      out += esc;
    } else {
      out += static_cast<char>(ch);
    }
  }
  out += '"';
}

class Event {
 public:
  explicit Event(std::string_view name) {
    out_ = "{\"event\":";
    append_json_string(out_, name);
  }
  Event(std::string_view name, uint64_t conn) : Event(name) { num("conn", conn); }
  Event& num(std::string_view key, uint64_t v) { return raw(key, std::to_string(v)); }
  Event& str(std::string_view key, std::string_view v) {
    raw(key, "");
    append_json_string(out_, v);
    return *this;
  }
  Event& raw(std::string_view key, std::string_view json) {
    (out_ += ",\"").append(key).append("\":").append(json);  // keys are plain ASCII
    return *this;
  }
  void emit() {
    out_ += "}\n";
    std::fwrite(out_.data(), 1, out_.size(), stdout);
    std::fflush(stdout);
  }

 private:
  std::string out_;
};

std::string json_pairs(const Headers& headers) {
  std::string out = "[";
  for (const auto& [name, value] : headers) {
    out += out.size() > 1 ? ",[" : "[";
    append_json_string(out, name);
    append_json_string(out += ',', value);
    out += ']';
  }
  return out + "]";
}

std::string ssl_errors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    out += (out.empty() ? "" : "; ") + std::string(buf);
  }
  return out;
}

// ---- the body pattern (tests/support/upkeep_test/patterns.py) ----------------------------

constexpr uint64_t kLine = 32;

void append_pattern(std::string& dst, uint64_t offset, size_t n) {
  while (n > 0) {
    uint64_t line_start = offset - offset % kLine;
    char line[48];  // 32 bytes until offsets reach 10^10, far past any test body
    std::snprintf(line, sizeof line, "%010llu upkeep-test-pattern.\n",
                  static_cast<unsigned long long>(line_start));
    size_t from = static_cast<size_t>(offset - line_start);
    size_t take = std::min<size_t>(kLine - from, n);
    dst.append(line + from, take);
    offset += take;
    n -= take;
  }
}

// ---- connections ------------------------------------------------------------------------

struct EvpDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

enum class Body { none, length, chunk_size, chunk_data, chunk_crlf, trailer };

struct Request {
  std::string method, target, path, query;
  bool keep_alive = true;
  Body body = Body::none;
  uint64_t left = 0;  // bytes of the Content-Length body, or of this chunk, still to come
  uint64_t body_bytes = 0;
  std::unique_ptr<EVP_MD_CTX, EvpDeleter> sha{EVP_MD_CTX_new()};
};

// A response produced a record at a time, so it can be as large as a test likes.
struct Response {
  int status = 200;
  std::string head;
  bool head_only = false, chunked = false;
  std::optional<std::string> text;  // the body when it is not the pattern
  uint64_t size = 0, off = 0, chunk = 4096, chunk_left = 0;
  std::string trailer;  // "Name: value\r\n" lines after the last chunk
  bool head_done = false, finished = false;

  uint64_t total() const { return text ? text->size() : size; }
  void body_bytes(std::string& dst, size_t n) {
    if (text) {
      dst.append(*text, static_cast<size_t>(off), n);
    } else {
      append_pattern(dst, off, n);
    }
    off += n;
  }
  // Appends the next piece of the response to dst until dst holds about `budget` bytes.
  void fill(std::string& dst, size_t budget) {
    if (!head_done) {
      dst += head;
      head_done = true;
      finished = head_only;
    }
    while (!finished && dst.size() < budget) {
      uint64_t room = budget - dst.size();
      if (!chunked) {
        body_bytes(dst, static_cast<size_t>(std::min(room, total() - off)));
        finished = off == total();
      } else if (chunk_left == 0 && off == total()) {
        dst += "0\r\n" + trailer + "\r\n";
        finished = true;
      } else if (chunk_left == 0) {
        chunk_left = std::min(chunk, total() - off);
        char line[32];
        std::snprintf(line, sizeof line, "%llx\r\n", static_cast<unsigned long long>(chunk_left));
        dst += line;
      } else {
        size_t take = static_cast<size_t>(std::min(room, chunk_left));
        body_bytes(dst, take);
        chunk_left -= take;
        if (chunk_left == 0) dst += "\r\n";
      }
    }
  }
};

// open: serving requests. half_closed: our close_notify went out with no FIN (the
// hypercorn case); input is decrypted and discarded. closing: flushing before our FIN.
// lingering: FIN sent, draining until the peer's FIN or kLinger.
enum class State { handshake, open, half_closed, closing, lingering, closed };

struct Conn {
  uint64_t id = 0;
  int fd = -1;
  SSL* ssl = nullptr;
  BIO* rbio = nullptr;  // both BIOs are owned by ssl
  BIO* wbio = nullptr;
  State state = State::handshake;
  bool tls13 = false, peer_eof = false, want_pollout = false;

  std::string out;  // ciphertext not yet sent
  size_t out_off = 0;
  uint64_t queued = 0, sent = 0;  // bytes ever put into out / ever sent
  // Where our close_notify record sits in the byte stream, until the send() that carries
  // its last byte has been reported.
  std::optional<std::pair<uint64_t, uint64_t>> alert;
  std::string alert_reason;

  std::string in;  // decrypted, not yet parsed
  std::optional<Request> req;
  std::optional<Response> resp;
  uint64_t requests = 0;
  bool close_after = false;  // the current response is the last one
  bool reported = false;     // "closed" emitted
  std::string close_by = "server", close_reason;

  Clock::time_point deadline;  // handshake or linger end
  std::optional<Clock::time_point> ticket_at, key_update_at, idle_at;

  ~Conn() {
    if (ssl != nullptr) SSL_free(ssl);
    if (fd >= 0) ::close(fd);
  }
  size_t pending() const { return out.size() - out_off; }
  bool idle() const { return state == State::open && !req && !resp && in.empty() && !pending(); }
};

std::map<uint64_t, std::unique_ptr<Conn>> g_conns;

void report_closed(Conn& c, std::string_view by, std::string_view reason) {
  if (c.reported) return;
  c.reported = true;
  Event("closed", c.id).str("by", by).str("reason", reason).num("requests", c.requests).emit();
}

void abort_conn(Conn& c, std::string_view by, std::string_view reason) {
  report_closed(c, by, reason);
  c.state = State::closed;
}

void tls_error(Conn& c, std::string_view what) {
  Event("tls_error", c.id).str("what", std::string(what) + ": " + ssl_errors()).emit();
  abort_conn(c, "server", "tls_error");
}

// Moves what OpenSSL wrote into the memory BIO to the send queue. Nothing reaches the
// socket before send_out, which is what lets records be grouped into one send().
void pump(Conn& c) {
  char buf[16384];
  for (int n; (n = BIO_read(c.wbio, buf, sizeof buf)) > 0;) {
    c.out.append(buf, static_cast<size_t>(n));
    c.queued += static_cast<uint64_t>(n);
  }
}

bool send_out(Conn& c) {
  while (c.pending() > 0) {
    ssize_t n = ::send(c.fd, c.out.data() + c.out_off, c.pending(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      c.want_pollout = true;
      return true;
    }
    if (n <= 0) {
      abort_conn(c, "peer", "send_error");
      return false;
    }
    uint64_t begin = c.sent;
    c.sent += static_cast<uint64_t>(n);
    c.out_off += static_cast<size_t>(n);
    if (c.alert && c.sent >= c.alert->second) {
      Event("close_notify_sent", c.id)
          .str("reason", c.alert_reason)
          .num("with_response_bytes", c.alert->first > begin ? c.alert->first - begin : 0)
          .emit();
      c.alert.reset();
    }
  }
  c.out.clear();
  c.out_off = 0;
  c.want_pollout = false;
  if (c.state == State::closing) {
    ::shutdown(c.fd, SHUT_WR);
    report_closed(c, c.close_by, c.close_reason);
    c.state = State::lingering;
    c.deadline = Clock::now() + kLinger;
  }
  return true;
}

void queue_close_notify(Conn& c, std::string_view reason) {
  if ((SSL_get_shutdown(c.ssl) & SSL_SENT_SHUTDOWN) != 0) return;
  uint64_t begin = c.queued;
  ERR_clear_error();
  SSL_shutdown(c.ssl);
  pump(c);
  if (c.queued > begin) c.alert = std::make_pair(begin, c.queued);
  c.alert_reason = reason;
}

// close_notify (unless the TLS session is dead already), then FIN once all is sent.
void begin_close(Conn& c, std::string_view by, std::string_view reason, bool notify = true) {
  if (c.state == State::closing || c.state == State::lingering || c.state == State::closed) return;
  c.close_by = by;
  c.close_reason = reason;
  c.resp.reset();
  c.req.reset();
  // What is queued leaves in its own send() first: only --close-notify-after puts the
  // alert in the same write as a response.
  if (!send_out(c)) return;
  if (notify) queue_close_notify(c, by == "peer" ? "reply" : reason);
  c.state = State::closing;
  send_out(c);
}

bool write_plain(Conn& c, std::string_view data) {
  if (data.empty()) return true;
  ERR_clear_error();
  // A memory BIO takes everything, so SSL_write never comes back short.
  int r = SSL_write(c.ssl, data.data(), static_cast<int>(data.size()));
  pump(c);
  if (r == static_cast<int>(data.size())) return true;
  tls_error(c, "SSL_write");
  return false;
}

// ---- HTTP --------------------------------------------------------------------------------

uint64_t query_num(std::string_view q, std::string_view key, uint64_t fallback) {
  while (!q.empty()) {
    auto part = q.substr(0, q.find('&'));
    auto eq = part.find('=');
    if (eq != std::string_view::npos && part.substr(0, eq) == key && eq + 1 < part.size())
      return std::strtoull(std::string(part.substr(eq + 1)).c_str(), nullptr, 10);
    q.remove_prefix(std::min(q.size(), part.size() + 1));
  }
  return fallback;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& ch : out)
    ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return out;
}

// Connection-header tokens, as a comma-separated lower-case list with no blanks.
bool has_token(const std::string& list, std::string_view token) {
  return ("," + list + ",").find("," + std::string(token) + ",") != std::string::npos;
}

void queue_response(Conn& c, Response r, std::string_view reason, const std::string& extra) {
  r.head = "HTTP/1.1 " + std::to_string(r.status) + " " + std::string(reason) +
           "\r\nServer: upkeep-tls-origin\r\nX-Conn: " + std::to_string(c.id) +
           "\r\nX-Request: " + std::to_string(c.requests) + "\r\n" + extra +
           (c.close_after ? "Connection: close\r\n" : "") +
           (r.chunked ? "Transfer-Encoding: chunked\r\n"
                      : "Content-Length: " + std::to_string(r.total()) + "\r\n") +
           "\r\n";
  c.resp = std::move(r);
}

void bad_request(Conn& c, std::string_view why) {
  Event("bad_request", c.id).str("reason", why).emit();
  c.req.reset();
  c.in.clear();
  c.close_after = true;
  c.close_reason = "bad_request";
  Response r;
  r.status = 400;
  r.text = "bad request: " + std::string(why) + "\n";
  queue_response(c, std::move(r), "Bad Request", "");
}

void start_response(Conn& c) {
  Request& q = *c.req;
  Response r;
  r.size = query_num(q.query, "size", 100);
  r.head_only = q.method == "HEAD";
  std::string extra;
  std::string_view reason = "OK";
  if (q.path == "/upgrade-advert") {
    extra = "Connection: Upgrade\r\nUpgrade: h2\r\n";  // Apache mod_http2 advertising h2c
  } else if (q.path == "/chunked" || q.path == "/trailers") {
    r.chunked = true;
    r.chunk = std::max<uint64_t>(1, query_num(q.query, "chunk", 4096));
    if (q.path == "/trailers") {
      extra = "Trailer: X-Trailer-Check\r\n";
      r.trailer = "X-Trailer-Check: done-" + std::to_string(r.size) + "\r\n";
    }
  } else if (q.path == "/echo") {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;
    EVP_DigestFinal_ex(q.sha.get(), md, &md_len);
    r.text.emplace();
    for (unsigned i = 0; i < md_len; ++i) {
      char b[3];
      std::snprintf(b, sizeof b, "%02x", md[i]);
      *r.text += b;
    }
    *r.text += " " + std::to_string(q.body_bytes) + "\n";
  } else if (q.path != "/ok" && q.path != "/close") {
    r.status = 404;
    reason = "Not Found";
    r.text = "no such path\n";
  }
  if (q.path == "/close" || !q.keep_alive) {
    c.close_after = true;
    c.close_reason = "connection_close";
  }
  queue_response(c, std::move(r), reason, extra);
}

// Parses the request head at the start of c.in. False: more bytes are needed, or the
// connection failed; otherwise c.req (a request) or c.resp (a 400) is set.
bool parse_head(Conn& c) {
  size_t end = c.in.find("\r\n\r\n");
  auto bad = [&](std::string_view why) {
    bad_request(c, why);
    return true;
  };
  if (end == std::string::npos) return c.in.size() > kMaxHead && bad("request head too large");
  std::string_view head = std::string_view(c.in).substr(0, end + 2);
  size_t eol = head.find("\r\n");
  std::string_view line = head.substr(0, eol);
  size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
  if (sp1 == 0 || sp1 == std::string_view::npos || sp1 + 1 >= sp2)
    return bad("malformed request line");
  Request q;
  q.method = line.substr(0, sp1);
  q.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string version(line.substr(sp2 + 1));
  if ((version != "HTTP/1.1" && version != "HTTP/1.0") || q.target.find(' ') != std::string::npos)
    return bad("malformed request line");
  auto qpos = q.target.find('?');
  q.path = q.target.substr(0, qpos);
  if (qpos != std::string::npos) q.query = q.target.substr(qpos + 1);

  Headers headers;
  std::optional<uint64_t> length;
  bool chunked = false, expect_continue = false;
  std::string connection;
  for (size_t pos = eol + 2; pos < head.size();) {
    std::string_view h = head.substr(pos, head.find("\r\n", pos) - pos);
    pos += h.size() + 2;
    size_t colon = h.find(':');
    if (colon == 0 || colon == std::string_view::npos ||
        h.substr(0, colon).find_first_of(" \t") != std::string_view::npos)
      return bad("malformed header line");  // obs-fold and whitespace before ':' included
    std::string name = lower(h.substr(0, colon));
    std::string_view value = h.substr(colon + 1);
    value.remove_prefix(std::min(value.size(), value.find_first_not_of(" \t")));
    value = value.substr(0, value.find_last_not_of(" \t") + 1);
    if (name == "content-length") {
      std::string v(value);
      char* stop = nullptr;
      uint64_t n = std::strtoull(v.c_str(), &stop, 10);
      if (v.empty() || *stop != '\0' || !std::isdigit(static_cast<unsigned char>(v[0])) ||
          (length && *length != n))
        return bad("bad content-length");
      length = n;
    } else if (name == "transfer-encoding") {
      if (chunked || lower(value) != "chunked") return bad("unsupported transfer-encoding");
      chunked = true;
    } else if (name == "connection") {
      for (char ch : lower(value))
        if (ch != ' ' && ch != '\t') connection += ch;
      connection += ',';
    } else if (name == "expect") {
      expect_continue = lower(value) == "100-continue";
    }
    headers.emplace_back(h.substr(0, colon), value);
  }
  if (chunked && length) return bad("both content-length and transfer-encoding");
  q.keep_alive =
      version == "HTTP/1.1" ? !has_token(connection, "close") : has_token(connection, "keep-alive");
  q.body = chunked ? Body::chunk_size : length.value_or(0) > 0 ? Body::length : Body::none;
  q.left = length.value_or(0);
  EVP_DigestInit_ex(q.sha.get(), EVP_sha256(), nullptr);
  ++c.requests;
  c.idle_at.reset();
  c.key_update_at.reset();
  Event("request", c.id)
      .str("method", q.method)
      .str("path", q.path)
      .str("target", q.target)
      .str("version", version)
      .num("n", c.requests)
      .raw("headers", json_pairs(headers))
      .emit();
  c.in.erase(0, end + 4);
  c.req = std::move(q);
  if (expect_continue && c.req->body != Body::none)
    return write_plain(c, "HTTP/1.1 100 Continue\r\n\r\n");
  return true;
}

// Consumes request body bytes from c.in; true once the whole body is in. A bad chunk
// replaces the request with a 400 (c.resp).
bool parse_body(Conn& c) {
  Request& q = *c.req;
  for (;;) {
    if (q.body == Body::none) return true;
    if (q.body == Body::length || q.body == Body::chunk_data) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(q.left, c.in.size()));
      EVP_DigestUpdate(q.sha.get(), c.in.data(), n);
      q.body_bytes += n;
      q.left -= n;
      c.in.erase(0, n);
      if (q.left != 0) return false;
      if (q.body == Body::length) return true;
      q.body = Body::chunk_crlf;
    }
    size_t eol = c.in.find("\r\n");
    if (eol == std::string::npos) {
      if (c.in.size() > kMaxHead) bad_request(c, "chunk line too long");
      return false;
    }
    std::string line = c.in.substr(0, eol);
    c.in.erase(0, eol + 2);
    if (q.body == Body::chunk_crlf) {
      if (!line.empty()) {
        bad_request(c, "chunk data longer than its size");
        return false;
      }
      q.body = Body::chunk_size;
    } else if (q.body == Body::trailer) {
      if (line.empty()) return true;
    } else {
      char* stop = nullptr;
      q.left = std::strtoull(line.c_str(), &stop, 16);
      if (stop == line.c_str() || (*stop != '\0' && *stop != ';' && *stop != ' ')) {
        bad_request(c, "bad chunk size");
        return false;
      }
      q.body = q.left == 0 ? Body::trailer : Body::chunk_data;
    }
  }
}

void response_complete(Conn& c) {
  Event("response_done", c.id)
      .num("n", c.requests)
      .num("status", static_cast<uint64_t>(c.resp->status))
      .num("body_bytes", c.resp->head_only ? 0 : c.resp->total())
      .emit();
  c.resp.reset();
  c.req.reset();
  if (c.close_after) return begin_close(c, "server", c.close_reason);
  if (g_opt.close_notify_after > 0 &&
      c.requests == static_cast<uint64_t>(g_opt.close_notify_after)) {
    // The response's last record is still queued: the alert joins it and both leave in
    // the next send(). No FIN follows, as with hypercorn.
    queue_close_notify(c, "close_notify_after");
    c.state = State::half_closed;
    if (!c.in.empty()) Event("discarded", c.id).num("bytes", c.in.size()).emit();
    c.in.clear();
    return;
  }
  auto now = Clock::now();
  if (g_opt.idle_close_ms >= 0) c.idle_at = now + Ms(g_opt.idle_close_ms);
  if (g_opt.key_update_ms >= 0 && c.tls13) c.key_update_at = now + Ms(g_opt.key_update_ms);
}

// Parses and answers requests as far as the buffered input and the send queue allow.
void advance(Conn& c) {
  while (c.state == State::open) {
    if (c.resp) {
      if (c.pending() >= kWriteHigh) return;  // resumed once the socket takes more
      std::string plain;
      c.resp->fill(plain, kRecord);
      if (write_plain(c, plain) && c.resp->finished) response_complete(c);
    } else if (!c.req) {
      if (c.in.empty() || !parse_head(c)) return;
    } else if (!parse_body(c)) {
      if (!c.resp) return;  // more body bytes needed
    } else {
      start_response(c);
    }
  }
}

// ---- TLS ---------------------------------------------------------------------------------

// Decrypts what the records buffered in rbio hold, and acts on the end of the stream.
void read_tls(Conn& c) {
  char buf[16384];
  uint64_t discarded = 0;
  int r = 0;
  while (!(c.state == State::open && c.in.size() >= kReadHigh)) {
    ERR_clear_error();
    r = SSL_read(c.ssl, buf, sizeof buf);
    pump(c);  // a read can make OpenSSL answer, e.g. a KeyUpdate the client requested
    if (r <= 0) break;
    if (c.state == State::open) {
      c.in.append(buf, static_cast<size_t>(r));
    } else {
      discarded += static_cast<uint64_t>(r);
    }
  }
  if (discarded != 0) Event("discarded", c.id).num("bytes", discarded).emit();
  if (r > 0) return;
  int e = SSL_get_error(c.ssl, r);
  if (e == SSL_ERROR_WANT_READ && !c.peer_eof) return;
  if (e == SSL_ERROR_ZERO_RETURN) {
    begin_close(c, "peer", "close_notify");
  } else if (c.peer_eof) {
    abort_conn(c, "peer", "eof");
  } else {
    Event("tls_error", c.id).str("what", "SSL_read: " + ssl_errors()).emit();
    begin_close(c, "server", "tls_error", false);
  }
}

void handshake(Conn& c) {
  ERR_clear_error();
  int r = SSL_do_handshake(c.ssl);
  pump(c);
  if (r != 1) {
    if (SSL_get_error(c.ssl, r) == SSL_ERROR_WANT_READ && !c.peer_eof) return;
    std::string why = ssl_errors();
    Event("tls_failed", c.id)
        .str("reason", why.empty() ? "connection closed during handshake" : why)
        .emit();
    if (c.peer_eof) return abort_conn(c, "peer", "tls_failed");
    // The fatal alert OpenSSL queued (no_application_protocol, ...) still goes out.
    return begin_close(c, "server", "tls_failed", false);
  }
  const unsigned char* alpn = nullptr;
  unsigned alpn_len = 0;
  SSL_get0_alpn_selected(c.ssl, &alpn, &alpn_len);
  std::string alpn_json = alpn_len == 0 ? "null" : "";
  if (alpn_len != 0) append_json_string(alpn_json, {reinterpret_cast<const char*>(alpn), alpn_len});
  c.tls13 = SSL_version(c.ssl) == TLS1_3_VERSION;
  Event("handshake", c.id)
      .str("version", SSL_get_version(c.ssl))
      .raw("alpn", alpn_json)
      .raw("resumed", SSL_session_reused(c.ssl) == 1 ? "true" : "false")
      .emit();
  c.state = State::open;
  auto now = Clock::now();
  if (g_opt.ticket_delay_ms >= 0 && c.tls13) c.ticket_at = now + Ms(g_opt.ticket_delay_ms);
  if (g_opt.idle_close_ms >= 0) c.idle_at = now + Ms(g_opt.idle_close_ms);
}

// After SSL_new_session_ticket / SSL_key_update, SSL_do_handshake writes the message;
// with a memory BIO every write completes, so one call produces all of it.
void post_handshake(Conn& c, bool armed, std::string_view what, std::string_view event) {
  uint64_t before = c.queued;
  ERR_clear_error();
  if (!armed || SSL_do_handshake(c.ssl) != 1) return tls_error(c, what);
  pump(c);
  Event(event, c.id).num("bytes", c.queued - before).emit();
}

void run_timers(Conn& c, Clock::time_point now) {
  auto due = [&](std::optional<Clock::time_point>& t) {
    bool fire = t && now >= *t;
    if (fire) t.reset();
    return fire;
  };
  if (due(c.ticket_at) && c.state == State::open)
    post_handshake(c, SSL_new_session_ticket(c.ssl) == 1, "SSL_new_session_ticket", "ticket_sent");
  // Both only on an idle connection, the state a pooled upstream connection is in.
  if (due(c.key_update_at) && c.idle()) {
    post_handshake(c, SSL_key_update(c.ssl, SSL_KEY_UPDATE_NOT_REQUESTED) == 1, "SSL_key_update",
                   "key_update_sent");
  }
  if (due(c.idle_at) && c.idle()) begin_close(c, "server", "idle");
  if (c.state == State::handshake && now >= c.deadline) {
    Event("tls_failed", c.id).str("reason", "handshake timed out").emit();
    abort_conn(c, "server", "tls_failed");
  }
  if (c.state == State::lingering && now >= c.deadline) c.state = State::closed;
}

// ---- I/O ---------------------------------------------------------------------------------

void service(Conn& c, short revents) {
  if ((revents & POLLOUT) != 0 && !send_out(c)) return;
  if ((revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
    char buf[65536];
    for (;;) {
      ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (c.state == State::lingering) {
        if (n > 0) continue;
        c.state = State::closed;
        return;
      }
      if (n < 0) return abort_conn(c, "peer", "reset");
      if (n == 0) {
        c.peer_eof = true;
        BIO_set_mem_eof_return(c.rbio, 0);  // from now on OpenSSL sees the end of stream
        break;
      }
      BIO_write(c.rbio, buf, static_cast<int>(n));
      if (c.state == State::open && BIO_ctrl_pending(c.rbio) >= kReadHigh) break;
    }
  }
  if (c.state == State::handshake) handshake(c);
  if (c.state == State::open || c.state == State::half_closed || c.state == State::closing)
    read_tls(c);
  advance(c);
  if (c.state != State::closed && c.state != State::lingering) send_out(c);
}

int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                unsigned int inlen, void*) {
  for (unsigned i = 0; i < inlen; i += 1 + in[i]) {
    if (i + 1 + in[i] <= inlen && in[i] == 8 && std::memcmp(in + i + 1, "http/1.1", 8) == 0) {
      *out = in + i + 1;
      *outlen = 8;
      return SSL_TLSEXT_ERR_OK;
    }
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;  // no_application_protocol
}

void on_signal(int) {
  char b = 1;
  [[maybe_unused]] auto n = ::write(g_signal_pipe[1], &b, 1);
}

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "tls_origin: %s\n"
               "usage: tls_origin --cert FILE --key FILE [--port N] [--tls-min 1.2|1.3]\n"
               "         [--tls-max 1.2|1.3] [--tickets N] [--ticket-delay-ms N]\n"
               "         [--key-update-ms N] [--close-notify-after N] [--idle-close-ms N]\n",
               why.c_str());
  std::exit(2);
}

void parse_args(int argc, char** argv) {
  const std::map<std::string_view, std::pair<int64_t*, int64_t>> numeric = {
      {"--port", {&g_opt.port, 65535}},
      {"--tickets", {&g_opt.tickets, 100}},
      {"--ticket-delay-ms", {&g_opt.ticket_delay_ms, 3600000}},
      {"--key-update-ms", {&g_opt.key_update_ms, 3600000}},
      {"--close-notify-after", {&g_opt.close_notify_after, 1000000000}},
      {"--idle-close-ms", {&g_opt.idle_close_ms, 3600000}},
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) usage(a == "--help" ? "help" : a + " needs a value");
    std::string v = argv[++i];
    if (a == "--cert") {
      g_opt.cert = v;
    } else if (a == "--key") {
      g_opt.key = v;
    } else if (a == "--tls-min" || a == "--tls-max") {
      if (v != "1.2" && v != "1.3") usage(a + " must be 1.2 or 1.3");
      (a == "--tls-min" ? g_opt.tls_min : g_opt.tls_max) =
          v == "1.2" ? TLS1_2_VERSION : TLS1_3_VERSION;
    } else if (auto it = numeric.find(a); it != numeric.end()) {
      char* end = nullptr;
      errno = 0;
      long long n = std::strtoll(v.c_str(), &end, 10);
      if (errno != 0 || v.empty() || *end != '\0' || n < 0 || n > it->second.second)
        usage("bad value for " + a + ": " + v);
      *it->second.first = n;
    } else {
      usage("unknown argument " + a);
    }
  }
  if (g_opt.cert.empty() || g_opt.key.empty()) usage("--cert and --key are required");
  if (g_opt.tls_min > g_opt.tls_max) usage("--tls-min is above --tls-max");
}

SSL_CTX* make_tls_context() {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return nullptr;
  SSL_CTX_set_min_proto_version(ctx, g_opt.tls_min);
  SSL_CTX_set_max_proto_version(ctx, g_opt.tls_max);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  if (SSL_CTX_use_certificate_chain_file(ctx, g_opt.cert.c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, g_opt.key.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    std::fprintf(stderr, "tls_origin: cannot load %s / %s: %s\n", g_opt.cert.c_str(),
                 g_opt.key.c_str(), ssl_errors().c_str());
    SSL_CTX_free(ctx);
    return nullptr;
  }
  static const unsigned char kSidCtx[] = "upkeep-tls-origin";
  SSL_CTX_set_session_id_context(ctx, kSidCtx, sizeof kSidCtx - 1);
  // With a delayed ticket none may go with the handshake, or the delay would prove nothing.
  if (g_opt.ticket_delay_ms >= 0 || g_opt.tickets >= 0)
    SSL_CTX_set_num_tickets(ctx,
                            g_opt.ticket_delay_ms >= 0 ? 0 : static_cast<size_t>(g_opt.tickets));
  SSL_CTX_set_alpn_select_cb(ctx, select_alpn, nullptr);
  return ctx;
}

int listen_socket() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(g_opt.port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 1024) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

void accept_all(int lfd, SSL_CTX* ctx) {
  static uint64_t next_id = 0;
  for (;;) {
    int fd = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;  // EAGAIN, or a transient error the next poll retries
    int one = 1;
    // Each send() is then one segment on loopback: records sent together are also
    // received together.
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto c = std::make_unique<Conn>();
    c->id = ++next_id;
    c->fd = fd;
    c->deadline = Clock::now() + kHandshakeTimeout;
    Event("accepted", c->id).emit();
    c->ssl = SSL_new(ctx);
    c->rbio = BIO_new(BIO_s_mem());
    c->wbio = BIO_new(BIO_s_mem());
    if (c->ssl == nullptr || c->rbio == nullptr || c->wbio == nullptr) {
      BIO_free(c->rbio);
      BIO_free(c->wbio);
      abort_conn(*c, "server", "tls_failed");
      continue;
    }
    SSL_set_bio(c->ssl, c->rbio, c->wbio);
    SSL_set_accept_state(c->ssl);
    g_conns.emplace(c->id, std::move(c));
  }
}

int poll_timeout_ms() {
  auto now = Clock::now();
  auto next = now + std::chrono::seconds(1);
  for (auto& [id, c] : g_conns) {
    for (const auto& t : {c->ticket_at, c->key_update_at, c->idle_at})
      if (t) next = std::min(next, *t);
    if (c->state == State::handshake || c->state == State::lingering)
      next = std::min(next, c->deadline);
  }
  // Rounded up, so a timer is never polled for a moment before it is due.
  auto ms = std::chrono::duration_cast<Ms>(next - now).count();
  return static_cast<int>(std::clamp<int64_t>(ms + 1, 0, 1000));
}

}  // namespace

int main(int argc, char** argv) {
  parse_args(argc, argv);

  struct sigaction ign {};
  ign.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &ign, nullptr);
  if (::pipe2(g_signal_pipe, O_NONBLOCK | O_CLOEXEC) != 0) {
    std::perror("tls_origin: pipe2");
    return 1;
  }
  struct sigaction term {};
  term.sa_handler = on_signal;
  sigaction(SIGTERM, &term, nullptr);
  sigaction(SIGINT, &term, nullptr);

  SSL_CTX* ctx = make_tls_context();
  if (ctx == nullptr) return 1;
  int lfd = listen_socket();
  if (lfd < 0) {
    std::fprintf(stderr, "tls_origin: cannot listen on 127.0.0.1:%lld: %s\n",
                 static_cast<long long>(g_opt.port), std::strerror(errno));
    return 1;
  }
  sockaddr_in bound{};
  socklen_t blen = sizeof bound;
  ::getsockname(lfd, reinterpret_cast<sockaddr*>(&bound), &blen);
  Event("listening").num("port", ntohs(bound.sin_port)).emit();

  std::vector<pollfd> fds;
  std::vector<Conn*> polled;
  bool running = true;
  while (running) {
    fds.clear();
    polled.clear();
    fds.push_back({g_signal_pipe[0], POLLIN, 0});
    fds.push_back({lfd, POLLIN, 0});
    for (auto& [id, c] : g_conns) {
      // Pipelined input beyond kReadHigh waits in the kernel until responses drain it.
      short ev = c->state != State::open || c->in.size() < kReadHigh ? POLLIN : 0;
      if (c->want_pollout) ev |= POLLOUT;
      fds.push_back({c->fd, ev, 0});
      polled.push_back(c.get());
    }
    int n = ::poll(fds.data(), fds.size(), poll_timeout_ms());
    if (n < 0 && errno != EINTR) {
      std::perror("tls_origin: poll");
      break;
    }
    if (n > 0) {
      if (fds[0].revents != 0) running = false;
      if (fds[1].revents != 0) accept_all(lfd, ctx);
      for (size_t i = 0; i < polled.size(); ++i)
        if (fds[i + 2].revents != 0 && polled[i]->state != State::closed)
          service(*polled[i], fds[i + 2].revents);
    }
    auto now = Clock::now();
    for (auto it = g_conns.begin(); it != g_conns.end();) {
      Conn& c = *it->second;
      run_timers(c, now);
      // Records left in rbio while the input buffer was full, and the end of stream
      // behind them, are taken up here: no socket event may come for them again.
      if (c.state == State::open && c.in.size() < kReadHigh &&
          (SSL_has_pending(c.ssl) == 1 || BIO_ctrl_pending(c.rbio) > 0 || c.peer_eof))
        read_tls(c);
      advance(c);
      if (c.state != State::closed && c.state != State::lingering && !c.want_pollout) send_out(c);
      it = c.state == State::closed ? g_conns.erase(it) : std::next(it);
    }
  }

  for (auto& [id, c] : g_conns)
    report_closed(*c, "server", "shutdown");
  g_conns.clear();
  SSL_CTX_free(ctx);
  ::close(lfd);
  Event("exit").emit();
  return 0;
}
