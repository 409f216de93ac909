// Reaching an origin's host and port over TCP, for pooled connections and blind
// tunnels alike: directly (resolve, then Happy Eyeballs over every allowed address),
// or through the route's parent proxy (upstream.proxy) as a CONNECT tunnel. What
// runs on top (TLS, HTTP) does not know which.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "config.hpp"
#include "error.hpp"

namespace upkeep {

class Router;
namespace asio = boost::asio;

struct DialOutcome {
  errc error = errc::ok;
  std::string detail;  // the OS reason, or what the parent answered; for log and client
};

// An address as Router::address_denied takes it (4 or 16 bytes, network order).
std::vector<uint8_t> address_bytes(const asio::ip::address& a);

// The time the next attempt of a Happy Eyeballs race waits for the ones before it
// (RFC 8305 §5 recommends 250 ms).
inline constexpr std::chrono::milliseconds kAttemptDelay{250};

// RFC 8305 §4: the addresses with their families interleaved, starting with the
// family of the first one, each family keeping its resolver order.
std::vector<asio::ip::tcp::endpoint> interleave_families(
    const std::vector<asio::ip::tcp::endpoint>& endpoints);

// Happy Eyeballs over addresses already in order: attempts start kAttemptDelay
// apart, or at once when the one before fails; the first to connect is moved into
// `out` (closed; its executor, which must be the caller's, runs everything).
// asio::error::timed_out at deadline, else the last attempt's error.
asio::awaitable<boost::system::error_code> connect_first(
    asio::ip::tcp::socket& out, std::vector<asio::ip::tcp::endpoint> order,
    std::chrono::steady_clock::time_point deadline);

// Connects `socket` (closed, its executor used for everything) to host:port by
// `settings`' route: settings.parent set means through that parent proxy. deny
// (may be null): access.deny_networks, applied to every address resolved here.
// The whole of it, resolution and the parent's answer included, ends by deadline.
asio::awaitable<DialOutcome> dial(asio::ip::tcp::socket& socket, const std::string& host,
                                  uint16_t port, const UpstreamSettings& settings,
                                  const Router* deny,
                                  std::chrono::steady_clock::time_point deadline);

}  // namespace upkeep
