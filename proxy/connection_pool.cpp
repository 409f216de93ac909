#include "connection_pool.hpp"

#include <algorithm>
#include <atomic>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>

#include "log.hpp"

namespace upkeep {
namespace {

std::atomic<uint64_t> g_next_conn_id{1};

}  // namespace

pool::Limits pool_limits(const UpstreamSettings& s) {
  pool::Limits l;
  l.max_connections = s.max_connections;
  l.max_pending = s.queue.max_pending;
  l.queue_timeout = s.queue.timeout;
  l.idle_timeout = s.idle_timeout;
  l.max_age = s.max_connection_age;
  l.max_requests = s.max_requests_per_connection;
  l.warm = s.warm_connections;
  return l;
}

ConnectionPool::ConnectionPool(asio::io_context& ioc, unsigned threads, Origin origin,
                               const UpstreamSettings& settings,
                               std::shared_ptr<const Router> router)
    : ioex_(ioc.get_executor()),
      threads_(threads),
      strand_(threads == 1 ? asio::any_io_executor(ioc.get_executor())
                           : asio::any_io_executor(asio::make_strand(ioc))),
      origin_(std::move(origin)),
      settings_(settings),
      router_(std::move(router)),
      core_(pool_limits(settings)),
      m_(metrics::Registry::get().origin(origin_.label())),
      timer_(strand_) {}

void ConnectionPool::do_acquire(bool fresh, asio::any_io_executor ex,
                                asio::any_completion_handler<void(Lease)> h) {
  pool::Actions actions;
  auto now = std::chrono::steady_clock::now();
  auto id = core_.acquire(now, fresh, actions);
  waiters_.emplace(id, Waiter{std::move(ex), std::move(h), now});
  run(actions);
}

void ConnectionPool::release(std::shared_ptr<UpstreamConn> conn, bool reusable,
                             pool::CloseReason reason,
                             std::optional<std::chrono::steady_clock::duration> idle_hint,
                             std::function<void()> then) {
  conn->stream().hand_over(strand_);
  asio::dispatch(strand_, [self = shared_from_this(), conn = std::move(conn), reusable, reason,
                           idle_hint, then = std::move(then)]() mutable {
    // A waiter may be granted the connection at once, before any idle watch: look
    // now whether the server's close (a close_notify with the last response) is
    // already here.
    if (reusable) {
      if (auto state = conn->idle_state(); state != UpstreamStream::Idle::quiet) {
        self->m_.idle_evictions[static_cast<std::size_t>(state) - 1].inc();
        reusable = false;
        reason = pool::CloseReason::server_closed;
      }
    }
    self->release_id(conn->pool_id, reusable, reason, idle_hint);
    if (then) then();
  });
}

void ConnectionPool::release(const std::shared_ptr<H2Conn>& conn) {
  asio::dispatch(strand_, [self = shared_from_this(), id = conn->pool_id]() {
    // A dead connection was already reported closed(); the core ignores the release.
    self->release_id(id, true, pool::CloseReason::error, std::nullopt);
  });
}

void ConnectionPool::release_id(pool::ConnId id, bool reusable, pool::CloseReason reason,
                                std::optional<std::chrono::steady_clock::duration> idle_hint) {
  pool::Actions actions;
  m_.streams.add(-1);
  core_.release(id, reusable, std::chrono::steady_clock::now(), actions, reason, idle_hint);
  run(actions);
}

void ConnectionPool::shutdown() {
  retired_.store(true, std::memory_order_relaxed);
  asio::dispatch(strand_, [self = shared_from_this()]() {
    pool::Actions actions;
    self->core_.shutdown(actions);
    self->run(actions);
  });
}

void ConnectionPool::retire() {
  retired_.store(true, std::memory_order_relaxed);
  asio::dispatch(strand_, [self = shared_from_this()]() {
    pool::Actions actions;
    auto now = std::chrono::steady_clock::now();
    for (auto& [id, pooled] : self->conns_) {
      self->core_.drain(id, pool::CloseReason::config_changed, now, actions);
    }
    self->run(actions);
  });
}

void ConnectionPool::update(const UpstreamSettings& settings,
                            std::shared_ptr<const Router> router) {
  asio::dispatch(strand_, [self = shared_from_this(), settings, router = std::move(router)]() {
    self->settings_ = settings;
    self->router_ = router;
    self->core_.set_limits(pool_limits(settings));
    // set_limits may make work due now (waiters for a raised bound, idle excess).
    pool::Actions actions;
    self->core_.expire(std::chrono::steady_clock::now(), actions);
    self->run(actions);
  });
}

// Carries out the core's decisions. Runs on the strand.
void ConnectionPool::run(pool::Actions& actions) {
  for (std::size_t i = 0; i < actions.size(); ++i) {
    std::visit(
        [this](auto& a) {
          using T = std::decay_t<decltype(a)>;
          if constexpr (std::is_same_v<T, pool::StartConnect>) {
            start_connect(a.conn);
          } else if constexpr (std::is_same_v<T, pool::Grant>) {
            if (auto lease = take_grant(a)) complete(a.waiter, std::move(*lease));
          } else if constexpr (std::is_same_v<T, pool::Fail>) {
            errc e = errc::internal;
            switch (a.reason) {
              case pool::FailReason::queue_full:
                e = errc::queue_full;
                break;
              case pool::FailReason::queue_timeout:
                e = errc::queue_timeout;
                break;
              case pool::FailReason::connect_failed:
                e = last_connect_error_;
                break;
              case pool::FailReason::shutdown:
                e = errc::shutting_down;
                break;
            }
            Lease failed = Lease::failed(e);
            // The parent's answer tells the user what to fix; an OS error text
            // about upkeep's own sockets would not, and stays in the log.
            if (e == errc::parent_proxy_failed) failed.detail = last_connect_detail_;
            complete(a.waiter, std::move(failed));
          } else if constexpr (std::is_same_v<T, pool::Close>) {
            close_conn(a.conn, a.reason, a.requests);
          } else if constexpr (std::is_same_v<T, pool::WatchIdle>) {
            watch_idle(a.conn);
          }
        },
        actions[i]);
  }
  publish_gauges();
  arm_timer();
}

std::optional<Lease> ConnectionPool::take_grant(const pool::Grant& g) {
  auto it = conns_.find(g.conn);
  if (it == conns_.end()) return std::nullopt;  // cannot happen: the core only grants known ones
  m_.streams.add(1);
  if (auto& h2 = it->second.h2) {
    ++h2->exchanges;
    return Lease::of(h2, g.reused);
  }
  auto& conn = it->second.h1;
  // Stop the idle watch; the wait's completion sees the new generation and ignores.
  ++conn->watch_generation;
  error_code ignored;
  conn->stream().socket().cancel(ignored);
  ++conn->exchanges;
  return Lease::of(conn, g.reused);
}

bool ConnectionPool::try_acquire_now(bool fresh_only, const asio::any_io_executor& caller,
                                     Lease& out) {
  if (threads_ != 1 || !ioex_.running_in_this_thread()) return false;
  pool::Actions actions;
  const auto id = core_.try_acquire(std::chrono::steady_clock::now(), fresh_only, actions);
  std::optional<Lease> lease;
  if (id) {
    // Taken out of the actions: the others (stale idle connections closed on the
    // way) are carried out as usual.
    auto it = std::find_if(actions.begin(), actions.end(), [&](const pool::Action& a) {
      const auto* g = std::get_if<pool::Grant>(&a);
      return g != nullptr && g->waiter == *id;
    });
    lease = take_grant(std::get<pool::Grant>(*it));
    actions.erase(it);
  }
  run(actions);
  if (!lease) return false;
  if (lease->conn) lease->conn->stream().hand_over(caller);
  metrics::Registry::get().pool_wait_seconds.observe(0.0);
  out = std::move(*lease);
  return true;
}

void ConnectionPool::complete(pool::WaiterId w, Lease lease) {
  auto it = waiters_.find(w);
  if (it == waiters_.end()) return;
  Waiter waiter = std::move(it->second);
  waiters_.erase(it);
  lease.waited = std::chrono::steady_clock::now() - waiter.since;
  if (lease.conn) lease.conn->stream().hand_over(waiter.ex);
  metrics::Registry::get().pool_wait_seconds.observe(
      std::chrono::duration<double>(lease.waited).count());
  asio::post(waiter.ex, [h = std::move(waiter.handler), lease = std::move(lease)]() mutable {
    std::move(h)(std::move(lease));
  });
}

void ConnectionPool::start_connect(pool::ConnId id) {
  asio::co_spawn(
      strand_,
      [self = shared_from_this(), id]() -> asio::awaitable<void> {
        auto outcome =
            co_await connect_upstream(self->strand_, self->origin_, self->settings_, self->router_,
                                      self->sessions_, g_next_conn_id.fetch_add(1));
        self->on_connected(id, std::move(outcome));
      },
      asio::detached);
}

void ConnectionPool::on_connected(pool::ConnId id, ConnectOutcome outcome) {
  pool::Actions actions;
  auto now = std::chrono::steady_clock::now();
  if (outcome.resumed) m_.tls_resumed.inc();
  if (outcome.error != errc::ok) {
    last_connect_error_ = outcome.error;
    last_connect_detail_ = outcome.detail;
    m_.connect_errors.inc();
    log::warn("upstream connect failed", {{"origin", origin_.label()},
                                          {"error", std::string(reason_token(outcome.error))},
                                          {"detail", quoted(outcome.detail)}});
    core_.connect_failed(id, now, actions);
  } else if (outcome.conn->protocol() == "h2") {
    m_.opened.inc();
    adopt_h2(id, std::move(outcome.conn));
  } else {
    outcome.conn->pool_id = id;
    conns_.emplace(id, Pooled{outcome.conn, nullptr});
    m_.opened.inc();
    log::debug("upstream connected", {{"origin", origin_.label()},
                                      {"conn", std::to_string(outcome.conn->id())},
                                      {"protocol", outcome.conn->protocol()}});
    core_.connected(id, 1, now, actions);
  }
  run(actions);
}

// The server chose h2: the handshaken transport moves into an H2Conn on its own
// strand. Its events come back here by post, so the core is only touched on ours.
void ConnectionPool::adopt_h2(pool::ConnId id, std::shared_ptr<UpstreamConn> handshaken) {
  auto serial = threads_ == 1 ? asio::any_io_executor(ioex_)
                              : asio::any_io_executor(asio::make_strand(ioex_));
  auto stream = handshaken->take_stream();
  stream->hand_over(serial);
  auto h2 = std::make_shared<H2Conn>(serial, handshaken->id(), std::move(stream), settings_);
  h2->pool_id = id;
  conns_.emplace(id, Pooled{nullptr, h2});
  log::debug("upstream connected",
             {{"origin", origin_.label()}, {"conn", std::to_string(h2->id())}, {"protocol", "h2"}});
  std::weak_ptr<ConnectionPool> weak = shared_from_this();
  auto on_pool = [weak, this](auto f) {
    if (auto self = weak.lock()) asio::post(strand_, [self, f = std::move(f)]() mutable { f(); });
  };
  H2Conn::Events ev;
  ev.ready = [on_pool, this, id](std::size_t n) {
    on_pool([this, id, n]() {
      pool::Actions acts;
      core_.connected(id, n, std::chrono::steady_clock::now(), acts);
      run(acts);
    });
  };
  ev.capacity = [on_pool, this, id](std::size_t n) {
    on_pool([this, id, n]() {
      pool::Actions acts;
      core_.set_capacity(id, n, std::chrono::steady_clock::now(), acts);
      run(acts);
    });
  };
  ev.goaway = [on_pool, this, id]() {
    on_pool([this, id]() {
      pool::Actions acts;
      core_.drain(id, pool::CloseReason::goaway, std::chrono::steady_clock::now(), acts);
      run(acts);
    });
  };
  ev.closed = [on_pool, this, id](pool::CloseReason reason) {
    on_pool([this, id, reason]() {
      auto it = conns_.find(id);
      if (it == conns_.end()) return;  // the pool closed it itself and counted it then
      pool::Actions acts;
      const uint64_t requests = it->second.h2->exchanges;
      core_.closed(id, reason, std::chrono::steady_clock::now(), acts);
      close_conn(id, reason, requests);
      run(acts);
    });
  };
  h2->start(std::move(ev));
  // core_.connected() waits for the server's SETTINGS (Events::ready).
}

// An idle pooled connection keeps a readiness wait on its raw socket. When it fires,
// the bytes are looked at through TLS (UpstreamStream::check_idle): a TLS 1.3
// server's session tickets or KeyUpdate are processed and the watch re-armed; a FIN,
// an RST, a close_notify or any byte of data (a late "408") means the server is done
// with the connection, so it leaves the pool now rather than failing the next
// request. The same look runs first, because a close_notify that came with the last
// response is already in OpenSSL's buffer and will never make the socket readable.
void ConnectionPool::watch_idle(pool::ConnId id) {
  auto it = conns_.find(id);
  if (it == conns_.end() || it->second.h2) return;  // an H2Conn reads and PINGs by itself
  auto& conn = it->second.h1;
  const uint64_t gen = ++conn->watch_generation;
  if (evict_if_done(id, *conn)) return;
  conn->release_idle_memory();
  conn->stream().socket().async_wait(
      asio::ip::tcp::socket::wait_read,
      asio::bind_executor(strand_, [self = shared_from_this(), id, gen](error_code ec) {
        auto it2 = self->conns_.find(id);
        if (it2 == self->conns_.end() || it2->second.h1->watch_generation != gen) return;
        if (ec == asio::error::operation_aborted) return;
        auto& c = *it2->second.h1;
        const bool tls = c.stream().tls();
        if (!ec && self->evict_if_done(id, c)) return;
        if (ec) {
          self->evict(id, UpstreamStream::Idle::error);
          return;
        }
        if (tls) self->m_.idle_tls_messages.inc();
        self->watch_idle(id);
      }));
}

bool ConnectionPool::evict_if_done(pool::ConnId id, UpstreamConn& conn) {
  const auto state = conn.idle_state();
  if (state == UpstreamStream::Idle::quiet) return false;
  evict(id, state);
  return true;
}

void ConnectionPool::evict(pool::ConnId id, UpstreamStream::Idle cause) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  const auto index = static_cast<std::size_t>(cause) - 1;
  m_.idle_evictions[index].inc();
  log::debug("idle upstream connection ended by the server",
             {{"origin", origin_.label()},
              {"conn", std::to_string(it->second.h1->id())},
              {"cause", std::string(metrics::kIdleEvictionCauses[index])}});
  pool::Actions actions;
  const uint64_t requests = it->second.h1->exchanges;
  core_.closed(id, pool::CloseReason::server_closed, std::chrono::steady_clock::now(), actions);
  close_conn(id, pool::CloseReason::server_closed, requests);
  run(actions);
}

void ConnectionPool::close_conn(pool::ConnId id, pool::CloseReason reason, uint64_t requests) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  uint64_t conn_id = 0;
  if (auto& h1 = it->second.h1) {
    ++h1->watch_generation;
    h1->close();
    conn_id = h1->id();
  } else {
    it->second.h2->close();
    conn_id = it->second.h2->id();
  }
  log::debug("upstream closed", {{"origin", origin_.label()},
                                 {"conn", std::to_string(conn_id)},
                                 {"reason", std::string(pool::to_string(reason))}});
  conns_.erase(it);
  m_.closed[static_cast<std::size_t>(reason)].inc();
  metrics::Registry::get().requests_per_connection.observe(static_cast<double>(requests));
}

void ConnectionPool::publish_gauges() {
  m_.active.set(static_cast<int64_t>(core_.total()));
  m_.connecting.set(static_cast<int64_t>(core_.connecting()));
  m_.idle.set(static_cast<int64_t>(core_.idle()));
  m_.pending.set(static_cast<int64_t>(core_.pending()));
}

void ConnectionPool::arm_timer() {
  auto next = core_.next_deadline();
  if (!next) {
    if (timer_at_) {
      timer_.cancel();
      timer_at_.reset();
    }
    return;
  }
  if (timer_at_ && *timer_at_ == *next) return;
  timer_at_ = *next;
  timer_.expires_at(*next);
  timer_.async_wait([self = shared_from_this(), at = *next](error_code ec) {
    if (ec || self->timer_at_ != at) return;
    self->timer_at_.reset();
    pool::Actions actions;
    self->core_.expire(std::chrono::steady_clock::now(), actions);
    self->run(actions);
  });
}

void ConnectionPool::keep_warm() {
  asio::dispatch(strand_, [self = shared_from_this()]() {
    pool::Actions actions;
    self->core_.expire(std::chrono::steady_clock::now(), actions);
    self->run(actions);
  });
}

std::shared_ptr<ConnectionPool> PoolRegistry::get(const Origin& origin,
                                                  const UpstreamSettings& settings,
                                                  const std::shared_ptr<const Router>& router,
                                                  std::string_view target, std::string_view host) {
  std::lock_guard lock(mu_);
  return get_locked(origin, settings, router, target, host);
}

std::shared_ptr<ConnectionPool> PoolRegistry::get_locked(
    const Origin& origin, const UpstreamSettings& settings,
    const std::shared_ptr<const Router>& router, std::string_view target, std::string_view host) {
  auto& slot = pools_[origin];
  if (!slot.pool) {
    slot.pool = std::make_shared<ConnectionPool>(ioc_, threads_, origin, settings, router);
    // Keep only the scheme and authority of the request: enough to route it again.
    if (!target.empty() && target.front() != '/') {
      auto path = target.find('/', target.find("//") + 2);
      slot.probe.target = std::string(target.substr(0, path)) + "/";
    } else {
      slot.probe.target = "/";
    }
    slot.probe.host = std::string(host);
    slot.settings = settings;
  }
  return slot.pool;
}

void PoolRegistry::reconfigure(const std::shared_ptr<const Router>& router) {
  {
    std::lock_guard lock(mu_);
    reconfigure_locked(router);
  }
  warm(router);
}

void PoolRegistry::reconfigure_locked(const std::shared_ptr<const Router>& router) {
  for (auto it = pools_.begin(); it != pools_.end();) {
    auto& entry = it->second;
    auto routed = router->route(entry.probe.target, entry.probe.host);
    const auto* d = std::get_if<RouteDecision>(&routed);
    if (!d || !(d->origin == it->first)) {
      entry.pool->retire();
      it = pools_.erase(it);
      continue;
    }
    if (!(*d->settings == entry.settings)) {
      // A different parent proxy reaches the origin differently: the connections
      // through the old one go, like those of a changed route.
      if (d->settings->parent != entry.settings.parent) {
        entry.pool->retire();
        it = pools_.erase(it);
        continue;
      }
      entry.settings = *d->settings;
      entry.pool->update(entry.settings, router);
    }
    ++it;
  }
}

void PoolRegistry::warm(const std::shared_ptr<const Router>& router) {
  std::lock_guard lock(mu_);
  for (const auto& route : router->config().routes) {
    if (route.upstream.warm_connections == 0) continue;
    if (route.host_pattern.find('*') != std::string::npos) {
      log::warn("warm_connections ignored: the route's host is a pattern, not one origin",
                {{"host", route.host_pattern}});
      continue;
    }
    // The pool a plain http:// request to this host would use: port_map and tls
    // apply as they do for clients (port 80 becomes the origin's 443 by default).
    const bool v6 = route.host_pattern.find(':') != std::string::npos;
    const std::string host = v6 ? "[" + route.host_pattern + "]" : route.host_pattern;
    const std::string authority = route.port ? host + ":" + std::to_string(*route.port) : host;
    const std::string target = "http://" + authority + "/";
    auto routed = router->route(target, authority);
    const auto* d = std::get_if<RouteDecision>(&routed);
    if (!d) {
      log::warn("warm_connections ignored: the route's host is not allowed",
                {{"host", route.host_pattern}});
      continue;
    }
    get_locked(d->origin, *d->settings, router, target, authority)->keep_warm();
  }
}

void PoolRegistry::shutdown_all() {
  std::lock_guard lock(mu_);
  for (auto& [origin, entry] : pools_)
    entry.pool->shutdown();
}

}  // namespace upkeep
