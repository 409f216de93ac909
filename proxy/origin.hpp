// The pool key. Two requests share upstream connections only if every field that
// shapes the connection (address, TLS identity and trust, ALPN offer) is equal.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "config.hpp"

namespace upkeep {

struct Origin {
  bool tls = true;
  std::string host;  // lower-case; IPv6 literals without brackets
  uint16_t port = 443;
  std::optional<HostPort> connect_to;  // dial this instead of resolving host
  std::string sni;                     // effective SNI ("" when tls is false or host is an IP)
  bool verify = true;
  std::string ca_file;
  std::string client_cert;
  std::string client_key;
  std::vector<std::string> protocols;  // ALPN offer, in order

  bool operator==(const Origin&) const = default;

  // "https://api.example.com:443": the `origin` label in metrics and logs.
  std::string label() const {
    std::string s = tls ? "https://" : "http://";
    if (host.find(':') != std::string::npos) {
      s += '[' + host + ']';
    } else {
      s += host;
    }
    return s + ':' + std::to_string(port);
  }
};

struct OriginHash {
  std::size_t operator()(const Origin& o) const noexcept {
    std::size_t h = std::hash<std::string>{}(o.host);
    auto mix = [&h](std::size_t v) { h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2); };
    mix(o.port);
    mix(o.tls);
    mix(o.verify);
    mix(std::hash<std::string>{}(o.sni));
    if (o.connect_to) mix(std::hash<std::string>{}(o.connect_to->to_string()));
    mix(std::hash<std::string>{}(o.ca_file));
    mix(std::hash<std::string>{}(o.client_cert));
    for (const auto& p : o.protocols)
      mix(std::hash<std::string>{}(p));
    return h;
  }
};

}  // namespace upkeep
