#include "endpoint_text.hpp"

#include <doctest/doctest.h>

using boost::asio::ip::make_address;
using boost::asio::ip::tcp;
using upkeep::endpoint_text;

TEST_CASE("endpoint_text: IPv4 by hand, as inet_ntop would write it") {
  CHECK(endpoint_text({make_address("127.0.0.1"), 8080}) == "127.0.0.1:8080");
  CHECK(endpoint_text({make_address("0.0.0.0"), 0}) == "0.0.0.0:0");
  CHECK(endpoint_text({make_address("255.255.255.255"), 65535}) == "255.255.255.255:65535");
  CHECK(endpoint_text({make_address("10.200.3.45"), 443}) == "10.200.3.45:443");
  // Every octet and port width against the library's own formatting.
  for (unsigned v = 0; v < 256; v += 7) {
    const auto a = boost::asio::ip::address_v4(
        {static_cast<unsigned char>(v), static_cast<unsigned char>(255 - v), 0, 9});
    const unsigned short port = static_cast<unsigned short>(v * 257);
    CHECK(endpoint_text({a, port}) == a.to_string() + ":" + std::to_string(port));
  }
}

TEST_CASE("endpoint_text: IPv6 in brackets, v4-mapped shown as IPv4") {
  CHECK(endpoint_text({make_address("::1"), 8080}) == "[::1]:8080");
  CHECK(endpoint_text({make_address("2001:db8::7"), 1}) == "[2001:db8::7]:1");
  CHECK(endpoint_text({make_address("::ffff:192.0.2.1"), 53}) == "192.0.2.1:53");
}
