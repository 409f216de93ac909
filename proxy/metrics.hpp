// Process-wide metrics: lock-free counters on the hot path, a mutex only when an
// origin is seen for the first time. Rendered as Prometheus text and JSON.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "pool_core.hpp"

namespace upkeep::metrics {

class Counter {
 public:
  void inc(uint64_t n = 1) noexcept { v_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const noexcept { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};

class Gauge {
 public:
  void add(int64_t n) noexcept { v_.fetch_add(n, std::memory_order_relaxed); }
  void set(int64_t n) noexcept { v_.store(n, std::memory_order_relaxed); }
  int64_t value() const noexcept { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> v_{0};
};

// Fixed buckets chosen at construction; observe() is lock-free.
class Histogram {
 public:
  explicit Histogram(std::initializer_list<double> bounds);
  void observe(double v) noexcept;
  void render(std::string& out, std::string_view name, std::string_view labels = {}) const;
  uint64_t count() const noexcept { return count_.load(std::memory_order_relaxed); }
  double sum() const noexcept;

 private:
  std::array<double, 16> bounds_{};
  std::size_t n_ = 0;
  std::array<std::atomic<uint64_t>, 17> buckets_{};  // +Inf last
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_micro_{0};  // sum in millionths, to stay atomic without CAS loops
};

// Why a CONNECT was relayed blindly (upkeep_tunnels_total{reason}): access.connect
// is tunnel; the host is in intercept.skip or not in intercept.hosts; its first bytes
// were not a TLS ClientHello; its ALPN offered no http/1.1; its client rejected
// upkeep's certificate lately; or its name cannot go into a certificate.
enum class TunnelReason : unsigned char { connect, skip, not_tls, alpn, fallback, name };
inline constexpr std::array<std::string_view, 6> kTunnelReasons{"connect", "skip",     "not_tls",
                                                                "alpn",    "fallback", "name"};
// Why an intercepted client's TLS handshake failed.
enum class HandshakeFailure : unsigned char { untrusted, protocol, timeout };
inline constexpr std::array<std::string_view, 3> kHandshakeFailures{"untrusted", "protocol",
                                                                    "timeout"};

// Per-origin series. Addresses are stable for the life of the process.
struct OriginMetrics {
  std::string label;
  Counter opened;
  std::array<Counter, pool::kCloseReasonCount> closed;
  Gauge active;  // connections, connecting included
  Gauge connecting;
  Gauge idle;
  Gauge pending;  // queued requests
  Gauge streams;  // exchanges in flight
  Counter requests_h1;
  Counter requests_h2;
  Counter reused;
  Counter connect_errors;
  // Idle connections the watch removed (all counted closed as server_closed), by what
  // it found: index = UpstreamStream::Idle minus one (fin, close_notify, stray_bytes,
  // error).
  std::array<Counter, 4> idle_evictions;
  // An idle TLS connection turned readable with only post-handshake messages
  // (session tickets, KeyUpdate): processed, and the connection stays.
  Counter idle_tls_messages;
  Counter tls_resumed;  // handshakes that resumed an earlier connection's session
};

// Labels for OriginMetrics::idle_evictions, in index order.
inline constexpr std::array<std::string_view, 4> kIdleEvictionCauses{"fin", "close_notify",
                                                                     "stray_bytes", "error"};

class Registry {
 public:
  static Registry& get();

  OriginMetrics& origin(const std::string& label);

  Counter downstream_connections;
  Gauge downstream_active;
  Counter downstream_requests;
  Counter drained_bytes;
  Counter drain_aborted;
  Counter retries;
  std::array<Counter, kTunnelReasons.size()> tunnels;
  Counter intercepted;  // CONNECTs whose TLS upkeep terminated
  Counter intercept_minted;
  Gauge intercept_cache_entries;
  std::array<Counter, kHandshakeFailures.size()> handshake_failures;
  void tunnel(TunnelReason r) noexcept { tunnels[static_cast<std::size_t>(r)].inc(); }
  void handshake_failed(HandshakeFailure f) noexcept {
    handshake_failures[static_cast<std::size_t>(f)].inc();
  }
  Histogram pool_wait_seconds{0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10};
  Histogram requests_per_connection{1, 2, 5, 10, 50, 100, 500, 1000, 10000, 100000};

  std::string render_prometheus() const;
  std::string render_json(bool ready) const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::unique_ptr<OriginMetrics>> origins_;
};

}  // namespace upkeep::metrics
