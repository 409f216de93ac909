#include "error.hpp"

#include <string>

namespace upkeep {
namespace {

struct info {
  int status;
  std::string_view token;
  std::string_view message;
  error_source source;
};

info describe(errc e) noexcept {
  using s = error_source;
  switch (e) {
    case errc::ok:
      return {200, "ok", "success", s::internal};
    case errc::bad_request:
      return {400, "bad_request", "malformed request", s::client};
    case errc::header_too_large:
      return {431, "header_too_large", "request header fields too large", s::client};
    case errc::auth_required:
      return {407, "auth_required", "proxy authentication required", s::client};
    case errc::host_denied:
      return {403, "host_denied", "host not allowed", s::client};
    case errc::network_denied:
      return {403, "network_denied", "destination network not allowed", s::client};
    case errc::connect_denied:
      return {403, "connect_denied", "CONNECT not allowed", s::client};
    case errc::loop_detected:
      return {508, "loop_detected", "request loops back to upkeep", s::client};
    case errc::method_not_supported:
      return {501, "method_not_supported", "method not supported", s::client};
    case errc::client_closed:
      return {0, "client_closed", "client closed connection", s::client};
    case errc::client_timeout:
      return {408, "client_timeout", "client timed out", s::client};
    case errc::misdirected:
      return {421, "misdirected", "request for another host than its CONNECT", s::client};
    case errc::queue_full:
      return {503, "queue_full", "upstream queue full", s::pool};
    case errc::queue_timeout:
      return {504, "queue_timeout", "timed out waiting for an upstream connection", s::pool};
    case errc::dns_failed:
      return {502, "dns_failed", "upstream name resolution failed", s::origin};
    case errc::connect_failed:
      return {502, "connect_failed", "upstream connect failed", s::origin};
    case errc::connect_timeout:
      return {502, "connect_timeout", "upstream connect timed out", s::origin};
    case errc::tls_failed:
      return {502, "tls_failed", "upstream TLS handshake failed", s::origin};
    case errc::parent_proxy_failed:
      return {502, "parent_proxy_failed", "parent proxy failed", s::origin};
    case errc::upstream_closed:
      return {502, "upstream_closed", "upstream closed the connection", s::origin};
    case errc::upstream_protocol:
      return {502, "upstream_protocol", "invalid response from upstream", s::origin};
    case errc::response_timeout:
      return {504, "response_timeout", "upstream response timed out", s::origin};
    case errc::shutting_down:
      return {503, "shutting_down", "proxy is shutting down", s::internal};
    case errc::internal:
      return {500, "internal", "internal error", s::internal};
  }
  return {500, "internal", "unknown error", s::internal};
}

class category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "upkeep"; }
  std::string message(int ev) const override {
    return std::string(describe(static_cast<errc>(ev)).message);
  }
};

}  // namespace

const std::error_category& upkeep_category() noexcept {
  static const category cat;
  return cat;
}

int http_status(errc e) noexcept {
  return describe(e).status;
}
std::string_view reason_token(errc e) noexcept {
  return describe(e).token;
}
error_source source_of(errc e) noexcept {
  return describe(e).source;
}

}  // namespace upkeep
