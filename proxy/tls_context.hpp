// OpenSSL client contexts, one per distinct trust/identity setting, shared by every
// connection that uses it (contexts are immutable once built, so sharing across
// worker threads is safe).
#pragma once

#include <memory>
#include <string>

#include <boost/asio/ssl/context.hpp>

#include "config.hpp"

namespace upkeep {

namespace ssl = boost::asio::ssl;

// Throws ConfigError naming the key when a file cannot be loaded.
std::shared_ptr<ssl::context> client_tls_context(const UpstreamSettings& s);

// Peer verification for one connection: SNI and host name (or IP) check.
// Returns false (and leaves a reason in `why`) when OpenSSL refuses a setting.
bool configure_tls_peer(SSL* ssl, const std::string& host, const std::string& sni, bool verify,
                        std::string& why);

// ALPN offer in wire format from protocol ids ("h2", "http/1.1").
std::string alpn_wire(const std::vector<std::string>& protocols);

}  // namespace upkeep
