#include "admin.hpp"

#include <iostream>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include "log.hpp"
#include "metrics.hpp"

namespace upkeep {
namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
using tcp = asio::ip::tcp;

http::response<http::string_body> answer(const http::request<http::string_body>& req,
                                         const Runtime& rt) {
  http::response<http::string_body> res{http::status::ok, req.version()};
  res.set(http::field::content_type, "text/plain; charset=utf-8");
  const auto target = req.target();
  const auto path = target.substr(0, target.find('?'));
  const bool ready = !rt.draining.load();
  if (req.method() != http::verb::get && req.method() != http::verb::head) {
    res.result(http::status::method_not_allowed);
    res.set(http::field::allow, "GET, HEAD");
    res.body() = "method not allowed\n";
  } else if (path == "/livez" || path == "/healthz") {
    res.body() = "ok\n";
  } else if (path == "/readyz") {
    if (!ready) res.result(http::status::service_unavailable);
    res.body() = ready ? "ready\n" : "draining\n";
  } else if (path == "/metrics") {
    res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
    res.body() = metrics::Registry::get().render_prometheus();
  } else if (path == "/stats") {
    res.set(http::field::content_type, "application/json");
    res.body() = metrics::Registry::get().render_json(ready);
  } else {
    res.result(http::status::not_found);
    res.body() = "not found\n";
  }
  res.keep_alive(req.keep_alive());
  res.prepare_payload();
  return res;
}

asio::awaitable<void> admin_session(beast::tcp_stream stream, std::shared_ptr<Runtime> rt) {
  beast::flat_buffer buf;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(16 * 1024);
    parser.body_limit(16 * 1024);
    stream.expires_after(std::chrono::seconds(30));
    auto [ec, n] = co_await http::async_read(stream, buf, parser, use_tuple);
    if (ec) co_return;
    auto res = answer(parser.get(), *rt);
    if (parser.get().method() == http::verb::head) res.body().clear();
    auto [wec, wn] = co_await http::async_write(stream, res, use_tuple);
    if (wec || !res.keep_alive()) co_return;
  }
}

}  // namespace

void start_admin_session(tcp::socket socket, std::shared_ptr<Runtime> rt) {
  auto ex = socket.get_executor();
  asio::co_spawn(ex, admin_session(beast::tcp_stream(std::move(socket)), std::move(rt)),
                 asio::detached);
}

int healthcheck(const HostPort& admin) {
  try {
    asio::io_context ioc;
    beast::tcp_stream stream(ioc);
    tcp::resolver resolver(ioc);
    stream.expires_after(std::chrono::seconds(5));
    stream.connect(resolver.resolve(admin.host, std::to_string(admin.port)));
    http::request<http::empty_body> req{http::verb::get, "/readyz", 11};
    req.set(http::field::host, admin.to_string());
    req.keep_alive(false);
    http::write(stream, req);
    beast::flat_buffer buf;
    http::response<http::string_body> res;
    http::read(stream, buf, res);
    std::cout << res.result_int() << ' ' << res.body();
    return res.result() == http::status::ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "upkeep healthcheck: " << admin.to_string() << ": " << e.what() << '\n';
    return 1;
  }
}

}  // namespace upkeep
