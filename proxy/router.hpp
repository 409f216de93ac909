// Request -> origin + policy. Pure logic over a Config snapshot: routes (first
// match wins), access rules, TLS origination (port_map) and the Host header the
// upstream request carries. No I/O; deny_networks is checked by the connector
// after resolution through address_denied().
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <variant>

#include "config.hpp"
#include "error.hpp"
#include "origin.hpp"

namespace upkeep {

struct RouteDecision {
  Origin origin;                     // pool key
  const UpstreamSettings* settings;  // owned by the Router's Config; valid while it lives
  std::string host_header;           // Host for the upstream request
  std::string path;                  // origin-form target for the upstream request
};

template <class T>
using Routed = std::variant<T, errc>;

class Router {
 public:
  explicit Router(std::shared_ptr<const Config> cfg);

  // A proxied request. target is absolute-form ("http://h[:p]/path?q"; scheme http
  // or https, case-insensitive) or origin-form ("/path?q", the origin then comes
  // from host_header). Errors: bad_request (unparsable target/Host, missing Host
  // for origin-form, userinfo in the URL, ...), host_denied (access.allow/deny).
  Routed<RouteDecision> route(std::string_view target, std::string_view host_header) const;

  // A request inside an intercepted CONNECT to `connect` (SPEC.md "HTTPS
  // interception"): it must name that host and port (absolute https:// URL or Host;
  // else misdirected), and always goes upstream over TLS to that port, whatever a
  // route's tls or port_map say.
  Routed<RouteDecision> route_intercepted(std::string_view target, std::string_view host_header,
                                          const HostPort& connect) const;

  // CONNECT authority ("host:port"). Errors: bad_request, connect_denied (mode deny,
  // or port not in connect_ports), host_denied.
  Routed<HostPort> route_connect(std::string_view authority) const;

  // The upstream settings of the first route matching host and port, else the
  // upstream defaults (for a blind tunnel, which has no RouteDecision).
  const UpstreamSettings& settings_for(std::string_view host, uint16_t port) const;

  // access.allow / access.deny for a host name or IP literal (lower-case compare).
  bool host_allowed(std::string_view host) const;
  // access.deny_networks for a resolved address (4 or 16 bytes, network order;
  // IPv4-mapped IPv6 addresses are checked as IPv4).
  bool address_denied(std::span<const uint8_t> addr) const;

  const Config& config() const noexcept { return *cfg_; }

 private:
  std::shared_ptr<const Config> cfg_;
};

// The last route one client connection's requests took. Programs call the same
// API in a loop, so the next request most often names the same origin: then it
// costs a compare and a path check instead of parsing, access rules, route
// matching and a new pool key (see route_cached).
struct LastRoute {
  std::shared_ptr<const Router> router;  // keeps decision.settings valid
  bool intercepted = false;
  bool origin_form = false;
  std::string key;  // scheme and authority as sent, or the Host header (origin-form)
  RouteDecision decision;
  uint64_t generation = 0;  // bumped whenever `decision` is routed afresh
  // Which state of a shared seed (see route_cached) `decision` equals; 0: none. A
  // seed's own `generation` counts its states from 1.
  uint64_t seed_generation = 0;
};

// router->route() (or route_intercepted() for a request inside `intercepted`)
// through `last`: a request with the same key under the same Router takes the
// last decision with its own path. The decision returned lives in `last` until
// the next call.
//
// `seed`, when given, is a LastRoute shared by the connections one thread serves:
// a miss in `last` is answered from it when it holds the key (a program that opens
// a connection per request then routes once, not per connection), and every
// request routed afresh leaves its decision there. Only for requests outside an
// intercepted CONNECT: those must also match their own CONNECT's target.
Routed<RouteDecision*> route_cached(LastRoute& last, const std::shared_ptr<const Router>& router,
                                    std::string_view target, std::string_view host_header,
                                    const HostPort* intercepted, LastRoute* seed = nullptr);

// Host pattern match: exact (case-insensitive) or "*.example.com" (any subdomain,
// not example.com itself) or "*" (anything).
bool host_matches(std::string_view pattern, std::string_view host) noexcept;

}  // namespace upkeep
