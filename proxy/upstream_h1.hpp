// One upstream connection speaking HTTP/1.1 over TLS or plain TCP.
//
// Thread ownership: while pooled and idle the ConnectionPool's strand owns it (it
// keeps a readiness wait on the raw socket and looks through TLS only when that
// fires, on the strand); while leased, exactly one client session owns it.
// Ownership moves only by posting, never by sharing, so the SSL engine is never
// touched by two threads without a hand-off between them.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>

#include "upstream_stream.hpp"

namespace upkeep {

struct H2Field;

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using error_code = boost::system::error_code;

class UpstreamConn {
 public:
  UpstreamConn(uint64_t id, std::unique_ptr<UpstreamStream> stream, std::string protocol)
      : id_(id), stream_(std::move(stream)), protocol_(std::move(protocol)) {}

  uint64_t id() const noexcept { return id_; }
  const std::string& protocol() const noexcept { return protocol_; }  // ALPN result
  UpstreamStream& stream() noexcept { return *stream_; }
  // The ALPN said h2: the transport moves to an H2Conn and this object is spent.
  std::unique_ptr<UpstreamStream> take_stream() noexcept { return std::move(stream_); }

  // --- one HTTP/1.1 exchange at a time ---
  // Starts a new exchange: takes the prepared request header. If body_follows, the
  // body is sent with write_body (chunked framing when req.chunked() is set).
  asio::awaitable<error_code> write_header(const http::request_header<>& h, bool body_follows);
  asio::awaitable<error_code> write_body(const char* data, std::size_t n, bool last);
  // Waits up to `d` for the first response bytes (true), or gives up (false) so an
  // Expect: 100-continue body can be sent to an origin that never answers 100.
  asio::awaitable<bool> wait_response(std::chrono::steady_clock::duration d);

  // Reads the next response head (a 1xx head too: call again for the final one).
  asio::awaitable<error_code> read_header(bool head_request,
                                          std::chrono::steady_clock::duration timeout);
  http::response_header<>& response() { return parser_->get().base(); }
  bool response_done() const { return parser_ && parser_->is_done(); }
  // Received any byte of a response during this exchange (a retry is then unsafe).
  bool got_response_bytes() const { return got_bytes_; }
  // Body bytes into buf; {ec, n}. n == 0 with no error only when the body is done.
  asio::awaitable<std::pair<error_code, std::size_t>> read_body(char* buf, std::size_t n);
  std::optional<uint64_t> content_length_remaining() const;
  // Body delimited by the server closing the connection (no length, not chunked).
  bool response_until_close() const;

  // The explicit reuse decision (DESIGN.md #2): both messages complete, neither side
  // asked to close, no protocol switch (101), and no byte read beyond the response.
  // An Upgrade field on any other response is an advertisement (RFC 9110 §7.8:
  // Apache with mod_http2 sends one on every HTTP/1.1 response) and changes nothing.
  bool reusable() const;
  // Why a connection that is not reusable goes: the server said `Connection: close`
  // (or ends the body by closing) -> server_closed, else error.
  bool server_closing() const;

  // Trailer fields of a chunked response, once it is done: those the parser added to
  // the head after mark_trailer_start(), called once the head has been relayed (the
  // relay edits the same fields), less what may not be a trailer (RFC 9110 §6.5.1).
  void mark_trailer_start() noexcept;
  std::vector<H2Field> trailers() const;

  // Bounds the next operations; beast::error::timeout when it fires.
  void expires_after(std::chrono::steady_clock::duration d) { stream_->expires_after(d); }
  void expires_never() { stream_->expires_never(); }
  void close() noexcept;
  // Idle in the pool: the read buffer and the last exchange's messages go back to
  // the allocator (64 KiB and more per connection, with one idle connection to each
  // of many origins).
  void release_idle_memory();
  bool has_buffered_bytes() const noexcept { return buffer_.size() != 0 || stream_->has_pending(); }
  // Between exchanges: has the server closed, or sent what no request asked for?
  // (UpstreamStream::check_idle; bytes already parsed into our buffer are stray.)
  UpstreamStream::Idle idle_state() noexcept {
    return buffer_.size() != 0 ? UpstreamStream::Idle::stray_bytes : stream_->check_idle();
  }

  // Bookkeeping by the pool.
  uint64_t exchanges = 0;
  uint64_t watch_generation = 0;
  uint64_t pool_id = 0;  // the PoolCore ConnId

 private:
  uint64_t id_;
  std::unique_ptr<UpstreamStream> stream_;
  std::string protocol_;
  beast::flat_buffer buffer_{64 * 1024};
  std::string head_;  // the request head being sent; kept for its capacity
  std::optional<http::response_parser<http::buffer_body>> parser_;
  bool request_done_ = false;
  bool request_close_ = false;
  bool request_chunked_ = false;
  bool got_bytes_ = false;
  bool broken_ = false;
  std::size_t trailer_start_ = 0;  // fields in the head when it was relayed
};

}  // namespace upkeep
