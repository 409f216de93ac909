#include "upstream_h1.hpp"

#include <array>
#include <span>
#include <string_view>
#include <tuple>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http/read.hpp>

#include "http_rules.hpp"
#include "upstream_h2.hpp"

namespace upkeep {
namespace {
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

}  // namespace

asio::awaitable<error_code> UpstreamConn::write_header(const http::request_header<>& h,
                                                       bool body_follows) {
  parser_.reset();
  got_bytes_ = false;
  request_close_ = !header_keep_alive(h, h.version());
  request_chunked_ = body_follows && header_chunked(h);
  request_done_ = false;
  // The head as one string, written in one TLS record: Beast's serializer walks
  // four buffers per field and was a visible share of an exchange's CPU.
  head_.clear();
  head_ += h.method_string();
  head_ += ' ';
  head_ += h.target();
  head_ += h.version() >= 11 ? " HTTP/1.1\r\n" : " HTTP/1.0\r\n";
  append_fields(head_, h);
  auto [ec, n] = co_await asio::async_write(*stream_, asio::buffer(head_), use_tuple);
  if (ec) {
    broken_ = true;
    co_return ec;
  }
  if (!body_follows) request_done_ = true;
  co_return error_code{};
}

asio::awaitable<error_code> UpstreamConn::write_body(const char* data, std::size_t n, bool last) {
  if (!request_chunked_) {
    error_code ec;
    if (n > 0)
      std::tie(ec, std::ignore) =
          co_await asio::async_write(*stream_, asio::buffer(data, n), use_tuple);
    if (ec) {
      broken_ = true;
      co_return ec;
    }
    if (last) request_done_ = true;
    co_return error_code{};
  }
  const ChunkFrame frame(n, last);
  std::array<asio::const_buffer, 3> bufs;
  std::size_t nb = 0;
  if (n > 0) {
    bufs[nb++] = asio::buffer(frame.size_line().data(), frame.size_line().size());
    bufs[nb++] = asio::buffer(data, n);
  }
  if (!frame.tail.empty()) bufs[nb++] = asio::buffer(frame.tail);
  if (nb > 0) {
    auto [ec, written] =
        co_await asio::async_write(*stream_, std::span(bufs.data(), nb), use_tuple);
    if (ec) {
      broken_ = true;
      co_return ec;
    }
  }
  if (last) request_done_ = true;
  co_return error_code{};
}

asio::awaitable<bool> UpstreamConn::wait_response(std::chrono::steady_clock::duration d) {
  if (buffer_.size() > 0) co_return true;
  // A TLS read, not a readiness wait: on a fresh connection the socket is readable
  // with session tickets long before any response byte. On timeout the pending read
  // is cancelled (safe for a read; the TLS engine keeps what it had) and the
  // caller sends the body. `state` outlives this frame if the timer fires late.
  auto state = std::make_shared<bool>(false);  // true once the read is over
  asio::steady_timer timer(co_await asio::this_coro::executor, d);
  timer.async_wait([this, state](error_code ec) {
    if (!ec && !*state) {
      *state = true;
      error_code ignored;
      stream_->socket().cancel(ignored);
    }
  });
  auto [ec, n] = co_await stream_->async_read_some(buffer_.prepare(16 * 1024), use_tuple);
  const bool timed_out = *state;
  *state = true;
  timer.cancel();
  buffer_.commit(n);
  if (n > 0) co_return true;
  if (timed_out && ec == asio::error::operation_aborted) co_return false;
  if (ec) broken_ = true;
  co_return true;  // EOF or an error: read_header reports it
}

asio::awaitable<error_code> UpstreamConn::read_header(bool head_request,
                                                      std::chrono::steady_clock::duration timeout) {
  // Beast sizes each read by the buffer's free capacity (at least 512 bytes): left
  // at its first small allocation, a 1 MiB body arrives in ~2,000 reads and as many
  // client writes. One full-size buffer per connection keeps reads at 64 KiB.
  buffer_.reserve(buffer_.max_size());
  parser_.emplace();
  parser_->body_limit(boost::none);
  parser_->header_limit(64 * 1024);
  if (head_request) parser_->skip(true);
  stream_->expires_after(timeout);
  auto [ec, n] = co_await http::async_read_header(*stream_, buffer_, *parser_, use_tuple);
  stream_->expires_never();
  if (n > 0 || parser_->got_some()) got_bytes_ = true;
  if (ec) broken_ = true;
  co_return ec;
}

asio::awaitable<std::pair<error_code, std::size_t>> UpstreamConn::read_body(char* buf,
                                                                            std::size_t n) {
  if (parser_->is_done()) co_return std::pair{error_code{}, std::size_t{0}};
  // read_some, not read: a streamed response (SSE, long poll) must reach the client
  // as it arrives, not once a whole buffer is full.
  auto& body = parser_->get().body();
  std::size_t got = 0;
  while (got == 0 && !parser_->is_done()) {
    body.data = buf;
    body.size = n;
    auto [ec, r] = co_await http::async_read_some(*stream_, buffer_, *parser_, use_tuple);
    if (ec == http::error::need_buffer) ec = {};
    got = n - body.size;
    if (ec) {
      broken_ = true;
      co_return std::pair{ec, got};
    }
  }
  co_return std::pair{error_code{}, got};
}

std::optional<uint64_t> UpstreamConn::content_length_remaining() const {
  if (!parser_) return std::nullopt;
  auto r = parser_->content_length_remaining();
  if (r) return *r;
  return std::nullopt;
}

bool UpstreamConn::response_until_close() const {
  return parser_ && !parser_->chunked() && !parser_->content_length() && !parser_->skip() &&
         parser_->need_eof();
}

bool UpstreamConn::reusable() const {
  if (broken_ || !parser_ || !parser_->is_done() || !request_done_ || request_close_) return false;
  // Not parser_->upgrade(): Beast sets it for `Connection: Upgrade` on any message.
  if (!parser_->keep_alive() || parser_->get().result_int() == 101) return false;
  return buffer_.size() == 0;
}

bool UpstreamConn::server_closing() const {
  return parser_ && parser_->is_header_done() && !parser_->keep_alive();
}

void UpstreamConn::mark_trailer_start() noexcept {
  trailer_start_ = 0;
  if (!parser_) return;
  const auto& f = parser_->get().base();
  trailer_start_ = static_cast<std::size_t>(std::distance(f.begin(), f.end()));
}

std::vector<H2Field> UpstreamConn::trailers() const {
  std::vector<H2Field> out;
  if (!parser_ || !parser_->is_done() || !parser_->chunked()) return out;
  const auto& f = parser_->get().base();
  auto it = f.begin();
  for (std::size_t i = 0; i < trailer_start_ && it != f.end(); ++i)
    ++it;
  for (; it != f.end(); ++it) {
    if (!allowed_in_trailer(it->name())) continue;
    out.push_back({std::string(it->name_string()), std::string(it->value())});
  }
  return out;
}

void UpstreamConn::release_idle_memory() {
  if (buffer_.size() != 0) return;
  stream_->release_tls_buffers();
  buffer_.shrink_to_fit();
  parser_.reset();
  head_ = std::string();
}

void UpstreamConn::close() noexcept {
  broken_ = true;
  error_code ec;
  auto& sock = stream_->socket();
  sock.shutdown(asio::ip::tcp::socket::shutdown_both, ec);
  sock.close(ec);
}

}  // namespace upkeep
