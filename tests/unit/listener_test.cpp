#include "listener.hpp"

#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>

using namespace upkeep;
using tcp = boost::asio::ip::tcp;

// The client session no longer sets TCP_NODELAY itself: it relies on the kernel
// copying the listener's option to each accepted socket. If a kernel stopped doing
// so, responses would stall 40 ms behind delayed ACKs; this says so first.
TEST_CASE("accepted connections inherit TCP_NODELAY from open_listener's socket") {
  boost::asio::io_context ioc;
  auto acceptor = open_listener(ioc, HostPort{"127.0.0.1", 0});
  tcp::no_delay on;
  acceptor->get_option(on);
  CHECK(on.value());
  tcp::socket client(ioc);
  client.connect(acceptor->local_endpoint());
  tcp::endpoint peer;
  tcp::socket accepted = acceptor->accept(peer);
  tcp::no_delay inherited;
  accepted.get_option(inherited);
  CHECK(inherited.value());
  // accept's peer is the client's own address, as getpeername would say.
  CHECK(peer == client.local_endpoint());
  CHECK(peer == accepted.remote_endpoint());
}

TEST_CASE("open_listener names the address it could not use") {
  boost::asio::io_context ioc;
  auto first = open_listener(ioc, HostPort{"127.0.0.1", 0});
  const HostPort taken{"127.0.0.1", first->local_endpoint().port()};
  try {
    // SO_REUSEADDR does not let a second socket listen where one listens already.
    open_listener(ioc, taken);
    FAIL("a second listener on a port in use");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).starts_with(taken.to_string() + ": "));
  }
}
