// h2_origin: a fault-injecting HTTP/2 origin for upkeep's integration tests.
//
// TLS with ALPN "h2" only, one thread, poll(), non-blocking sockets, and a libnghttp2
// server session fed through mem_recv/mem_send. Bound to 127.0.0.1; every event is one
// JSON object a line on stdout, flushed, so a test can wait on it (upkeep_test/h2_origin.py).
//
//   h2_origin --cert FILE --key FILE [--port 0] [--max-concurrent-streams N]
//             [--initial-window-size N] [--goaway-after N] [--refuse-every K]
//             [--no-ping-ack] [--settings-delay-ms N]
//
// Paths: /ok?size=N  /nolength?size=N  /echo  /status?code=N  /delay?ms=N&size=M
//        /trailers?size=N[&cl=1]  /rst?after=N[&size=M]  /headers   (anything else: 404)
// Events and modes: tests/support/upkeep_test/h2_origin.py.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using Headers = std::vector<std::pair<std::string, std::string>>;

// Below this much unsent output, more frames are pulled from nghttp2; the cap is what
// keeps a 64 MiB body (or a reader that stopped) from piling up in memory.
constexpr size_t kWriteHigh = 256 * 1024;
// A connection we finished with keeps reading (and discarding) this long after our
// FIN, so bytes the peer still sends do not turn our close into an RST that could
// destroy responses it has not read yet.
constexpr auto kLinger = std::chrono::seconds(2);
constexpr auto kHandshakeTimeout = std::chrono::seconds(10);
// The connection-level receive window: only /echo holds request bytes unconsumed (to
// pass back-pressure to the uploader), and that must stall its own stream, not others.
constexpr int32_t kConnectionWindow = 1 << 30;

struct Options {
  std::string cert;
  std::string key;
  uint16_t port = 0;
  uint32_t max_concurrent_streams = 100;
  int64_t initial_window_size = -1;
  uint64_t goaway_after = 0;
  uint64_t refuse_every = 0;
  bool no_ping_ack = false;
  int64_t settings_delay_ms = 0;
};

Options g_opt;
uint64_t g_request_headers_seen = 0;  // process-wide: --refuse-every counts across connections
int g_signal_pipe[2] = {-1, -1};

// ---- events ---------------------------------------------------------------------------

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (unsigned char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += static_cast<char>(ch);
    } else if (ch < 0x20 || ch >= 0x7f) {
      // Bytes >= 0x80 become code points of the same value: header bytes are not
      // necessarily UTF-8, and the line must stay valid JSON whatever arrives.
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\u%04x", ch);
      out += esc;
    } else {
      out += static_cast<char>(ch);
    }
  }
  out += '"';
}

std::string json_pairs(const Headers& headers) {
  std::string out = "[";
  for (const auto& [name, value] : headers) {
    if (out.size() > 1) out += ',';
    out += '[';
    append_json_string(out, name);
    out += ',';
    append_json_string(out, value);
    out += ']';
  }
  out += ']';
  return out;
}

class Event {
 public:
  explicit Event(std::string_view name) {
    out_ = "{\"event\":";
    append_json_string(out_, name);
  }
  Event& num(std::string_view key, int64_t v) {
    field(key);
    out_ += std::to_string(v);
    return *this;
  }
  Event& flag(std::string_view key, bool v) {
    field(key);
    out_ += v ? "true" : "false";
    return *this;
  }
  Event& str(std::string_view key, std::string_view v) {
    field(key);
    append_json_string(out_, v);
    return *this;
  }
  Event& raw(std::string_view key, std::string_view json) {
    field(key);
    out_ += json;
    return *this;
  }
  void emit() {
    out_ += "}\n";
    std::fwrite(out_.data(), 1, out_.size(), stdout);
    std::fflush(stdout);
  }

 private:
  void field(std::string_view key) {
    out_ += ',';
    append_json_string(out_, key);
    out_ += ':';
  }
  std::string out_;
};

std::string ssl_errors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

// ---- the body pattern (tests/support/upkeep_test/patterns.py) ----------------------------

constexpr uint64_t kLine = 32;

void fill_pattern(uint8_t* dst, uint64_t offset, size_t n) {
  while (n > 0) {
    uint64_t line_start = offset - offset % kLine;
    char line[48];  // 32 bytes until offsets reach 10^10, far past any test body
    std::snprintf(line, sizeof line, "%010llu upkeep-test-pattern.\n",
                  static_cast<unsigned long long>(line_start));
    size_t from = static_cast<size_t>(offset - line_start);
    size_t take = std::min<size_t>(kLine - from, n);
    std::memcpy(dst, line + from, take);
    dst += take;
    offset += take;
    n -= take;
  }
}

// ---- connections and streams -----------------------------------------------------------

struct EvpDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

enum class Body { none, text, pattern, echo };

struct Stream {
  int32_t id = 0;
  bool processed = false;   // reported as a request and answered (not refused or ignored)
  Headers headers;          // pseudo-headers included, in arrival order
  Headers invalid_headers;  // fields nghttp2 calls invalid in HTTP/2 (hop-by-hop ones)
  std::string method, path, authority, scheme;
  uint64_t body_bytes = 0;
  bool request_done = false;
  uint64_t unconsumed = 0;  // received DATA not yet given back to the peer's window

  Body body = Body::none;
  std::string text;
  uint64_t size = 0;
  uint64_t offset = 0;  // response body bytes produced so far
  int64_t rst_after = -1;
  bool trailers = false;
  bool deferred = false;
  std::string echo;  // request bytes received and not yet sent back
  uint64_t sent_bytes = 0;
  std::unique_ptr<EVP_MD_CTX, EvpDeleter> sha;
};

enum class State { handshake, open, lingering, closed };

struct Conn {
  uint64_t id = 0;
  int fd = -1;
  SSL* ssl = nullptr;
  nghttp2_session* session = nullptr;
  State state = State::handshake;
  std::vector<uint8_t> wbuf;
  size_t woff = 0;
  bool want_pollout = false;
  Clock::time_point deadline;  // handshake or linger end
  Clock::time_point write_hold_until;
  std::unordered_map<int32_t, std::unique_ptr<Stream>> streams;
  size_t peak_streams = 0;
  uint64_t requests = 0;
  int32_t goaway_last = -1;  // -1: no GOAWAY submitted
  bool settings_acked = false;

  ~Conn() {
    if (session != nullptr) nghttp2_session_del(session);
    if (ssl != nullptr) SSL_free(ssl);
    if (fd >= 0) ::close(fd);
  }
  Stream* stream(int32_t sid) {
    auto it = streams.find(sid);
    return it == streams.end() ? nullptr : it->second.get();
  }
  size_t pending() const { return wbuf.size() - woff; }
};

std::map<uint64_t, std::unique_ptr<Conn>> g_conns;
// /delay responses due: when -> (connection, stream). A stream gone by then is skipped.
std::multimap<Clock::time_point, std::pair<uint64_t, int32_t>> g_delays;

void close_conn(Conn& c, std::string_view reason) {
  if (c.state == State::closed || c.state == State::lingering) return;
  bool was_open = c.state == State::open;
  Event("conn_close")
      .num("conn", static_cast<int64_t>(c.id))
      .num("max_open_streams", static_cast<int64_t>(c.peak_streams))
      .num("requests", static_cast<int64_t>(c.requests))
      .str("reason", reason)
      .emit();
  if (was_open && reason == "done") {
    SSL_shutdown(c.ssl);
    ::shutdown(c.fd, SHUT_WR);
    c.state = State::lingering;
    c.deadline = Clock::now() + kLinger;
    return;
  }
  c.state = State::closed;
}

// ---- responses ---------------------------------------------------------------------------

using Query = std::map<std::string, std::string, std::less<>>;

Query parse_query(std::string_view q) {
  Query out;
  while (!q.empty()) {
    auto amp = q.find('&');
    auto part = q.substr(0, amp);
    auto eq = part.find('=');
    if (eq == std::string_view::npos) {
      out.emplace(std::string(part), "");
    } else {
      out.emplace(std::string(part.substr(0, eq)), std::string(part.substr(eq + 1)));
    }
    if (amp == std::string_view::npos) break;
    q.remove_prefix(amp + 1);
  }
  return out;
}

uint64_t query_num(const Query& q, std::string_view key, uint64_t fallback) {
  auto it = q.find(key);
  if (it == q.end() || it->second.empty()) return fallback;
  return std::strtoull(it->second.c_str(), nullptr, 10);
}

// nghttp2_submit_* copy names and values, so views of temporaries are fine here.
nghttp2_nv make_nv(std::string_view name, std::string_view value) {
  return {reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
          reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
          NGHTTP2_NV_FLAG_NONE};
}

// :path -> (path, query arguments)
std::pair<std::string_view, Query> split_target(std::string_view target) {
  auto qpos = target.find('?');
  if (qpos == std::string_view::npos) return {target, {}};
  return {target.substr(0, qpos), parse_query(target.substr(qpos + 1))};
}

ssize_t read_body(nghttp2_session* session, int32_t sid, uint8_t* buf, size_t length,
                  uint32_t* data_flags, nghttp2_data_source*, void* user_data) {
  auto& c = *static_cast<Conn*>(user_data);
  Stream* s = c.stream(sid);
  if (s == nullptr) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  switch (s->body) {
    case Body::none:
      *data_flags |= NGHTTP2_DATA_FLAG_EOF;
      return 0;
    case Body::text: {
      size_t n = std::min<size_t>(length, s->text.size() - s->offset);
      std::memcpy(buf, s->text.data() + s->offset, n);
      s->offset += n;
      if (s->offset == s->text.size()) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
      return static_cast<ssize_t>(n);
    }
    case Body::pattern: {
      uint64_t limit = s->size;
      if (s->rst_after >= 0) {
        // Returning this makes nghttp2 reset the stream with INTERNAL_ERROR, after the
        // DATA frames already produced for the first `after` bytes.
        if (s->offset >= static_cast<uint64_t>(s->rst_after))
          return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        limit = static_cast<uint64_t>(s->rst_after);
      }
      size_t n = static_cast<size_t>(std::min<uint64_t>(length, limit - s->offset));
      fill_pattern(buf, s->offset, n);
      if (s->sha) EVP_DigestUpdate(s->sha.get(), buf, n);
      s->offset += n;
      if (s->offset == s->size) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->trailers) {
          unsigned char md[EVP_MAX_MD_SIZE];
          unsigned int md_len = 0;
          EVP_DigestFinal_ex(s->sha.get(), md, &md_len);
          std::string hex;
          for (unsigned i = 0; i < md_len; ++i) {
            char b[3];
            std::snprintf(b, sizeof b, "%02x", md[i]);
            hex += b;
          }
          std::string bytes = std::to_string(s->size);
          nghttp2_nv nva[] = {make_nv("x-checksum", hex), make_nv("x-body-bytes", bytes)};
          *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
          if (nghttp2_submit_trailer(session, sid, nva, 2) != 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
      }
      return static_cast<ssize_t>(n);
    }
    case Body::echo: {
      if (s->echo.empty()) {
        if (s->request_done) {
          *data_flags |= NGHTTP2_DATA_FLAG_EOF;
          return 0;
        }
        s->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
      }
      size_t n = std::min(length, s->echo.size());
      std::memcpy(buf, s->echo.data(), n);
      s->echo.erase(0, n);
      // Window is returned only as bytes go back out: a response nobody reads stops
      // the upload instead of buffering it here.
      nghttp2_session_consume(session, sid, n);
      s->unconsumed -= n;
      if (s->echo.empty() && s->request_done) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
      return static_cast<ssize_t>(n);
    }
  }
  return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

void submit_response(Conn& c, Stream& s, int status, bool content_length) {
  bool head = s.method == "HEAD";
  bool no_body = head || status == 204 || status == 304;
  std::string status_s = std::to_string(status), conn_s = std::to_string(c.id),
              stream_s = std::to_string(s.id), length_s;
  std::vector<nghttp2_nv> nva = {make_nv(":status", status_s),
                                 make_nv("server", "upkeep-h2-origin"), make_nv("x-conn", conn_s),
                                 make_nv("x-stream", stream_s)};
  if (content_length && status != 204 && status != 304) {
    length_s = std::to_string(s.body == Body::text ? s.text.size() : s.size);
    nva.push_back(make_nv("content-length", length_s));
  }
  if (s.trailers) nva.push_back(make_nv("trailer", "x-checksum, x-body-bytes"));
  nghttp2_data_provider prd{};
  prd.read_callback = read_body;
  int rv =
      nghttp2_submit_response(c.session, s.id, nva.data(), nva.size(), no_body ? nullptr : &prd);
  if (rv != 0) {
    Event("error")
        .num("conn", static_cast<int64_t>(c.id))
        .num("stream", s.id)
        .str("what", std::string("submit_response: ") + nghttp2_strerror(rv))
        .emit();
  }
}

void respond(Conn& c, Stream& s) {
  auto [path, q] = split_target(s.path);
  if (path == "/ok" || path == "/nolength" || path == "/trailers" || path == "/delay") {
    s.body = Body::pattern;
    s.size = query_num(q, "size", 100);
    s.trailers = path == "/trailers";
    if (s.trailers) {
      s.sha.reset(EVP_MD_CTX_new());
      EVP_DigestInit_ex(s.sha.get(), EVP_sha256(), nullptr);
    }
    // /trailers has no length by default, as gRPC-style responses do: a proxy must
    // frame it itself (chunked, where trailers fit).
    submit_response(
        c, s, 200, path == "/ok" || path == "/delay" || (s.trailers && query_num(q, "cl", 0) != 0));
  } else if (path == "/rst") {
    s.body = Body::pattern;
    s.rst_after = static_cast<int64_t>(query_num(q, "after", 0));
    // The announced length is always longer than what is sent, so the cut can never
    // look like a complete response.
    s.size =
        std::max<uint64_t>(query_num(q, "size", 1 << 20), static_cast<uint64_t>(s.rst_after) + 1);
    submit_response(c, s, 200, true);
  } else if (path == "/echo") {
    s.body = Body::echo;
    submit_response(c, s, 200, false);
  } else if (path == "/status") {
    int code = static_cast<int>(query_num(q, "code", 200));
    if (code < 200 || code > 999) code = 200;
    s.body = Body::text;
    s.text = code == 204 || code == 304 ? "" : "status " + std::to_string(code) + "\n";
    submit_response(c, s, code, true);
  } else if (path == "/headers") {
    s.body = Body::text;
    s.text = json_pairs(s.headers) + "\n";
    submit_response(c, s, 200, true);
  } else {
    s.body = Body::text;
    s.text = "no such path\n";
    submit_response(c, s, 404, true);
  }
}

void on_request(Conn& c, Stream& s) {
  // Streams above a GOAWAY's last-stream-id that arrived before the GOAWAY went out:
  // nghttp2 closes them when it is sent, and the client may replay them, so they must
  // never be processed.
  if (c.goaway_last >= 0 && s.id > c.goaway_last) {
    Event("ignored")
        .num("conn", static_cast<int64_t>(c.id))
        .num("stream", s.id)
        .str("path", s.path)
        .emit();
    return;
  }
  ++g_request_headers_seen;
  if (g_opt.refuse_every != 0 && g_request_headers_seen % g_opt.refuse_every == 0) {
    Event("refused")
        .num("conn", static_cast<int64_t>(c.id))
        .num("stream", s.id)
        .str("method", s.method)
        .str("path", s.path)
        .num("open", static_cast<int64_t>(c.streams.size()))
        .emit();
    nghttp2_submit_rst_stream(c.session, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_REFUSED_STREAM);
    return;
  }
  s.processed = true;
  ++c.requests;
  Event ev("request");
  ev.num("conn", static_cast<int64_t>(c.id))
      .num("stream", s.id)
      .str("method", s.method)
      .str("path", s.path)
      .str("authority", s.authority)
      .str("scheme", s.scheme)
      .raw("headers", json_pairs(s.headers))
      .num("open", static_cast<int64_t>(c.streams.size()));
  if (!s.invalid_headers.empty()) ev.raw("invalid_headers", json_pairs(s.invalid_headers));
  ev.emit();

  if (g_opt.goaway_after != 0 && c.goaway_last < 0 && c.requests >= g_opt.goaway_after) {
    c.goaway_last = s.id;
    nghttp2_submit_goaway(c.session, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_NO_ERROR, nullptr, 0);
  }

  if (auto [path, q] = split_target(s.path); path == "/delay") {
    auto ms = static_cast<int64_t>(query_num(q, "ms", 1000));
    g_delays.emplace(Clock::now() + std::chrono::milliseconds(ms), std::make_pair(c.id, s.id));
    return;
  }
  respond(c, s);
}

void request_done(Conn& c, Stream& s) {
  if (s.request_done) return;
  s.request_done = true;
  if (s.processed) {
    Event("request_done")
        .num("conn", static_cast<int64_t>(c.id))
        .num("stream", s.id)
        .num("body_bytes", static_cast<int64_t>(s.body_bytes))
        .emit();
  }
  if (s.deferred) {
    s.deferred = false;
    nghttp2_session_resume_data(c.session, s.id);
  }
}

// ---- nghttp2 callbacks -------------------------------------------------------------------

int on_begin_headers(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
  auto& c = *static_cast<Conn*>(user_data);
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  auto s = std::make_unique<Stream>();
  s->id = frame->hd.stream_id;
  c.streams[s->id] = std::move(s);
  c.peak_streams = std::max(c.peak_streams, c.streams.size());
  return 0;
}

int on_header(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
              const uint8_t* value, size_t valuelen, uint8_t, void* user_data) {
  auto& c = *static_cast<Conn*>(user_data);
  Stream* s = c.stream(frame->hd.stream_id);
  if (s == nullptr || frame->hd.type != NGHTTP2_HEADERS) return 0;
  std::string n(reinterpret_cast<const char*>(name), namelen);
  std::string v(reinterpret_cast<const char*>(value), valuelen);
  if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
    if (n == ":method") s->method = v;
    if (n == ":path") s->path = v;
    if (n == ":authority") s->authority = v;
    if (n == ":scheme") s->scheme = v;
  }
  s->headers.emplace_back(std::move(n), std::move(v));
  return 0;
}

// Keeps fields HTTP/2 forbids (connection, keep-alive, transfer-encoding, ...) instead of
// resetting the stream, so a test sees exactly what the proxy forwarded.
int on_invalid_header(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name,
                      size_t namelen, const uint8_t* value, size_t valuelen, uint8_t flags,
                      void* user_data) {
  auto& c = *static_cast<Conn*>(user_data);
  if (Stream* s = c.stream(frame->hd.stream_id)) {
    s->invalid_headers.emplace_back(std::string(reinterpret_cast<const char*>(name), namelen),
                                    std::string(reinterpret_cast<const char*>(value), valuelen));
  }
  return on_header(session, frame, name, namelen, value, valuelen, flags, user_data);
}

int on_frame_recv(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
  auto& c = *static_cast<Conn*>(user_data);
  int32_t sid = frame->hd.stream_id;
  bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
      if (Stream* s = c.stream(sid)) {
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) on_request(c, *s);
        // on_request may have refused it; the stream object lives until close either way.
        if (end_stream) request_done(c, *s);
      }
      break;
    case NGHTTP2_DATA:
      if (Stream* s = c.stream(sid); s != nullptr && end_stream) request_done(c, *s);
      break;
    case NGHTTP2_RST_STREAM:
      Event("rst_recv")
          .num("conn", static_cast<int64_t>(c.id))
          .num("stream", sid)
          .num("error_code", frame->rst_stream.error_code)
          .emit();
      break;
    case NGHTTP2_PING:
      if ((frame->hd.flags & NGHTTP2_FLAG_ACK) == 0)
        Event("ping")
            .num("conn", static_cast<int64_t>(c.id))
            .flag("acked", !g_opt.no_ping_ack)
            .emit();
      break;
    case NGHTTP2_SETTINGS:
      if ((frame->hd.flags & NGHTTP2_FLAG_ACK) != 0) c.settings_acked = true;
      break;
    case NGHTTP2_GOAWAY:
      Event("goaway_recv")
          .num("conn", static_cast<int64_t>(c.id))
          .num("last_stream_id", frame->goaway.last_stream_id)
          .num("error_code", frame->goaway.error_code)
          .emit();
      break;
    default:
      break;
  }
  return 0;
}

int on_data_chunk(nghttp2_session* session, uint8_t, int32_t sid, const uint8_t* data, size_t len,
                  void* user_data) {
  auto& c = *static_cast<Conn*>(user_data);
  Stream* s = c.stream(sid);
  if (s == nullptr) {
    nghttp2_session_consume(session, sid, len);
    return 0;
  }
  s->body_bytes += len;
  if (s->processed && s->body == Body::echo) {
    s->echo.append(reinterpret_cast<const char*>(data), len);
    s->unconsumed += len;
    if (s->deferred) {
      s->deferred = false;
      nghttp2_session_resume_data(session, sid);
    }
  } else {
    nghttp2_session_consume(session, sid, len);
  }
  return 0;
}

int on_frame_send(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
  auto& c = *static_cast<Conn*>(user_data);
  if (frame->hd.type == NGHTTP2_DATA) {
    if (Stream* s = c.stream(frame->hd.stream_id)) s->sent_bytes += frame->hd.length;
  } else if (frame->hd.type == NGHTTP2_GOAWAY) {
    Event("goaway_sent")
        .num("conn", static_cast<int64_t>(c.id))
        .num("last_stream_id", frame->goaway.last_stream_id)
        .num("error_code", frame->goaway.error_code)
        .emit();
  } else if (frame->hd.type == NGHTTP2_RST_STREAM) {
    Event("rst_sent")
        .num("conn", static_cast<int64_t>(c.id))
        .num("stream", frame->hd.stream_id)
        .num("error_code", frame->rst_stream.error_code)
        .emit();
  }
  return 0;
}

// Frames nghttp2 rejects never reach the callbacks above; without this event a peer
// that breaks SETTINGS_MAX_CONCURRENT_STREAMS would only show up as a missing stream.
int on_invalid_frame(nghttp2_session*, const nghttp2_frame* frame, int lib_error, void* user_data) {
  auto& c = *static_cast<Conn*>(user_data);
  Event("invalid_frame")
      .num("conn", static_cast<int64_t>(c.id))
      .num("stream", frame->hd.stream_id)
      .num("type", frame->hd.type)
      .str("error", nghttp2_strerror(lib_error))
      .flag("settings_acked", c.settings_acked)
      .num("open", static_cast<int64_t>(c.streams.size()))
      .emit();
  return 0;
}

int on_stream_close(nghttp2_session* session, int32_t sid, uint32_t error_code, void* user_data) {
  auto& c = *static_cast<Conn*>(user_data);
  auto it = c.streams.find(sid);
  if (it == c.streams.end()) return 0;
  Stream& s = *it->second;
  // Bytes still held for /echo count against the connection window until consumed; the
  // stream itself is gone, so only the connection is owed a WINDOW_UPDATE.
  if (s.unconsumed > 0) nghttp2_session_consume_connection(session, s.unconsumed);
  Event("stream_close")
      .num("conn", static_cast<int64_t>(c.id))
      .num("stream", sid)
      .num("error_code", error_code)
      .num("sent_bytes", static_cast<int64_t>(s.sent_bytes))
      .flag("processed", s.processed)
      .emit();
  c.streams.erase(it);
  return 0;
}

nghttp2_session_callbacks* make_callbacks() {
  nghttp2_session_callbacks* cb = nullptr;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
  nghttp2_session_callbacks_set_on_invalid_header_callback(cb, on_invalid_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
  nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
  nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
  return cb;
}

// ---- I/O ------------------------------------------------------------------------------------

bool start_session(Conn& c, nghttp2_session_callbacks* cb, nghttp2_option* opt) {
  if (nghttp2_session_server_new2(&c.session, cb, &c, opt) != 0) return false;
  std::vector<nghttp2_settings_entry> iv = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, g_opt.max_concurrent_streams}};
  if (g_opt.initial_window_size >= 0) {
    iv.push_back(
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, static_cast<uint32_t>(g_opt.initial_window_size)});
  }
  if (nghttp2_submit_settings(c.session, NGHTTP2_FLAG_NONE, iv.data(), iv.size()) != 0)
    return false;
  nghttp2_session_set_local_window_size(c.session, NGHTTP2_FLAG_NONE, 0, kConnectionWindow);
  // Holding every write (rather than the SETTINGS frame alone) keeps SETTINGS the first
  // frame on the wire, as RFC 9113 requires, while still delaying it.
  c.write_hold_until = Clock::now() + std::chrono::milliseconds(g_opt.settings_delay_ms);
  return true;
}

bool flush(Conn& c) {
  if (c.state != State::open || Clock::now() < c.write_hold_until) return true;
  for (;;) {
    while (c.pending() < kWriteHigh) {
      const uint8_t* data = nullptr;
      ssize_t n = nghttp2_session_mem_send(c.session, &data);
      if (n < 0) return false;
      if (n == 0) break;
      c.wbuf.insert(c.wbuf.end(), data, data + n);
    }
    if (c.pending() == 0) {
      c.wbuf.clear();
      c.woff = 0;
      c.want_pollout = false;
      return true;
    }
    ERR_clear_error();
    int len = static_cast<int>(std::min<size_t>(c.pending(), INT_MAX));
    int r = SSL_write(c.ssl, c.wbuf.data() + c.woff, len);
    if (r > 0) {
      c.woff += static_cast<size_t>(r);
      if (c.woff >= kWriteHigh) {
        c.wbuf.erase(c.wbuf.begin(), c.wbuf.begin() + static_cast<ptrdiff_t>(c.woff));
        c.woff = 0;
      }
      continue;
    }
    int e = SSL_get_error(c.ssl, r);
    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
      c.want_pollout = e == SSL_ERROR_WANT_WRITE;
      return true;
    }
    return false;
  }
}

void after_io(Conn& c) {
  if (c.state != State::open) return;
  if (!flush(c)) {
    close_conn(c, "write_error");
    return;
  }
  if (nghttp2_session_want_read(c.session) == 0 && nghttp2_session_want_write(c.session) == 0 &&
      c.pending() == 0)
    close_conn(c, "done");
}

void service_open(Conn& c) {
  uint8_t buf[65536];
  for (;;) {
    ERR_clear_error();
    int r = SSL_read(c.ssl, buf, sizeof buf);
    if (r > 0) {
      ssize_t rv = nghttp2_session_mem_recv(c.session, buf, static_cast<size_t>(r));
      if (rv < 0) {
        close_conn(c, std::string("protocol_error: ") + nghttp2_strerror(static_cast<int>(rv)));
        return;
      }
      continue;
    }
    int e = SSL_get_error(c.ssl, r);
    if (e == SSL_ERROR_WANT_READ) break;
    if (e == SSL_ERROR_WANT_WRITE) {
      c.want_pollout = true;
      break;
    }
    close_conn(c, e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0)
                      ? "peer_closed"
                      : "read_error");
    return;
  }
  after_io(c);
}

void service_handshake(Conn& c, nghttp2_session_callbacks* cb, nghttp2_option* opt) {
  ERR_clear_error();
  int r = SSL_accept(c.ssl);
  if (r != 1) {
    int e = SSL_get_error(c.ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      c.want_pollout = e == SSL_ERROR_WANT_WRITE;
      return;
    }
    std::string why = ssl_errors();
    Event("tls_failed")
        .num("conn", static_cast<int64_t>(c.id))
        .str("reason", why.empty() ? "connection closed during handshake" : why)
        .emit();
    close_conn(c, "tls_failed");
    return;
  }
  const unsigned char* alpn = nullptr;
  unsigned alpn_len = 0;
  SSL_get0_alpn_selected(c.ssl, &alpn, &alpn_len);
  if (alpn_len != 2 || std::memcmp(alpn, "h2", 2) != 0) {
    // Reached only when the client sent no ALPN at all (an offer without h2 already
    // failed in the handshake with no_application_protocol).
    Event("tls_failed")
        .num("conn", static_cast<int64_t>(c.id))
        .str("reason", "client did not offer ALPN h2")
        .emit();
    close_conn(c, "tls_failed");
    return;
  }
  Event("handshake")
      .num("conn", static_cast<int64_t>(c.id))
      .str("alpn", "h2")
      .str("tls", SSL_get_version(c.ssl))
      .emit();
  if (!start_session(c, cb, opt)) {
    close_conn(c, "session_failed");
    return;
  }
  c.state = State::open;
  service_open(c);
}

void service_linger(Conn& c) {
  char buf[16384];
  for (;;) {
    ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
    if (n > 0) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n < 0 && errno == EINTR) continue;
    c.state = State::closed;
    return;
  }
}

int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                unsigned int inlen, void*) {
  for (unsigned i = 0; i < inlen;) {
    unsigned len = in[i];
    if (i + 1 + len > inlen) break;
    if (len == 2 && std::memcmp(in + i + 1, "h2", 2) == 0) {
      *out = in + i + 1;
      *outlen = 2;
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

void on_signal(int) {
  char b = 1;
  [[maybe_unused]] auto n = ::write(g_signal_pipe[1], &b, 1);
}

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "h2_origin: %s\n"
               "usage: h2_origin --cert FILE --key FILE [--port N] [--max-concurrent-streams N]\n"
               "                 [--initial-window-size N] [--goaway-after N] [--refuse-every K]\n"
               "                 [--no-ping-ack] [--settings-delay-ms N]\n",
               why);
  std::exit(2);
}

uint64_t parse_num(const char* flag, const char* v, uint64_t max) {
  char* end = nullptr;
  errno = 0;
  unsigned long long n = std::strtoull(v, &end, 10);
  if (errno != 0 || end == v || *end != '\0' || n > max || v[0] == '-')
    usage((std::string("bad value for ") + flag + ": " + v).c_str());
  return n;
}

void parse_args(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage((std::string(a) + " needs a value").c_str());
      return argv[++i];
    };
    if (a == "--cert") {
      g_opt.cert = value();
    } else if (a == "--key") {
      g_opt.key = value();
    } else if (a == "--port") {
      g_opt.port = static_cast<uint16_t>(parse_num("--port", value(), 65535));
    } else if (a == "--max-concurrent-streams") {
      g_opt.max_concurrent_streams =
          static_cast<uint32_t>(parse_num("--max-concurrent-streams", value(), UINT32_MAX));
    } else if (a == "--initial-window-size") {
      g_opt.initial_window_size =
          static_cast<int64_t>(parse_num("--initial-window-size", value(), INT32_MAX));
    } else if (a == "--goaway-after") {
      g_opt.goaway_after = parse_num("--goaway-after", value(), UINT64_MAX);
    } else if (a == "--refuse-every") {
      g_opt.refuse_every = parse_num("--refuse-every", value(), UINT64_MAX);
    } else if (a == "--no-ping-ack") {
      g_opt.no_ping_ack = true;
    } else if (a == "--settings-delay-ms") {
      g_opt.settings_delay_ms =
          static_cast<int64_t>(parse_num("--settings-delay-ms", value(), 3600000));
    } else {
      usage((std::string("unknown argument ") + std::string(a)).c_str());
    }
  }
  if (g_opt.cert.empty() || g_opt.key.empty()) usage("--cert and --key are required");
}

SSL_CTX* make_tls_context() {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return nullptr;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  if (SSL_CTX_use_certificate_chain_file(ctx, g_opt.cert.c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, g_opt.key.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    std::fprintf(stderr, "h2_origin: cannot load %s / %s: %s\n", g_opt.cert.c_str(),
                 g_opt.key.c_str(), ssl_errors().c_str());
    SSL_CTX_free(ctx);
    return nullptr;
  }
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
  addr.sin_port = htons(g_opt.port);
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
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto c = std::make_unique<Conn>();
    c->id = ++next_id;
    c->fd = fd;
    c->ssl = SSL_new(ctx);
    c->deadline = Clock::now() + kHandshakeTimeout;
    // Counted from TCP accept, so a connection still in its handshake counts as open.
    Event("conn_open").num("conn", static_cast<int64_t>(c->id)).emit();
    if (c->ssl == nullptr || SSL_set_fd(c->ssl, fd) != 1) {
      close_conn(*c, "tls_failed");
      continue;
    }
    SSL_set_accept_state(c->ssl);
    g_conns.emplace(c->id, std::move(c));
  }
}

void fire_delays() {
  auto now = Clock::now();
  while (!g_delays.empty() && g_delays.begin()->first <= now) {
    auto [conn_id, sid] = g_delays.begin()->second;
    g_delays.erase(g_delays.begin());
    auto it = g_conns.find(conn_id);
    if (it == g_conns.end() || it->second->state != State::open) continue;
    Conn& c = *it->second;
    if (Stream* s = c.stream(sid)) {
      respond(c, *s);
      after_io(c);
    }
  }
}

int poll_timeout_ms() {
  auto now = Clock::now();
  auto next = now + std::chrono::seconds(1);
  if (!g_delays.empty()) next = std::min(next, g_delays.begin()->first);
  for (auto& [id, c] : g_conns) {
    if (c->state == State::handshake || c->state == State::lingering)
      next = std::min(next, c->deadline);
    if (c->state == State::open && c->write_hold_until > now)
      next = std::min(next, c->write_hold_until);
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(next - now).count();
  return static_cast<int>(std::clamp<int64_t>(ms + 1, 0, 1000));
}

}  // namespace

int main(int argc, char** argv) {
  parse_args(argc, argv);

  struct sigaction ign {};
  ign.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &ign, nullptr);
  if (::pipe2(g_signal_pipe, O_NONBLOCK | O_CLOEXEC) != 0) {
    std::perror("h2_origin: pipe2");
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
    std::fprintf(stderr, "h2_origin: cannot listen on 127.0.0.1:%u: %s\n", g_opt.port,
                 std::strerror(errno));
    return 1;
  }
  sockaddr_in bound{};
  socklen_t blen = sizeof bound;
  ::getsockname(lfd, reinterpret_cast<sockaddr*>(&bound), &blen);
  Event("listening").num("port", ntohs(bound.sin_port)).emit();

  nghttp2_session_callbacks* callbacks = make_callbacks();
  nghttp2_option* option = nullptr;
  nghttp2_option_new(&option);
  // Window updates are sent as the application consumes bytes (see read_body /echo).
  nghttp2_option_set_no_auto_window_update(option, 1);
  if (g_opt.no_ping_ack) nghttp2_option_set_no_auto_ping_ack(option, 1);

  std::vector<pollfd> fds;
  std::vector<Conn*> polled;
  bool running = true;
  while (running) {
    fds.clear();
    polled.clear();
    fds.push_back({g_signal_pipe[0], POLLIN, 0});
    fds.push_back({lfd, POLLIN, 0});
    for (auto& [id, c] : g_conns) {
      short ev = POLLIN;
      if (c->want_pollout) ev |= POLLOUT;
      fds.push_back({c->fd, ev, 0});
      polled.push_back(c.get());
    }
    int n = ::poll(fds.data(), fds.size(), poll_timeout_ms());
    if (n < 0 && errno != EINTR) {
      std::perror("h2_origin: poll");
      break;
    }
    if (n > 0) {
      if (fds[0].revents != 0) running = false;
      if (fds[1].revents != 0) accept_all(lfd, ctx);
      for (size_t i = 0; i < polled.size(); ++i) {
        if (fds[i + 2].revents == 0) continue;
        Conn& c = *polled[i];
        if (c.state == State::handshake) {
          service_handshake(c, callbacks, option);
        } else if (c.state == State::open) {
          service_open(c);
        } else if (c.state == State::lingering) {
          service_linger(c);
        }
      }
    }
    fire_delays();
    auto now = Clock::now();
    for (auto it = g_conns.begin(); it != g_conns.end();) {
      Conn& c = *it->second;
      if (c.state == State::handshake && now >= c.deadline) {
        Event("tls_failed")
            .num("conn", static_cast<int64_t>(c.id))
            .str("reason", "handshake timed out")
            .emit();
        close_conn(c, "tls_failed");
      } else if (c.state == State::lingering && now >= c.deadline) {
        c.state = State::closed;
      } else if (c.state == State::open && c.pending() == 0 && !c.want_pollout &&
                 now >= c.write_hold_until && nghttp2_session_want_write(c.session) != 0) {
        // The SETTINGS hold just ended, or a deferred body was resumed by a timer.
        after_io(c);
      }
      it = c.state == State::closed ? g_conns.erase(it) : std::next(it);
    }
  }

  for (auto& [id, c] : g_conns)
    close_conn(*c, "shutdown");
  g_conns.clear();
  nghttp2_option_del(option);
  nghttp2_session_callbacks_del(callbacks);
  SSL_CTX_free(ctx);
  ::close(lfd);
  Event("exit").emit();
  return 0;
}
