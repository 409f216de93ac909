#include "tls_context.hpp"

#include "tls_sessions.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <map>
#include <mutex>
#include <tuple>

#include <boost/asio/ip/address.hpp>

namespace upkeep {

std::shared_ptr<ssl::context> client_tls_context(const UpstreamSettings& s) {
  using Key = std::tuple<std::string, bool, std::string, std::string>;
  static std::mutex mu;
  static std::map<Key, std::shared_ptr<ssl::context>> cache;
  Key key{s.ca_file, s.verify, s.client_cert, s.client_key};
  std::lock_guard lock(mu);
  if (auto it = cache.find(key); it != cache.end()) return it->second;

  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                   ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  // An idle pooled connection keeps no OpenSSL record buffers (nginx does the same):
  // with many origins those ~34 KiB per connection are most of the per-origin cost.
  SSL_CTX_set_mode(ctx->native_handle(), SSL_MODE_RELEASE_BUFFERS);
  boost::system::error_code ec;
  if (s.verify) {
    if (s.ca_file.empty()) {
      ctx->set_default_verify_paths(ec);
      if (ec)
        throw ConfigError("upstream.ca_file: cannot load the system trust store: " + ec.message());
    } else {
      ctx->load_verify_file(s.ca_file, ec);
      if (ec) throw ConfigError("upstream.ca_file: cannot load " + s.ca_file + ": " + ec.message());
    }
    ctx->set_verify_mode(ssl::verify_peer);
  } else {
    ctx->set_verify_mode(ssl::verify_none);
  }
  if (!s.client_cert.empty()) {
    ctx->use_certificate_chain_file(s.client_cert, ec);
    if (ec) {
      throw ConfigError("upstream.client_cert: cannot load " + s.client_cert + ": " + ec.message());
    }
    ctx->use_private_key_file(s.client_key, ssl::context::pem, ec);
    if (ec) {
      throw ConfigError("upstream.client_key: cannot load " + s.client_key + ": " + ec.message());
    }
  }
  // Sessions are kept per origin (TlsSessions, one per pool), not in OpenSSL's
  // cache: that held every session ever received, each with the server's chain (the
  // soak test once showed ~8 KiB per connection ever opened).
  TlsSessions::enable(ctx->native_handle());
  cache.emplace(key, ctx);
  return ctx;
}

bool configure_tls_peer(SSL* ssl, const std::string& host, const std::string& sni, bool verify,
                        std::string& why) {
  if (!sni.empty() && SSL_set_tlsext_host_name(ssl, sni.c_str()) != 1) {
    why = "invalid SNI name";
    return false;
  }
  if (!verify) return true;
  boost::system::error_code ec;
  auto addr = boost::asio::ip::make_address(host, ec);
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  if (!ec) {
    if (X509_VERIFY_PARAM_set1_ip_asc(param, addr.to_string().c_str()) != 1) {
      why = "cannot verify IP address";
      return false;
    }
  } else {
    // The certificate must name the origin host, whatever SNI was sent.
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (X509_VERIFY_PARAM_set1_host(param, host.c_str(), host.size()) != 1) {
      why = "invalid host name";
      return false;
    }
  }
  return true;
}

std::string alpn_wire(const std::vector<std::string>& protocols) {
  std::string out;
  for (const auto& p : protocols) {
    out += static_cast<char>(p.size());
    out += p;
  }
  return out;
}

}  // namespace upkeep
