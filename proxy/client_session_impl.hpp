// The inside of one downstream (client) connection, shared by the files that
// implement it, each one concept along a request's path:
//   client_session.cpp   the request loop: read a head, check it, route it
//   connect.cpp          CONNECT: a blind tunnel, or interception (the client's TLS
//                        terminated here, the loop then reads requests from inside it)
//   exchange.cpp         one exchange: lease a connection, retries, the HTTP/1.1 attempt
//   exchange_h2.cpp      the HTTP/2 attempt: a stream, full-duplex upload and response
//   drain.cpp            reading what a client abandoned so the connection is reused
//   response_writer.cpp  heads, bodies, 1xx and error answers written to the client
// Everything for one client runs as one coroutine on its own strand.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>

#include "access_log.hpp"
#include "client_stream.hpp"
#include "endpoint_text.hpp"
#include "relay_buffer.hpp"
#include "runtime.hpp"
#include "upstream_h2.hpp"

namespace upkeep::downstream {

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
using tcp = asio::ip::tcp;
constexpr std::size_t kBodyChunk = RelayBuffer::kSize;

// Body relay outcome: which side failed decides what happens to the upstream.
enum class BodyResult { ok, client_failed, client_malformed, upstream_failed };

// What one attempt on an HTTP/2 connection left to do.
enum class H2Attempt {
  finished_keep,   // answered; the client connection may carry another request
  finished_close,  // answered (or the client is gone); close the client connection
  replay,          // the server never processed the stream: send it again
  retry_fresh,     // a reused connection died before any response byte (idempotent only)
};

// Upload bytes taken from the client are kept (up to a cap) so a stream the server
// refused can be sent again in full, even a POST (RFC 9113 §8.7).
constexpr std::size_t kReplayKeep = 64 * 1024;
// A request whose streams keep being refused (each GOAWAY'd connection taking a
// few) is replayed up to this often, and never for longer than queue.timeout.
constexpr int kMaxReplays = 100;

// The last route any client connection on this thread took, and that route's pool
// (route_cached's seed): a program that opens a connection per request then pays
// neither routing nor the pool registry's lock per connection. The pool is held
// weakly: a thread's leftovers must not keep one alive past shutdown.
struct ThreadRoute {
  LastRoute route;
  std::weak_ptr<ConnectionPool> pool;
  uint64_t pool_generation = 0;  // the route.generation `pool` belongs to
};
ThreadRoute& thread_route();

// The per-request state an HTTP/2 attempt needs and that survives a replay.
struct H2Exchange {
  const Snapshot* snap = nullptr;
  const RouteDecision* d = nullptr;
  AccessEntry* e = nullptr;
  ConnectionPool* pool = nullptr;
  const http::request_header<>* up = nullptr;
  http::request_parser<http::buffer_body>* parser = nullptr;
  bool reused = false;
  bool fresh_only = false;
  bool may_retry = false;
  unsigned version = 11;
  bool head = false;
  bool has_body = false;
  bool client_keep_alive = true;
  bool expect_continue = false;
  bool client_trailers = false;  // an HTTP/1.1 client that sent TE: trailers
  bool sent_continue = false;    // we answered Expect: 100-continue ourselves
  std::string kept;              // upload bytes read from the client so far
  bool kept_all = true;          // false once they outgrew kReplayKeep
  // Per attempt: the two halves of a full-duplex exchange tell each other.
  BodyResult upload = BodyResult::ok;  // how reading the client's body went
  bool upload_over = false;            // the upload half has finished
  bool response_over = false;          // the response half has finished
  bool response_started = false;       // a response byte went to the client
  std::shared_ptr<H2Conn> leased;      // the attempt's connection until released
  void release_stream() {
    if (leased) pool->release(std::exchange(leased, nullptr));
  }
};

bool is_parse_error(const error_code& ec);
// The status line and fields of an HTTP/1.x head.
std::string serialize_head(const http::response_header<>& h, unsigned version);

class ClientSession : public std::enable_shared_from_this<ClientSession> {
 public:
  // socket: from a listener of open_listener(), so TCP_NODELAY is already set.
  ClientSession(tcp::socket socket, const tcp::endpoint& peer, std::shared_ptr<Runtime> rt)
      : stream_(std::move(socket)), rt_(std::move(rt)), client_(endpoint_text(peer)) {
    error_code ec;
    // For ClientStream::try_write; Asio's own operations do not depend on it.
    stream_.socket().non_blocking(true, ec);
  }

  asio::awaitable<void> run();

 private:
  using RequestParser = http::request_parser<http::buffer_body>;

  asio::awaitable<error_code> read_header(RequestParser& parser);
  asio::awaitable<bool> handle(RequestParser& parser, const Snapshot& snap);
  // A CONNECT request; true when the loop goes on, reading requests inside the
  // client's TLS (intercepted_ is set then).
  asio::awaitable<bool> connect(RequestParser& parser, const Snapshot& snap, AccessEntry& e);
  // After the 200: the ClientHello, peeked, then TLS with a minted certificate.
  asio::awaitable<bool> intercept(const HostPort& target, const Snapshot& snap, AccessEntry& e);
  asio::awaitable<bool> exchange(RequestParser& parser, const Snapshot& snap, RouteDecision& d,
                                 AccessEntry& e);
  asio::awaitable<BodyResult> relay_request_body(RequestParser& parser, UpstreamConn& conn);
  // One client body chunk into body_buf(): {result, bytes, last}.
  asio::awaitable<std::tuple<BodyResult, std::size_t, bool>> read_client_chunk(
      RequestParser& parser);
  asio::awaitable<H2Attempt> exchange_h2(H2Exchange& x, std::shared_ptr<H2Conn> h2);
  asio::awaitable<void> upload_h2(H2Exchange& x, std::shared_ptr<H2Stream> st);
  asio::awaitable<H2Attempt> respond_h2(H2Exchange& x, std::shared_ptr<H2Stream> st);
  asio::awaitable<void> drain(std::shared_ptr<ConnectionPool> pool,
                              std::shared_ptr<UpstreamConn> conn, const UpstreamSettings& s);
  asio::awaitable<bool> send_interim(const http::response_header<>& h);
  // One gathered write of a response piece: the head when given, the body bytes
  // (chunk-framed when chunked) and, after the last, the chunked terminator with any
  // trailers. Writes nothing when there is nothing to send.
  asio::awaitable<error_code> write_piece(std::string_view head, std::span<const char> body,
                                          bool chunked, bool last,
                                          const std::vector<H2Field>* trailers = nullptr);
  asio::awaitable<void> send_error(errc e, unsigned version, bool close, AccessEntry& entry,
                                   std::string_view detail = {});

  ClientStream stream_;
  std::shared_ptr<Runtime> rt_;
  std::string client_ = "-";
  bool idle_ = false;  // waiting for the first byte of a request; only the strand touches it
  // The CONNECT whose TLS this session terminated: every request since comes from
  // inside it and must name this host and port.
  std::optional<HostPort> intercepted_;
  LastRoute last_route_;  // see route_cached
  std::shared_ptr<ConnectionPool> last_pool_;
  uint64_t last_pool_route_ = 0;  // the last_route_.generation last_pool_ is for
  beast::flat_buffer buffer_;
  // Taken for an exchange and given back while the client idles, so an idle
  // keep-alive connection costs a few hundred bytes, not a body buffer.
  RelayBuffer body_buf_;
  char* body_buf() { return body_buf_.get(); }
  // The response half of a full-duplex HTTP/2 exchange, while body_buf() uploads.
  RelayBuffer resp_buf_;
  char* resp_buf() { return resp_buf_.get(); }
};

}  // namespace upkeep::downstream
