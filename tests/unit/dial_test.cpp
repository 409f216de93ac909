#include "dial.hpp"

#include <doctest/doctest.h>

#include <optional>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

using namespace upkeep;

namespace {

using tcp = asio::ip::tcp;
using clock_type = std::chrono::steady_clock;
using error_code = boost::system::error_code;

// A listener whose accept queue is full: the kernel drops further SYNs, so a connect
// to it neither succeeds nor fails, like an address black-holed on the way.
struct Blackhole {
  tcp::acceptor acceptor;
  tcp::socket filler;
  tcp::endpoint endpoint;

  Blackhole(asio::io_context& ioc, const asio::ip::address& a) : acceptor(ioc), filler(ioc) {
    tcp::endpoint ep(a, 0);
    acceptor.open(ep.protocol());
    acceptor.bind(ep);
    acceptor.listen(0);  // room for one connection, never accepted
    endpoint = acceptor.local_endpoint();
    filler.connect(endpoint);
  }
};

// A port nobody listens on: connects to it are refused at once.
tcp::endpoint closed_port(asio::io_context& ioc) {
  tcp::acceptor a(ioc, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  auto ep = a.local_endpoint();
  a.close();
  return ep;
}

bool has_ipv6_loopback(asio::io_context& ioc) {
  error_code ec;
  tcp::acceptor a(ioc);
  a.open(tcp::v6(), ec);
  if (!ec) a.bind(tcp::endpoint(asio::ip::address_v6::loopback(), 0), ec);
  return !ec;
}

struct Raced {
  error_code ec;
  std::chrono::milliseconds took{};
  std::optional<tcp::endpoint> remote;
};

Raced race(asio::io_context& ioc, std::vector<tcp::endpoint> order,
           std::chrono::milliseconds budget) {
  Raced out;
  tcp::socket socket(ioc);
  const auto start = clock_type::now();
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        out.ec = co_await connect_first(socket, std::move(order), start + budget);
      },
      [](std::exception_ptr e) {
        if (e) std::rethrow_exception(e);
      });
  ioc.restart();
  ioc.run();
  out.took = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - start);
  if (!out.ec) out.remote = socket.remote_endpoint();
  return out;
}

tcp::endpoint ep(const char* a, uint16_t port) {
  return {asio::ip::make_address(a), port};
}

}  // namespace

TEST_CASE("interleave_families alternates families from the first one's") {
  const std::vector<tcp::endpoint> v6_first{ep("2001:db8::1", 1), ep("2001:db8::2", 1),
                                            ep("192.0.2.1", 1), ep("192.0.2.2", 1)};
  CHECK(interleave_families(v6_first) ==
        std::vector<tcp::endpoint>{ep("2001:db8::1", 1), ep("192.0.2.1", 1), ep("2001:db8::2", 1),
                                   ep("192.0.2.2", 1)});
  const std::vector<tcp::endpoint> v4_first{ep("192.0.2.1", 1), ep("2001:db8::1", 1),
                                            ep("2001:db8::2", 1)};
  CHECK(interleave_families(v4_first) ==
        std::vector<tcp::endpoint>{ep("192.0.2.1", 1), ep("2001:db8::1", 1), ep("2001:db8::2", 1)});
  const std::vector<tcp::endpoint> one_family{ep("192.0.2.2", 1), ep("192.0.2.1", 1)};
  CHECK(interleave_families(one_family) == one_family);
}

TEST_CASE("connect_first: a black-holed first address costs one attempt delay") {
  asio::io_context ioc;
  // The family the first address is in does not matter to the race; ::1 where the
  // machine has it, as a dual-stack name's first answer usually is.
  const auto hole_addr = has_ipv6_loopback(ioc)
                             ? asio::ip::address(asio::ip::address_v6::loopback())
                             : asio::ip::address(asio::ip::address_v4::loopback());
  Blackhole hole(ioc, hole_addr);
  // The fixture must really black-hole, or this test proves nothing.
  REQUIRE(race(ioc, {hole.endpoint}, std::chrono::milliseconds(300)).ec == asio::error::timed_out);

  tcp::acceptor good(ioc, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  auto r = race(ioc, {hole.endpoint, good.local_endpoint()}, std::chrono::seconds(10));
  REQUIRE_FALSE(r.ec);
  CHECK(r.remote == good.local_endpoint());
  CHECK(r.took >= kAttemptDelay - std::chrono::milliseconds(10));
  CHECK(r.took < std::chrono::seconds(3));  // not the 10 s deadline
}

TEST_CASE("connect_first: a refused address moves on at once") {
  asio::io_context ioc;
  tcp::acceptor good(ioc, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  auto r = race(ioc, {closed_port(ioc), good.local_endpoint()}, std::chrono::seconds(10));
  REQUIRE_FALSE(r.ec);
  CHECK(r.remote == good.local_endpoint());
  CHECK(r.took < kAttemptDelay);
}

TEST_CASE("connect_first: every attempt refused gives the refusal, every one silent the deadline") {
  asio::io_context ioc;
  auto refused = race(ioc, {closed_port(ioc), closed_port(ioc)}, std::chrono::seconds(10));
  CHECK(refused.ec == asio::error::connection_refused);
  CHECK(refused.took < std::chrono::seconds(3));

  Blackhole hole(ioc, asio::ip::address_v4::loopback());
  auto silent = race(ioc, {hole.endpoint, hole.endpoint}, std::chrono::milliseconds(400));
  CHECK(silent.ec == asio::error::timed_out);
  CHECK(silent.took >= std::chrono::milliseconds(390));
  CHECK(silent.took < std::chrono::seconds(3));

  CHECK(race(ioc, {}, std::chrono::seconds(1)).ec == asio::error::host_not_found);
}
