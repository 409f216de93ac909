#include <array>
#include <optional>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include "client_session_impl.hpp"
#include "http_rules.hpp"

namespace upkeep::downstream {

// The status line and fields of an HTTP/1.x head.
std::string serialize_head(const http::response_header<>& h, unsigned version) {
  std::string out;
  out.reserve(256);
  out += version >= 11 ? "HTTP/1.1 " : "HTTP/1.0 ";
  out += std::to_string(h.result_int());
  out += ' ';
  out += h.reason().empty() ? http::obsolete_reason(h.result()) : h.reason();
  out += "\r\n";
  append_fields(out, h);
  return out;
}

asio::awaitable<error_code> ClientSession::write_piece(std::string_view head,
                                                       std::span<const char> body, bool chunked,
                                                       bool last,
                                                       const std::vector<H2Field>* trailers) {
  std::array<asio::const_buffer, 4> bufs;
  std::size_t nb = 0;
  if (!head.empty()) bufs[nb++] = asio::buffer(head.data(), head.size());
  std::optional<ChunkFrame> frame;
  if (chunked) {
    std::string trailer_lines;
    if (last && trailers) {
      for (const auto& t : *trailers) {
        trailer_lines += t.name;
        trailer_lines += ": ";
        trailer_lines += t.value;
        trailer_lines += "\r\n";
      }
    }
    frame.emplace(body.size(), last, trailer_lines);
    if (!body.empty()) {
      bufs[nb++] = asio::buffer(frame->size_line().data(), frame->size_line().size());
    }
  }
  if (!body.empty()) bufs[nb++] = asio::buffer(body.data(), body.size());
  if (frame && !frame->tail.empty()) bufs[nb++] = asio::buffer(frame->tail);
  if (nb == 0) co_return error_code{};
  // Most pieces fit in the socket's send buffer: one attempt at once, and the
  // composed write only for what it did not take.
  error_code ec;
  std::size_t sent = stream_.try_write(std::span(bufs.data(), nb), ec);
  if (ec) co_return ec;
  std::size_t first = 0;
  while (first < nb && sent >= bufs[first].size()) {
    sent -= bufs[first].size();
    ++first;
  }
  if (first == nb) co_return error_code{};
  bufs[first] += sent;
  auto [wec, n] =
      co_await asio::async_write(stream_, std::span(bufs.data() + first, nb - first), use_tuple);
  co_return wec;
}

// 1xx heads go to HTTP/1.1 clients only (RFC 9110 §15.2: not to 1.0 clients).
asio::awaitable<bool> ClientSession::send_interim(const http::response_header<>& h) {
  std::string out = serialize_head(h, 11);
  auto [ec, n] = co_await asio::async_write(stream_, asio::buffer(out), use_tuple);
  co_return !ec;
}

asio::awaitable<void> ClientSession::send_error(errc err, unsigned version, bool close,
                                                AccessEntry& e, std::string_view detail) {
  const int status = http_status(err);
  e.status = status;
  e.error = std::string(reason_token(err));
  if (status != 0) {
    http::response<http::string_body> res{static_cast<http::status>(status),
                                          version >= 11 ? 11u : 10u};
    res.set(http::field::content_type, "text/plain; charset=utf-8");
    res.set("Upkeep-Error", reason_token(err));
    res.set(http::field::via, version >= 11 ? "1.1 upkeep" : "1.0 upkeep");
    if (err == errc::queue_full || err == errc::shutting_down)
      res.set(http::field::retry_after, "1");
    if (err == errc::auth_required) {
      res.set(http::field::proxy_authenticate, "Basic realm=\"upkeep\"");
    }
    std::string body = "upkeep: " + make_error_code(err).message();
    if (!detail.empty()) {
      body += " (";
      body += detail;
      body += ')';
    }
    res.body() = body + "\n";
    res.keep_alive(!close);
    res.prepare_payload();
    e.bytes = res.body().size();
    stream_.expires_after(std::chrono::seconds(10));
    co_await http::async_write(stream_, res, use_tuple);
    stream_.expires_never();
  }
  write_access_log(e);
}

}  // namespace upkeep::downstream
