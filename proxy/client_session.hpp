// One downstream (client) connection: reads requests, routes them, runs each
// exchange against a pooled upstream connection, relays the response. Everything
// for one client runs as one coroutine on its own strand.
#pragma once

#include <memory>

#include <boost/asio/ip/tcp.hpp>

#include "runtime.hpp"

namespace upkeep {

// Starts the session on the socket's executor, which must be a strand of its own;
// the session owns itself until the client is done.
void start_client_session(asio::ip::tcp::socket socket, const asio::ip::tcp::endpoint& peer,
                          std::shared_ptr<Runtime> rt);

}  // namespace upkeep
