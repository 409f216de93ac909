// "127.0.0.1:8080" / "[::1]:8080": an address and port as logs and messages show it.
#pragma once

#include <charconv>
#include <string>

#include <boost/asio/ip/tcp.hpp>

namespace upkeep {

// Formatted by hand for IPv4 because every accepted client connection pays for it:
// address_v4::to_string goes through inet_ntop and a std::string per part, which
// cost a few per cent of a request that opens its own connection. A v4-mapped
// IPv6 peer (a dual-stack listener) is shown as the IPv4 address it is.
inline std::string endpoint_text(const boost::asio::ip::tcp::endpoint& ep) {
  const auto a = ep.address();
  const bool mapped = a.is_v6() && a.to_v6().is_v4_mapped();
  if (!a.is_v4() && !mapped) return "[" + a.to_string() + "]:" + std::to_string(ep.port());
  const auto v4 =
      mapped ? boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, a.to_v6()) : a.to_v4();
  char buf[sizeof "255.255.255.255:65535"];
  char* p = buf;
  char* const end = buf + sizeof buf;
  bool first = true;
  for (const unsigned char b : v4.to_bytes()) {
    if (!first) *p++ = '.';
    first = false;
    p = std::to_chars(p, end, b).ptr;
  }
  *p++ = ':';
  p = std::to_chars(p, end, ep.port()).ptr;
  return std::string(buf, p);
}

}  // namespace upkeep
