// CONNECT: a blind byte relay to host:port. It cannot be pooled; it is counted.
#pragma once

#include <boost/beast/core/flat_buffer.hpp>

#include "access_log.hpp"
#include "client_stream.hpp"
#include "runtime.hpp"

namespace upkeep {

// Connects (applying access.deny_networks and connect_timeout), answers
// "200 Connection established", then relays both ways with half-close until both
// sides are done. Returns the error to answer with if the connect failed (nothing
// has been sent to the client then); errc::ok once the tunnel has run.
asio::awaitable<errc> run_tunnel(ClientStream& client, beast::flat_buffer& pending,
                                 const HostPort& target, const Snapshot& snap, AccessEntry& e);

}  // namespace upkeep
