#include "deadline.hpp"

#include <doctest/doctest.h>

#include <array>
#include <atomic>
#include <future>
#include <thread>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>

using namespace upkeep;

namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using clock_type = std::chrono::steady_clock;
using error_code = boost::system::error_code;
using namespace std::chrono_literals;

// A connected loopback pair: `near` is the socket under the deadline.
struct Pair {
  tcp::socket near;
  tcp::socket far;

  Pair(const asio::any_io_executor& near_ex, asio::io_context& ioc) : near(near_ex), far(ioc) {
    tcp::acceptor a(ioc, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
    near.connect(a.local_endpoint());
    a.accept(far);
  }
};

struct ReadResult {
  error_code ec;
  std::size_t n = 0;
  clock_type::duration took{};
  bool fired = false;
};

// One read on p.near, the io_context running until it completes.
ReadResult read_once(asio::io_context& ioc, Pair& p, const Deadline& d,
                     clock_type::time_point start) {
  std::array<char, 16> buf{};
  ReadResult r;
  p.near.async_read_some(asio::buffer(buf), [&](error_code ec, std::size_t n) {
    r = {ec, n, clock_type::now() - start, d.fired()};
  });
  ioc.run_for(5s);
  return r;
}

}  // namespace

TEST_CASE("a deadline that passes cancels the pending read and shuts the socket down") {
  asio::io_context ioc;
  Pair p(ioc.get_executor(), ioc);
  Deadline d(ioc.get_executor(), p.near);
  const auto start = clock_type::now();
  d.expires_after(30ms);
  const ReadResult r = read_once(ioc, p, d, start);
  CHECK(r.ec == asio::error::operation_aborted);
  CHECK(r.fired);
  CHECK(r.took >= 30ms);
  // The peer sees the shutdown as the end of the stream.
  std::array<char, 16> buf{};
  error_code ec;
  p.far.read_some(asio::buffer(buf), ec);
  CHECK(ec == asio::error::eof);
}

TEST_CASE("a deadline moved later waits for the later time; expires_never disarms it") {
  asio::io_context ioc;
  Pair p(ioc.get_executor(), ioc);
  Deadline d(ioc.get_executor(), p.near);
  const auto start = clock_type::now();
  d.expires_after(20ms);
  d.expires_after(150ms);  // the 20 ms wait stays armed and re-arms when it fires
  const ReadResult first = read_once(ioc, p, d, start);
  CHECK(first.ec == asio::error::operation_aborted);
  CHECK(first.took >= 150ms);
  CHECK(first.fired);

  // A fresh pair: disarmed before its time, the read completes with the peer's data.
  asio::io_context ioc2;
  Pair q(ioc2.get_executor(), ioc2);
  Deadline d2(ioc2.get_executor(), q.near);
  d2.expires_after(20ms);
  d2.expires_never();
  asio::steady_timer later(ioc2, 80ms);  // past the armed wait
  later.async_wait([&](error_code) { asio::write(q.far, asio::buffer("hi", 2)); });
  const ReadResult second = read_once(ioc2, q, d2, clock_type::now());
  CHECK_FALSE(second.ec);
  CHECK(second.n == 2);
  CHECK_FALSE(second.fired);
}

TEST_CASE("a deadline outlived by its armed wait does nothing when the wait ends") {
  asio::io_context ioc;
  Pair p(ioc.get_executor(), ioc);
  auto d = std::make_unique<Deadline>(ioc.get_executor(), p.near);
  d->expires_after(10ms);
  d.reset();
  std::array<char, 16> buf{};
  ReadResult r;
  asio::steady_timer later(ioc, 60ms);
  later.async_wait([&](error_code) { asio::write(p.far, asio::buffer("ok", 2)); });
  p.near.async_read_some(asio::buffer(buf), [&](error_code ec, std::size_t n) {
    r = {ec, n, {}, false};
  });
  ioc.run_for(5s);
  CHECK_FALSE(r.ec);
  CHECK(r.n == 2);
}

// A pooled connection is opened on the pool's strand and then used on a client
// session's. The expiry must run on the session's strand, which is using the socket
// and the deadline meanwhile; under ThreadSanitizer a handler left on the opening
// strand is a reported race.
TEST_CASE("after a hand-over the expiry runs on the new owner, beside nothing") {
  asio::io_context ioc;
  auto opener = asio::make_strand(ioc);
  auto user = asio::make_strand(ioc);
  Pair p(opener, ioc);
  Deadline d(opener, p.near);
  std::array<char, 16> buf{};
  std::promise<ReadResult> done;
  std::atomic<int> touches{0};
  const auto start = clock_type::now();

  asio::post(opener, [&]() {
    d.expires_after(40ms);  // armed on the opener, as the connector does
    d.expires_never();
    d.hand_over(user);
    asio::post(user, [&]() {
      d.expires_after(60ms);  // later than the armed wait: it stays armed
      p.near.async_read_some(asio::buffer(buf),
                             asio::bind_executor(user, [&](error_code ec, std::size_t n) {
                               done.set_value({ec, n, clock_type::now() - start, d.fired()});
                             }));
      // The user is busy with the socket (as an exchange is between its reads)
      // and keeps moving the deadline while the armed wait comes due on the
      // opener's strand: one handler, so nothing orders it against that wait.
      asio::post(user, [&]() {
        const auto until = clock_type::now() + 60ms;
        while (clock_type::now() < until) {
          d.expires_at(until);
          ++touches;
        }
      });
    });
  });

  std::thread t1([&]() { ioc.run_for(5s); });
  std::thread t2([&]() { ioc.run_for(5s); });
  auto fut = done.get_future();
  REQUIRE(fut.wait_for(5s) == std::future_status::ready);
  auto r = fut.get();
  ioc.stop();
  t1.join();
  t2.join();
  CHECK(r.ec == asio::error::operation_aborted);
  CHECK(r.fired);
  CHECK(r.took >= 60ms);
  CHECK(touches.load() > 0);
}
