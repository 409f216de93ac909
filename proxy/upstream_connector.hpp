// Resolve, connect, TLS handshake with verification and ALPN: everything needed to
// turn an Origin into a ready UpstreamConn, bounded by connect_timeout.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <boost/asio/ip/address.hpp>

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

// An address as Router::address_denied takes it (4 or 16 bytes, network order).
std::vector<uint8_t> address_bytes(const asio::ip::address& a);

// deny: access.deny_networks is applied to every resolved address (and connect_to).
asio::awaitable<ConnectOutcome> connect_upstream(asio::any_io_executor ex, const Origin& origin,
                                                 const UpstreamSettings& settings,
                                                 std::shared_ptr<const Router> deny,
                                                 uint64_t conn_id);

}  // namespace upkeep
