#include "dial.hpp"

#include <memory>
#include <optional>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>

#include "router.hpp"

namespace upkeep {
namespace {

namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using clock = std::chrono::steady_clock;
using error_code = boost::system::error_code;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

// Closes a socket when the deadline passes, for operations that have no timeout of
// their own. The timer's handler may already be queued when the guard goes, so it
// checks a flag the guard clears rather than trusting cancel().
class SocketDeadline {
 public:
  SocketDeadline(tcp::socket& s, clock::time_point deadline)
      : timer_(s.get_executor()), live_(std::make_shared<bool>(true)) {
    timer_.expires_at(deadline);
    timer_.async_wait([&s, live = live_, fired = fired_](error_code ec) {
      if (ec || !*live) return;
      *fired = true;
      error_code ignored;
      s.close(ignored);
    });
  }
  ~SocketDeadline() {
    *live_ = false;
    timer_.cancel();
  }
  SocketDeadline(const SocketDeadline&) = delete;
  SocketDeadline& operator=(const SocketDeadline&) = delete;
  bool fired() const noexcept { return *fired_; }

 private:
  asio::steady_timer timer_;
  std::shared_ptr<bool> live_;
  std::shared_ptr<bool> fired_ = std::make_shared<bool>(false);
};

// One Happy Eyeballs race (RFC 8305 §5): an attempt starts every kAttemptDelay, or
// at once when the one before fails; the first to connect wins, the others are
// closed. Everything runs on the dialling socket's executor, which is also the
// awaiting coroutine's (a strand, or the io_context with one thread), so the state
// needs no lock; the coroutine waits on `signal` until `done`.
class Race : public std::enable_shared_from_this<Race> {
 public:
  Race(const asio::any_io_executor& ex, std::vector<tcp::endpoint> order)
      : signal(ex), ex_(ex), order_(std::move(order)), next_(ex), deadline_(ex) {
    signal.expires_at(clock::time_point::max());
  }

  void start(clock::time_point deadline) {
    deadline_.expires_at(deadline);
    deadline_.async_wait([self = shared_from_this()](error_code ec) {
      if (!ec) self->finish(asio::error::timed_out);
    });
    launch();
  }

  // The winning socket, once done with no error.
  tcp::socket& winner() { return *attempts_[winner_]; }

  asio::steady_timer signal;
  bool done = false;
  error_code result;

 private:
  void launch() {
    const std::size_t i = attempts_.size();
    attempts_.push_back(std::make_unique<tcp::socket>(ex_));
    ++running_;
    attempts_[i]->async_connect(
        order_[i], [self = shared_from_this(), i](error_code ec) { self->on_connect(i, ec); });
    if (attempts_.size() == order_.size()) {
      next_.cancel();
      return;
    }
    next_.expires_after(kAttemptDelay);
    next_.async_wait([self = shared_from_this(), started = attempts_.size()](error_code ec) {
      // A failure may have started the next attempt already.
      if (!ec && !self->done && self->attempts_.size() == started) self->launch();
    });
  }

  void on_connect(std::size_t i, error_code ec) {
    --running_;
    if (done) return;
    if (!ec) {
      winner_ = i;
      finish({});
      return;
    }
    last_ = ec;
    if (attempts_.size() < order_.size()) {
      launch();
    } else if (running_ == 0) {
      finish(last_);
    }
  }

  void finish(error_code ec) {
    if (done) return;
    done = true;
    result = ec;
    next_.cancel();
    deadline_.cancel();
    for (std::size_t i = 0; i < attempts_.size(); ++i) {
      error_code ignored;
      if ((ec || i != winner_) && attempts_[i]->is_open()) attempts_[i]->close(ignored);
    }
    signal.cancel();
  }

  asio::any_io_executor ex_;
  std::vector<tcp::endpoint> order_;
  asio::steady_timer next_;
  asio::steady_timer deadline_;
  std::vector<std::unique_ptr<tcp::socket>> attempts_;
  std::size_t running_ = 0;
  std::size_t winner_ = 0;
  error_code last_;
};

}  // namespace

asio::awaitable<error_code> connect_first(tcp::socket& out, std::vector<tcp::endpoint> order,
                                          clock::time_point deadline) {
  if (order.empty()) co_return asio::error::host_not_found;
  auto race = std::make_shared<Race>(out.get_executor(), std::move(order));
  race->start(deadline);
  while (!race->done)
    co_await race->signal.async_wait(use_tuple);
  if (!race->result) out = std::move(race->winner());
  co_return race->result;
}

namespace {

// Resolves host and connects to the first of its allowed addresses to answer.
asio::awaitable<DialOutcome> dial_direct(tcp::socket& socket, const std::string& host,
                                         uint16_t port, const Router* deny,
                                         clock::time_point deadline) {
  DialOutcome out;
  // Resolution has no timeout of its own. The timer's handler may be queued already
  // when this returns, so it looks at `state`, which outlives the resolver.
  struct Watch {
    tcp::resolver* resolver;
    bool timed_out = false;
  };
  tcp::resolver resolver(socket.get_executor());
  auto state = std::make_shared<Watch>(Watch{&resolver});
  asio::steady_timer timer(socket.get_executor());
  timer.expires_at(deadline);
  timer.async_wait([state](error_code ec) {
    if (ec || !state->resolver) return;
    state->timed_out = true;
    state->resolver->cancel();
  });
  auto [rec, results] = co_await resolver.async_resolve(host, std::to_string(port),
                                                        tcp::resolver::numeric_service, use_tuple);
  state->resolver = nullptr;
  timer.cancel();
  const bool timed_out = state->timed_out;
  if (rec) {
    out.error = timed_out ? errc::connect_timeout : errc::dns_failed;
    out.detail = timed_out ? "resolving " + host + " timed out" : rec.message();
    co_return out;
  }
  std::vector<tcp::endpoint> endpoints;
  for (const auto& r : results) {
    if (deny && deny->address_denied(address_bytes(r.endpoint().address()))) continue;
    endpoints.push_back(r.endpoint());
  }
  if (endpoints.empty()) {
    out.error = errc::network_denied;
    out.detail = host + " resolves only to denied networks";
    co_return out;
  }
  if (auto ec = co_await connect_first(socket, interleave_families(endpoints), deadline)) {
    out.error = ec == asio::error::timed_out ? errc::connect_timeout : errc::connect_failed;
    out.detail =
        ec == asio::error::timed_out ? "connecting to " + host + " timed out" : ec.message();
  }
  co_return out;
}

std::string authority(const std::string& host, uint16_t port) {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

// A CONNECT through the parent; on success `socket` is a tunnel to host:port.
asio::awaitable<DialOutcome> dial_parent(tcp::socket& socket, const std::string& host,
                                         uint16_t port, const ParentProxy& parent,
                                         const Router* deny, clock::time_point deadline) {
  const std::string parent_name = parent.address.to_string();
  DialOutcome out;
  // The parent resolves the origin, so deny_networks can only be applied here to an
  // origin given as an address.
  error_code aec;
  auto literal = asio::ip::make_address(host, aec);
  if (!aec && deny && deny->address_denied(address_bytes(literal))) {
    out.error = errc::network_denied;
    out.detail = host + " is in a denied network";
    co_return out;
  }
  auto reached =
      co_await dial_direct(socket, parent.address.host, parent.address.port, nullptr, deadline);
  if (reached.error != errc::ok) {
    out.error = errc::parent_proxy_failed;
    out.detail = "cannot reach parent proxy " + parent_name + ": " + reached.detail;
    co_return out;
  }
  error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);

  SocketDeadline guard(socket, deadline);
  const std::string target = authority(host, port);
  std::string request = "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n";
  if (!parent.authorization.empty())
    request += "Proxy-Authorization: " + parent.authorization + "\r\n";
  request += "\r\n";
  auto fail = [&](std::string why) {
    out.error = errc::parent_proxy_failed;
    out.detail = guard.fired() ? "parent proxy " + parent_name + " did not answer in time"
                               : "parent proxy " + parent_name + " " + std::move(why);
    error_code ignored2;
    socket.close(ignored2);
    return out;
  };
  if (auto [wec, wn] = co_await asio::async_write(socket, asio::buffer(request), use_tuple); wec)
    co_return fail("closed the connection: " + wec.message());

  boost::beast::flat_buffer buf(16 * 1024);  // a CONNECT answer is a few lines
  http::response_parser<http::empty_body> parser;
  parser.skip(true);  // a 2xx to CONNECT has no body whatever its headers say
  auto [rec, rn] = co_await http::async_read_header(socket, buf, parser, use_tuple);
  if (rec == http::error::end_of_stream || rec == asio::error::eof)
    co_return fail("closed the connection before answering CONNECT");
  if (rec) co_return fail("sent no valid answer to CONNECT: " + rec.message());
  const auto& res = parser.get();
  const unsigned status = res.result_int();
  if (status / 100 != 2) {
    std::string reason(res.reason());
    co_return fail("answered CONNECT " + target + " with " + std::to_string(status) +
                   (reason.empty() ? "" : " " + reason));
  }
  // The origin speaks only after we do, so anything here came from the parent.
  if (buf.size() > 0) co_return fail("sent bytes after its 2xx answer to CONNECT");
  co_return out;
}

}  // namespace

std::vector<uint8_t> address_bytes(const asio::ip::address& a) {
  if (a.is_v4()) {
    auto b = a.to_v4().to_bytes();
    return {b.begin(), b.end()};
  }
  auto b = a.to_v6().to_bytes();
  return {b.begin(), b.end()};
}

std::vector<tcp::endpoint> interleave_families(const std::vector<tcp::endpoint>& endpoints) {
  if (endpoints.empty()) return {};
  const bool first_v6 = endpoints.front().address().is_v6();
  std::vector<tcp::endpoint> first, second;
  for (const auto& e : endpoints)
    (e.address().is_v6() == first_v6 ? first : second).push_back(e);
  std::vector<tcp::endpoint> out;
  out.reserve(endpoints.size());
  for (std::size_t i = 0; i < std::max(first.size(), second.size()); ++i) {
    if (i < first.size()) out.push_back(first[i]);
    if (i < second.size()) out.push_back(second[i]);
  }
  return out;
}

asio::awaitable<DialOutcome> dial(tcp::socket& socket, const std::string& host, uint16_t port,
                                  const UpstreamSettings& settings, const Router* deny,
                                  clock::time_point deadline) {
  if (settings.parent)
    co_return co_await dial_parent(socket, host, port, *settings.parent, deny, deadline);
  co_return co_await dial_direct(socket, host, port, deny, deadline);
}

}  // namespace upkeep
