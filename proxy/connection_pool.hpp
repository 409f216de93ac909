// The Asio side of the pool: one ConnectionPool per origin for the whole process,
// driven by a PoolCore (the decisions) and owned by one strand (no locks). Sessions
// on any worker thread ask for a lease with async_acquire and give the connection
// back with release(); both hop onto the pool's strand.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include "error.hpp"
#include "metrics.hpp"
#include "origin.hpp"
#include "pool_core.hpp"
#include "router.hpp"
#include "upstream_connector.hpp"
#include "upstream_h1.hpp"
#include "upstream_h2.hpp"

namespace upkeep {

// One exchange's right to a connection: conn (HTTP/1.1, exclusively) or h2 (one
// stream of a shared HTTP/2 connection).
struct Lease {
  errc error = errc::ok;
  std::shared_ptr<UpstreamConn> conn;
  std::shared_ptr<H2Conn> h2;
  bool reused = false;
  std::chrono::steady_clock::duration waited{};
  std::string detail;  // with a connect error, what the client's error body adds

  static Lease of(std::shared_ptr<UpstreamConn> c, bool reused) {
    Lease l;
    l.conn = std::move(c);
    l.reused = reused;
    return l;
  }
  static Lease of(std::shared_ptr<H2Conn> c, bool reused) {
    Lease l;
    l.h2 = std::move(c);
    l.reused = reused;
    return l;
  }
  static Lease failed(errc e) {
    Lease l;
    l.error = e;
    return l;
  }
};

pool::Limits pool_limits(const UpstreamSettings& s);

class ConnectionPool : public std::enable_shared_from_this<ConnectionPool> {
 public:
  // threads: event-loop threads; with one, the pool and its HTTP/2 connections run
  // on the io_context directly (a strand would only add a lock and a queue hop).
  ConnectionPool(asio::io_context& ioc, unsigned threads, Origin origin,
                 const UpstreamSettings& settings, std::shared_ptr<const Router> router);

  // Completes with a Lease on the caller's executor. fresh_only: a connection that
  // neither carried an exchange nor waited idle (the one retry after a stale one).
  template <class Token>
  auto async_acquire(bool fresh_only, Token&& token) {
    return asio::async_initiate<Token, void(Lease)>(
        [self = shared_from_this()](auto handler, bool fresh) {
          auto ex = asio::get_associated_executor(handler, self->strand_);
          asio::dispatch(
              self->strand_,
              [self, fresh, ex,
               h = asio::any_completion_handler<void(Lease)>(std::move(handler))]() mutable {
                self->do_acquire(fresh, std::move(ex), std::move(h));
              });
        },
        token, fresh_only);
  }

  // async_acquire without the round trip, when the pool runs on the calling thread
  // (one event-loop thread) and has a connection to grant at once: true with `out`
  // set. caller: the executor the lease is used on.
  bool try_acquire_now(bool fresh_only, const asio::any_io_executor& caller, Lease& out);

  // The exchange on conn is over. reusable=false closes it with `reason`.
  // idle_hint: the server's Keep-Alive timeout, if it gave one.
  // then: runs on the pool's strand once the pool has taken the connection back (a
  // metric bumped there is only visible after the connection can be granted again).
  void release(std::shared_ptr<UpstreamConn> conn, bool reusable, pool::CloseReason reason,
               std::optional<std::chrono::steady_clock::duration> idle_hint = std::nullopt,
               std::function<void()> then = {});
  // The stream's exchange on an HTTP/2 connection is over (however it ended).
  void release(const std::shared_ptr<H2Conn>& conn);

  void shutdown();
  // Reload: the origin is now reached differently. Its connections take no new
  // exchanges and close as their current ones end; queued waiters are still served.
  void retire();
  // retire() or shutdown() was called: the registry no longer hands this pool out.
  bool retired() const noexcept { return retired_.load(std::memory_order_relaxed); }
  // Reload: same origin, new limits/timeouts for later decisions; warm connections stay.
  void update(const UpstreamSettings& settings, std::shared_ptr<const Router> router);
  // Opens the warm connections the limits ask for (a new pool has no event yet
  // that would).
  void keep_warm();
  const Origin& origin() const noexcept { return origin_; }
  metrics::OriginMetrics& metrics() noexcept { return m_; }

 private:
  struct Waiter {
    asio::any_io_executor ex;
    asio::any_completion_handler<void(Lease)> handler;
    std::chrono::steady_clock::time_point since;
  };

  void do_acquire(bool fresh, asio::any_io_executor ex,
                  asio::any_completion_handler<void(Lease)> h);
  void run(pool::Actions& actions);
  void start_connect(pool::ConnId id);
  void on_connected(pool::ConnId id, ConnectOutcome outcome);
  void complete(pool::WaiterId w, Lease lease);
  std::optional<Lease> take_grant(const pool::Grant& g);
  void watch_idle(pool::ConnId id);
  // Closes an idle connection the server has ended (true), or leaves it (false).
  bool evict_if_done(pool::ConnId id, UpstreamConn& conn);
  void evict(pool::ConnId id, UpstreamStream::Idle cause);
  void close_conn(pool::ConnId id, pool::CloseReason reason, uint64_t requests);
  void adopt_h2(pool::ConnId id, std::shared_ptr<UpstreamConn> handshaken);
  void release_id(pool::ConnId id, bool reusable, pool::CloseReason reason,
                  std::optional<std::chrono::steady_clock::duration> idle_hint);
  void arm_timer();
  void publish_gauges();

  asio::io_context::executor_type ioex_;
  unsigned threads_;
  asio::any_io_executor strand_;  // a strand, or the io_context itself with one thread
  Origin origin_;
  UpstreamSettings settings_;
  std::shared_ptr<const Router> router_;
  pool::PoolCore core_;
  metrics::OriginMetrics& m_;
  asio::steady_timer timer_;
  struct Pooled {
    std::shared_ptr<UpstreamConn> h1;
    std::shared_ptr<H2Conn> h2;
  };
  std::unordered_map<pool::ConnId, Pooled> conns_;
  std::unordered_map<pool::WaiterId, Waiter> waiters_;
  errc last_connect_error_ = errc::connect_failed;
  std::string last_connect_detail_;  // shown to clients for parent_proxy_failed
  std::shared_ptr<TlsSessions> sessions_ = std::make_shared<TlsSessions>();
  std::optional<std::chrono::steady_clock::time_point> timer_at_;
  std::atomic<bool> retired_{false};
};

// What a request looked like that led to a pool, so a reload can route it again
// and tell whether the pool still stands for the same origin and settings.
struct RouteProbe {
  std::string target;  // absolute-form URL with path "/", or "/" for origin-form
  std::string host;    // the Host header
};

// Every pool of the process, by origin. get() is called once per exchange.
class PoolRegistry {
 public:
  PoolRegistry(asio::io_context& ioc, unsigned threads) : ioc_(ioc), threads_(threads) {}
  std::shared_ptr<ConnectionPool> get(const Origin& origin, const UpstreamSettings& settings,
                                      const std::shared_ptr<const Router>& router,
                                      std::string_view target, std::string_view host);
  // After a reload: pools whose origin now routes differently (or through another
  // parent proxy) retire; pools whose settings changed take the new ones; the rest
  // keep their connections. Then warm() for the new routes.
  void reconfigure(const std::shared_ptr<const Router>& router);
  // Creates the pool of every exact-host route with warm_connections, so its
  // connections open now rather than at the first request (start and reload).
  void warm(const std::shared_ptr<const Router>& router);
  void shutdown_all();

 private:
  struct Entry {
    std::shared_ptr<ConnectionPool> pool;
    RouteProbe probe;
    UpstreamSettings settings;
  };
  std::shared_ptr<ConnectionPool> get_locked(const Origin& origin, const UpstreamSettings& settings,
                                             const std::shared_ptr<const Router>& router,
                                             std::string_view target, std::string_view host);
  void reconfigure_locked(const std::shared_ptr<const Router>& router);

  asio::io_context& ioc_;
  unsigned threads_;  // event-loop threads, for ConnectionPool
  std::mutex mu_;
  std::unordered_map<Origin, Entry, OriginHash> pools_;
};

}  // namespace upkeep
