#include "metrics.hpp"

#include <cstdio>

#include "log.hpp"

#ifndef UPKEEP_VERSION
#define UPKEEP_VERSION "dev"
#endif

namespace upkeep::metrics {

Histogram::Histogram(std::initializer_list<double> bounds) {
  for (double b : bounds) {
    if (n_ < bounds_.size()) bounds_[n_++] = b;
  }
}

void Histogram::observe(double v) noexcept {
  std::size_t i = 0;
  while (i < n_ && v > bounds_[i])
    ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_micro_.fetch_add(static_cast<uint64_t>(v * 1e6), std::memory_order_relaxed);
}

double Histogram::sum() const noexcept {
  return static_cast<double>(sum_micro_.load(std::memory_order_relaxed)) / 1e6;
}

namespace {

std::string fmt_double(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.9g", v);
  return b;
}

std::string label_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

void line(std::string& out, std::string_view name, std::string_view labels, uint64_t v) {
  out += name;
  if (!labels.empty()) {
    out += '{';
    out += labels;
    out += '}';
  }
  out += ' ';
  out += std::to_string(v);
  out += '\n';
}

void header(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

}  // namespace

void Histogram::render(std::string& out, std::string_view name, std::string_view labels) const {
  uint64_t cumulative = 0;
  std::string prefix = labels.empty() ? std::string() : std::string(labels) + ",";
  for (std::size_t i = 0; i <= n_; ++i) {
    cumulative += buckets_[i].load(std::memory_order_relaxed);
    std::string le = i < n_ ? fmt_double(bounds_[i]) : "+Inf";
    line(out, std::string(name) + "_bucket", prefix + "le=\"" + le + "\"", cumulative);
  }
  out += std::string(name) + "_sum";
  if (!labels.empty()) out += "{" + std::string(labels) + "}";
  out += ' ' + fmt_double(sum()) + '\n';
  line(out, std::string(name) + "_count", labels, count());
}

Registry& Registry::get() {
  static Registry r;
  return r;
}

OriginMetrics& Registry::origin(const std::string& label) {
  std::lock_guard lock(mu_);
  auto& slot = origins_[label];
  if (!slot) {
    slot = std::make_unique<OriginMetrics>();
    slot->label = label;
  }
  return *slot;
}

std::string Registry::render_prometheus() const {
  std::string out;
  out.reserve(4096);
  header(out, "upkeep_build_info", "gauge", "Build information.");
  line(out, "upkeep_build_info", "version=\"" UPKEEP_VERSION "\"", 1);
  header(out, "upkeep_downstream_connections_total", "counter", "Client connections accepted.");
  line(out, "upkeep_downstream_connections_total", {}, downstream_connections.value());
  header(out, "upkeep_downstream_connections_active", "gauge", "Client connections open.");
  line(out, "upkeep_downstream_connections_active", {},
       static_cast<uint64_t>(std::max<int64_t>(0, downstream_active.value())));
  header(out, "upkeep_downstream_requests_total", "counter", "Client requests received.");
  line(out, "upkeep_downstream_requests_total", {}, downstream_requests.value());
  header(out, "upkeep_drained_bytes_total", "counter",
         "Upstream body bytes read and discarded after the client stopped reading.");
  line(out, "upkeep_drained_bytes_total", {}, drained_bytes.value());
  header(out, "upkeep_drain_aborted_total", "counter",
         "Drains given up at drain.max_bytes or drain.max_time.");
  line(out, "upkeep_drain_aborted_total", {}, drain_aborted.value());
  header(out, "upkeep_retries_total", "counter",
         "Requests retried on a fresh connection after a reused one failed.");
  line(out, "upkeep_retries_total", {}, retries.value());
  header(out, "upkeep_tunnels_total", "counter",
         "CONNECTs relayed blindly (not pooled), by why they were not intercepted.");
  for (std::size_t i = 0; i < kTunnelReasons.size(); ++i) {
    line(out, "upkeep_tunnels_total", "reason=\"" + std::string(kTunnelReasons[i]) + "\"",
         tunnels[i].value());
  }
  header(out, "upkeep_intercepted_total", "counter",
         "CONNECTs whose TLS upkeep terminated, so the requests inside are pooled.");
  line(out, "upkeep_intercepted_total", {}, intercepted.value());
  header(out, "upkeep_intercept_certs_minted_total", "counter",
         "Leaf certificates minted for intercepted hosts.");
  line(out, "upkeep_intercept_certs_minted_total", {}, intercept_minted.value());
  header(out, "upkeep_intercept_cert_cache_entries", "gauge", "Minted certificates kept.");
  line(out, "upkeep_intercept_cert_cache_entries", {},
       static_cast<uint64_t>(std::max<int64_t>(0, intercept_cache_entries.value())));
  header(out, "upkeep_intercept_handshake_failures_total", "counter",
         "Intercepted clients whose TLS handshake failed: untrusted (the client rejected "
         "upkeep's certificate), protocol, timeout.");
  for (std::size_t i = 0; i < kHandshakeFailures.size(); ++i) {
    line(out, "upkeep_intercept_handshake_failures_total",
         "reason=\"" + std::string(kHandshakeFailures[i]) + "\"", handshake_failures[i].value());
  }
  header(out, "upkeep_pool_wait_seconds", "histogram", "Time requests waited for a connection.");
  pool_wait_seconds.render(out, "upkeep_pool_wait_seconds");
  header(out, "upkeep_upstream_requests_per_connection", "histogram",
         "Requests carried by each upstream connection, observed when it closes.");
  requests_per_connection.render(out, "upkeep_upstream_requests_per_connection");

  std::lock_guard lock(mu_);
  auto per_origin = [&](std::string_view name, std::string_view type, std::string_view help,
                        auto&& emit) {
    header(out, name, type, help);
    for (const auto& [label, m] : origins_)
      emit("origin=\"" + label_escape(label) + "\"", *m);
  };
  per_origin("upkeep_upstream_connections_opened_total", "counter",
             "Upstream connections established.",
             [&](const std::string& l, const OriginMetrics& m) {
               line(out, "upkeep_upstream_connections_opened_total", l, m.opened.value());
             });
  per_origin("upkeep_upstream_connections_closed_total", "counter",
             "Upstream connections closed, by reason.",
             [&](const std::string& l, const OriginMetrics& m) {
               for (std::size_t i = 0; i < pool::kCloseReasonCount; ++i) {
                 auto reason = pool::to_string(static_cast<pool::CloseReason>(i));
                 line(out, "upkeep_upstream_connections_closed_total",
                      l + ",reason=\"" + std::string(reason) + "\"", m.closed[i].value());
               }
             });
  per_origin("upkeep_upstream_idle_evictions_total", "counter",
             "Idle upstream connections removed by the idle watch (closed as server_closed), "
             "by what arrived: fin, close_notify, stray_bytes or error.",
             [&](const std::string& l, const OriginMetrics& m) {
               for (std::size_t i = 0; i < kIdleEvictionCauses.size(); ++i) {
                 line(out, "upkeep_upstream_idle_evictions_total",
                      l + ",cause=\"" + std::string(kIdleEvictionCauses[i]) + "\"",
                      m.idle_evictions[i].value());
               }
             });
  per_origin("upkeep_upstream_idle_tls_messages_total", "counter",
             "Idle TLS connections woken by post-handshake messages (session tickets, "
             "KeyUpdate); they stay pooled.",
             [&](const std::string& l, const OriginMetrics& m) {
               line(out, "upkeep_upstream_idle_tls_messages_total", l, m.idle_tls_messages.value());
             });
  per_origin("upkeep_upstream_connections_active", "gauge", "Upstream connections open or opening.",
             [&](const std::string& l, const OriginMetrics& m) {
               line(out, "upkeep_upstream_connections_active", l,
                    static_cast<uint64_t>(std::max<int64_t>(0, m.active.value())));
             });
  per_origin("upkeep_upstream_tls_resumed_total", "counter",
             "Upstream TLS handshakes that resumed an earlier connection's session.",
             [&](const std::string& l, const OriginMetrics& m) {
               line(out, "upkeep_upstream_tls_resumed_total", l, m.tls_resumed.value());
             });
  per_origin("upkeep_upstream_connect_errors_total", "counter",
             "Failed upstream connection attempts.",
             [&](const std::string& l, const OriginMetrics& m) {
               line(out, "upkeep_upstream_connect_errors_total", l, m.connect_errors.value());
             });
  per_origin("upkeep_upstream_requests_total", "counter", "Requests sent upstream.",
             [&](const std::string& l, const OriginMetrics& m) {
               line(out, "upkeep_upstream_requests_total", l + ",protocol=\"http/1.1\"",
                    m.requests_h1.value());
               line(out, "upkeep_upstream_requests_total", l + ",protocol=\"h2\"",
                    m.requests_h2.value());
             });
  per_origin("upkeep_upstream_requests_reused_total", "counter",
             "Requests sent on a connection that had already carried one.",
             [&](const std::string& l, const OriginMetrics& m) {
               line(out, "upkeep_upstream_requests_reused_total", l, m.reused.value());
             });
  per_origin("upkeep_upstream_active_streams", "gauge", "Exchanges in flight upstream.",
             [&](const std::string& l, const OriginMetrics& m) {
               line(out, "upkeep_upstream_active_streams", l,
                    static_cast<uint64_t>(std::max<int64_t>(0, m.streams.value())));
             });
  per_origin("upkeep_pool_pending_requests", "gauge", "Requests waiting for a connection.",
             [&](const std::string& l, const OriginMetrics& m) {
               line(out, "upkeep_pool_pending_requests", l,
                    static_cast<uint64_t>(std::max<int64_t>(0, m.pending.value())));
             });
  return out;
}

std::string Registry::render_json(bool ready) const {
  std::string out = "{\"version\":\"" UPKEEP_VERSION "\",\"ready\":";
  out += ready ? "true" : "false";
  auto num = [&](std::string_view k, uint64_t v, bool comma = true) {
    if (comma) out += ',';
    log::append_json_string(out, k);
    out += ':';
    out += std::to_string(v);
  };
  num("downstream_connections_total", downstream_connections.value());
  num("downstream_connections_active",
      static_cast<uint64_t>(std::max<int64_t>(0, downstream_active.value())));
  num("downstream_requests_total", downstream_requests.value());
  num("drained_bytes_total", drained_bytes.value());
  num("drain_aborted_total", drain_aborted.value());
  num("retries_total", retries.value());
  uint64_t tunnel_sum = 0;
  for (const auto& t : tunnels)
    tunnel_sum += t.value();
  num("tunnels_total", tunnel_sum);
  num("intercepted_total", intercepted.value());
  num("intercept_certs_minted_total", intercept_minted.value());
  num("pool_wait_count", pool_wait_seconds.count());
  out += ",\"origins\":{";
  std::lock_guard lock(mu_);
  bool first = true;
  for (const auto& [label, m] : origins_) {
    if (!first) out += ',';
    first = false;
    log::append_json_string(out, label);
    out += ":{";
    auto g = [](const Gauge& x) { return static_cast<uint64_t>(std::max<int64_t>(0, x.value())); };
    num("connections_active", g(m->active), false);
    num("connecting", g(m->connecting));
    num("idle", g(m->idle));
    num("busy", g(m->active) - std::min(g(m->active), g(m->idle) + g(m->connecting)));
    num("active_streams", g(m->streams));
    num("pending_requests", g(m->pending));
    num("connections_opened_total", m->opened.value());
    num("connect_errors_total", m->connect_errors.value());
    num("tls_resumed_total", m->tls_resumed.value());
    num("requests_h1_total", m->requests_h1.value());
    num("requests_h2_total", m->requests_h2.value());
    num("requests_reused_total", m->reused.value());
    out += ",\"connections_closed_total\":{";
    for (std::size_t i = 0; i < pool::kCloseReasonCount; ++i) {
      num(pool::to_string(static_cast<pool::CloseReason>(i)), m->closed[i].value(), i != 0);
    }
    out += "}}";
  }
  out += "}}\n";
  return out;
}

}  // namespace upkeep::metrics
