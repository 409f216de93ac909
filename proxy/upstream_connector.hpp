// Dial (directly or through the parent proxy), TLS handshake with verification,
// ALPN and resumption: everything needed to turn an Origin into a ready
// UpstreamConn, bounded by connect_timeout.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <boost/asio/ip/address.hpp>

#include "dial.hpp"
#include "error.hpp"
#include "origin.hpp"
#include "router.hpp"
#include "upstream_h1.hpp"

namespace upkeep {

struct ConnectOutcome {
  errc error = errc::ok;
  std::string detail;  // for the log: the OS or TLS reason
  std::shared_ptr<UpstreamConn> conn;
  bool resumed = false;  // the TLS handshake resumed a session from `sessions`
};

// deny: access.deny_networks is applied to every resolved address (and connect_to).
// sessions: the origin's kept TLS session, offered and then replaced by new ones.
asio::awaitable<ConnectOutcome> connect_upstream(asio::any_io_executor ex, const Origin& origin,
                                                 const UpstreamSettings& settings,
                                                 std::shared_ptr<const Router> deny,
                                                 std::shared_ptr<TlsSessions> sessions,
                                                 uint64_t conn_id);

}  // namespace upkeep
