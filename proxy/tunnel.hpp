// CONNECT: a blind byte relay to host:port. It cannot be pooled; it is counted.
#pragma once

#include <boost/beast/core/flat_buffer.hpp>

#include "access_log.hpp"
#include "client_stream.hpp"
#include "metrics.hpp"
#include "runtime.hpp"

namespace upkeep {

// Connects (as dial() does: the route's parent proxy, access.deny_networks,
// connect_timeout), answers
// "200 Connection established" (unless `answered`: an interception that turned into
// a tunnel after the 200), then relays both ways with half-close until both sides
// are done. Returns the error to answer with if the connect failed (nothing has been
// sent to the client then, unless answered), with `detail` for its body;
// errc::ok once the tunnel has run.
asio::awaitable<errc> run_tunnel(ClientStream& client, beast::flat_buffer& pending,
                                 const HostPort& target, const Snapshot& snap, AccessEntry& e,
                                 metrics::TunnelReason reason, std::string& detail,
                                 bool answered = false);

}  // namespace upkeep
