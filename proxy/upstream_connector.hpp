// Resolve, connect, TLS handshake with verification and ALPN: everything needed to
// turn an Origin into a ready UpstreamConn, bounded by connect_timeout.
#pragma once

#include <memory>
#include <string>

#include "error.hpp"
#include "origin.hpp"
#include "router.hpp"
#include "upstream_h1.hpp"

namespace upkeep {

struct ConnectOutcome {
  errc error = errc::ok;
  std::string detail;  // for the log: the OS or TLS reason
  std::shared_ptr<UpstreamConn> conn;
};

// deny: access.deny_networks is applied to every resolved address (and connect_to).
asio::awaitable<ConnectOutcome> connect_upstream(asio::any_io_executor ex, const Origin& origin,
                                                 const UpstreamSettings& settings,
                                                 std::shared_ptr<const Router> deny,
                                                 uint64_t conn_id);

}  // namespace upkeep
