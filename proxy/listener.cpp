#include "listener.hpp"

#include <string>

namespace upkeep {

using tcp = boost::asio::ip::tcp;
using boost::system::error_code;

std::shared_ptr<tcp::acceptor> open_listener(boost::asio::io_context& ioc, const HostPort& hp) {
  error_code ec;
  tcp::resolver r(ioc);
  auto results = r.resolve(hp.host, std::to_string(hp.port),
                           tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  auto acceptor = std::make_shared<tcp::acceptor>(ioc.get_executor());
  if (!ec && results.empty()) ec = boost::asio::error::host_not_found;
  if (!ec) {
    auto ep = results.begin()->endpoint();
    acceptor->open(ep.protocol(), ec);
    if (!ec) acceptor->set_option(tcp::acceptor::reuse_address(true), ec);
    // Responses go out in as few writes as the proxy can make, and the last piece of
    // each must not wait for an ACK (Nagle against delayed ACKs: 40 ms stalls).
    if (!ec) acceptor->set_option(tcp::no_delay(true), ec);
    if (!ec) acceptor->bind(ep, ec);
    if (!ec) acceptor->listen(boost::asio::socket_base::max_listen_connections, ec);
  }
  if (ec) throw ConfigError(hp.to_string() + ": " + ec.message());
  return acceptor;
}

}  // namespace upkeep
