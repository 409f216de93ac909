// The proxy's and the admin endpoint's listening sockets.
#pragma once

#include <memory>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "config.hpp"

namespace upkeep {

// A listening socket on hp, set up so that what every accepted connection needs is
// inherited from it (TCP_NODELAY: Linux copies it to each accepted socket, which
// saves a setsockopt per connection, a few per cent of a request that opens its own).
// Throws ConfigError("ADDR:PORT: reason") on failure; the caller decides whether that
// is fatal (start-up) or a failed reload.
std::shared_ptr<boost::asio::ip::tcp::acceptor> open_listener(boost::asio::io_context& ioc,
                                                              const HostPort& hp);

}  // namespace upkeep
