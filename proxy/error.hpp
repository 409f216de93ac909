// upkeep's own error codes. On the request path errors are values (error_code),
// never exceptions; each code knows who caused it, which HTTP status the client
// gets, and the short machine-readable reason sent in the Upkeep-Error header.
#pragma once

#include <string_view>
#include <system_error>

namespace upkeep {

enum class errc {
  ok = 0,
  // client side
  bad_request = 1,       // malformed request or smuggling attempt -> 400
  header_too_large,      // -> 431
  auth_required,         // -> 407
  host_denied,           // access.allow / access.deny -> 403
  network_denied,        // access.deny_networks after resolution -> 403
  connect_denied,        // CONNECT refused by policy or port -> 403
  loop_detected,         // our own Via token came back -> 508
  method_not_supported,  // -> 501
  client_closed,         // the client went away; nothing is sent
  client_timeout,        // header/idle timeout on the client side -> 408
  misdirected,           // an intercepted request for another host than its CONNECT -> 421
  // pool
  queue_full,     // -> 503 + Retry-After
  queue_timeout,  // -> 504
  // origin side
  dns_failed,           // -> 502
  connect_failed,       // -> 502
  connect_timeout,      // -> 502
  tls_failed,           // -> 502
  parent_proxy_failed,  // upstream.proxy refused the CONNECT or could not be reached -> 502
  upstream_closed,      // the origin closed before a complete response -> 502
  upstream_protocol,    // the origin sent something we cannot parse -> 502
  response_timeout,     // -> 504
  // internal
  shutting_down,  // -> 503
  internal,       // -> 500
};

enum class error_source { client, pool, origin, internal };

const std::error_category& upkeep_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), upkeep_category()};
}

// HTTP status a client receives for this error (0: send nothing, e.g. client_closed).
int http_status(errc e) noexcept;
// Short machine-readable reason for the Upkeep-Error header ("queue_full", ...).
std::string_view reason_token(errc e) noexcept;
error_source source_of(errc e) noexcept;

}  // namespace upkeep

template <>
struct std::is_error_code_enum<upkeep::errc> : std::true_type {};
