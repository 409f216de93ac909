// One upstream connection speaking HTTP/1.1 over TLS or plain TCP.
//
// Thread ownership: while pooled and idle the ConnectionPool's strand owns it (it
// keeps only a readiness wait on the raw socket, never an SSL read, so handing it
// over needs no SSL-engine synchronisation); while leased, exactly one client
// session owns it. Ownership moves only by posting, never by sharing.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

namespace upkeep {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using error_code = boost::system::error_code;

// TLS or plain TCP chosen at run time, so Beast's HTTP algorithms are instantiated
// once for upstream connections instead of once per transport.
class UpstreamStream {
 public:
  using executor_type = asio::any_io_executor;
  using tls_type = beast::ssl_stream<beast::tcp_stream>;

  UpstreamStream(executor_type ex, std::shared_ptr<asio::ssl::context> ctx, bool tls)
      : ctx_(std::move(ctx)), stream_(std::move(ex), *ctx_), tls_(tls) {}

  executor_type get_executor() noexcept { return stream_.get_executor(); }
  beast::tcp_stream& tcp() noexcept { return stream_.next_layer(); }
  tls_type& tls_stream() noexcept { return stream_; }
  bool tls() const noexcept { return tls_; }

  template <class MutableBuffers, class Token>
  auto async_read_some(const MutableBuffers& b, Token&& token) {
    if (tls_) return stream_.async_read_some(b, std::forward<Token>(token));
    return stream_.next_layer().async_read_some(b, std::forward<Token>(token));
  }
  template <class ConstBuffers, class Token>
  auto async_write_some(const ConstBuffers& b, Token&& token) {
    if (tls_) return stream_.async_write_some(b, std::forward<Token>(token));
    return stream_.next_layer().async_write_some(b, std::forward<Token>(token));
  }

 private:
  std::shared_ptr<asio::ssl::context> ctx_;  // must outlive stream_
  tls_type stream_;
  bool tls_;
};

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
  asio::awaitable<error_code> write_header(http::request_header<>&& h, bool body_follows);
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
  // asked to close, no upgrade, and no byte read beyond the response.
  bool reusable() const;

  // Bounds the next operations; beast::error::timeout when it fires.
  void expires_after(std::chrono::steady_clock::duration d) { stream_->tcp().expires_after(d); }
  void expires_never() { stream_->tcp().expires_never(); }
  void close() noexcept;
  bool has_buffered_bytes() const noexcept { return buffer_.size() != 0; }

  // Bookkeeping by the pool.
  uint64_t exchanges = 0;
  uint64_t watch_generation = 0;
  uint64_t pool_id = 0;  // the PoolCore ConnId

 private:
  uint64_t id_;
  std::unique_ptr<UpstreamStream> stream_;
  std::string protocol_;
  beast::flat_buffer buffer_{64 * 1024};
  http::request<http::buffer_body> req_;
  std::optional<http::request_serializer<http::buffer_body>> req_sr_;
  std::optional<http::response_parser<http::buffer_body>> parser_;
  bool request_done_ = false;
  bool request_close_ = false;
  bool got_bytes_ = false;
  bool broken_ = false;
};

}  // namespace upkeep
