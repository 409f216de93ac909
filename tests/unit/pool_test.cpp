// PoolCore against a fake clock and a fake connector. The Harness keeps its own
// model of every connection and waiter, built only from the actions the pool emits,
// and after every event checks the pool's counters against it, the hard bound, and
// the contract of each action (FIFO grants, one outcome per waiter, no grant beyond
// capacity, Close only on a connection with nothing active, ...).
#include "pool_core.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <exception>
#include <map>
#include <random>
#include <set>
#include <utility>
#include <vector>

using namespace upkeep::pool;
using namespace std::chrono_literals;

namespace {

template <class... F>
struct Overloaded : F... {
  using F::operator()...;
};
template <class... F>
Overloaded(F...) -> Overloaded<F...>;

struct Harness {
  enum class CS { connecting, open, gone };
  struct ConnModel {
    CS state = CS::connecting;
    std::size_t capacity = 1;
    std::size_t active = 0;
    uint64_t grants = 0;
    bool idled = false;  // was told to watch idle: may be stale at its next grant
  };
  struct WaiterModel {
    bool fresh = false;
    bool done = false;
    bool cancelled = false;
  };

  PoolCore pool;
  TimePoint now{};    // the fake clock
  std::size_t bound;  // what total() must not exceed
  std::map<ConnId, ConnModel> conns;
  std::vector<ConnId> to_connect;  // StartConnect'd, not answered yet (oldest first)
  std::map<WaiterId, WaiterModel> waiters;
  std::map<WaiterId, ConnId> granted;  // waiter -> conn; erased when released
  std::map<WaiterId, FailReason> failed;
  std::vector<WaiterId> grant_order;
  std::vector<Close> closes;
  Actions last;  // what the last event emitted
  bool finished = false;

  explicit Harness(Limits l) : pool(l), bound(l.max_connections) {}
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

  ~Harness() {
    // After a failed REQUIRE the model is mid-event; more checks would only add noise.
    if (!finished && std::uncaught_exceptions() == 0) finish();
  }

  // --- events, as the owner would feed them ---------------------------------------
  WaiterId acquire(bool fresh = false) {
    Actions out;
    const WaiterId w = pool.acquire(now, fresh, out);
    REQUIRE(waiters.count(w) == 0);
    waiters[w] = WaiterModel{fresh};
    absorb(out);
    return w;
  }
  // The owner's fast path: a grant at once, or nothing queued.
  std::optional<WaiterId> try_acquire(bool fresh = false) {
    Actions out;
    const std::size_t pending = pool.pending();
    const auto w = pool.try_acquire(now, fresh, out);
    if (w) {
      REQUIRE(waiters.count(*w) == 0);
      waiters[*w] = WaiterModel{fresh};
    }
    absorb(out);
    if (w) REQUIRE(granted.count(*w) == 1);
    REQUIRE(pool.pending() <= pending);
    return w;
  }
  void cancel(WaiterId w) {
    Actions out;
    pool.cancel(w, out);
    if (!waiters[w].done) waiters[w].cancelled = true;
    absorb(out);
  }
  ConnId next_connect() {
    REQUIRE(!to_connect.empty());
    return to_connect.front();
  }
  void connected(ConnId c, std::size_t capacity = 1) {
    REQUIRE(conns.at(c).state == CS::connecting);
    std::erase(to_connect, c);
    conns[c].state = CS::open;
    conns[c].capacity = capacity;
    Actions out;
    pool.connected(c, capacity, now, out);
    absorb(out);
  }
  void connect_failed(ConnId c) {
    REQUIRE(conns.at(c).state == CS::connecting);
    std::erase(to_connect, c);
    conns[c].state = CS::gone;
    Actions out;
    pool.connect_failed(c, now, out);
    absorb(out);
  }
  // Ends waiter w's exchange.
  void release(WaiterId w, bool reusable = true, CloseReason reason = CloseReason::error,
               std::optional<Duration> hint = std::nullopt) {
    REQUIRE(granted.count(w) == 1);
    const ConnId c = granted[w];
    granted.erase(w);
    REQUIRE(conns.at(c).active > 0);
    --conns[c].active;
    Actions out;
    pool.release(c, reusable, now, out, reason, hint);
    absorb(out);
  }
  void closed(ConnId c, CloseReason reason = CloseReason::server_closed) {
    REQUIRE(conns.at(c).state == CS::open);
    conns[c].state = CS::gone;
    conns[c].active = 0;
    std::erase_if(granted, [c](const auto& g) { return g.second == c; });
    Actions out;
    pool.closed(c, reason, now, out);
    absorb(out);
  }
  void set_capacity(ConnId c, std::size_t capacity) {
    conns.at(c).capacity = capacity;
    Actions out;
    pool.set_capacity(c, capacity, now, out);
    absorb(out);
  }
  void drain(ConnId c, CloseReason reason) {
    Actions out;
    pool.drain(c, reason, now, out);
    absorb(out);
  }
  void expire() {
    Actions out;
    pool.expire(now, out);
    absorb(out);
  }
  void shutdown() {
    Actions out;
    pool.shutdown(out);
    absorb(out);
  }

  // --- reading what happened ------------------------------------------------------
  template <class T>
  std::vector<T> all() const {
    std::vector<T> v;
    for (const Action& a : last) {
      if (const T* t = std::get_if<T>(&a)) v.push_back(*t);
    }
    return v;
  }
  template <class T>
  T only() const {
    const auto v = all<T>();
    REQUIRE(v.size() == 1);
    return v.front();
  }
  bool quiet() const { return last.empty(); }
  ConnId conn_of(WaiterId w) const {
    REQUIRE(granted.count(w) == 1);
    return granted.at(w);
  }
  bool queued(WaiterId w) const {
    const auto& m = waiters.at(w);
    return !m.done && !m.cancelled;
  }

  // --- the model --------------------------------------------------------------------
  void absorb(Actions& out) {
    for (const Action& a : out) {
      std::visit(Overloaded{
                     [&](const StartConnect& s) { on(s); },
                     [&](const Grant& g) { on(g); },
                     [&](const Fail& f) { on(f); },
                     [&](const Close& c) { on(c); },
                     [&](const WatchIdle& i) { on(i); },
                 },
                 a);
    }
    last = std::move(out);
    check();
  }
  void on(const StartConnect& s) {
    REQUIRE(conns.count(s.conn) == 0);
    conns[s.conn] = ConnModel{};
    to_connect.push_back(s.conn);
  }
  void on(const Grant& g) {
    REQUIRE(waiters.count(g.waiter) == 1);
    REQUIRE(queued(g.waiter));
    REQUIRE(conns.count(g.conn) == 1);
    ConnModel& c = conns[g.conn];
    REQUIRE(c.state == CS::open);
    CHECK(c.active < c.capacity);
    CHECK(g.reused == (c.grants > 0 || c.idled));
    const bool fresh = waiters[g.waiter].fresh;
    if (fresh) CHECK_FALSE(g.reused);
    // FIFO: nobody older who could have taken this connection is still waiting.
    for (const auto& [id, m] : waiters) {
      if (id >= g.waiter) break;
      if (!queued(id)) continue;
      const bool could_take = !g.reused || !m.fresh;
      CHECK_MESSAGE(!could_take, "waiter ", g.waiter, " granted before older waiter ", id);
    }
    ++c.active;
    ++c.grants;
    waiters[g.waiter].done = true;
    granted[g.waiter] = g.conn;
    grant_order.push_back(g.waiter);
  }
  void on(const Fail& f) {
    REQUIRE(waiters.count(f.waiter) == 1);
    REQUIRE(queued(f.waiter));
    waiters[f.waiter].done = true;
    failed[f.waiter] = f.reason;
  }
  void on(const Close& c) {
    REQUIRE(conns.count(c.conn) == 1);
    ConnModel& m = conns[c.conn];
    REQUIRE(m.state == CS::open);
    CHECK(m.active == 0);
    CHECK(c.requests == m.grants);
    m.state = CS::gone;
    closes.push_back(c);
  }
  void on(const WatchIdle& i) {
    REQUIRE(conns.count(i.conn) == 1);
    CHECK(conns[i.conn].state == CS::open);
    CHECK(conns[i.conn].active == 0);
    conns[i.conn].idled = true;
  }

  void check() {
    std::size_t connecting = 0, open = 0, idle = 0, active = 0, pending = 0;
    for (const auto& [id, c] : conns) {
      if (c.state == CS::connecting) ++connecting;
      if (c.state != CS::open) continue;
      ++open;
      active += c.active;
      if (c.active == 0) ++idle;
    }
    for (const auto& [id, w] : waiters)
      pending += queued(id) ? 1 : 0;
    REQUIRE(pool.total() <= bound);
    CHECK(pool.total() == connecting + open);
    CHECK(pool.connecting() == connecting);
    CHECK(pool.idle() == idle);
    CHECK(pool.active_exchanges() == active);
    CHECK(pool.pending() == pending);
  }

  // No leak: shut down, let every exchange end and every connect finish; then the
  // pool must hold nothing and every connection it opened must have been closed.
  void finish() {
    finished = true;
    shutdown();
    CHECK(pool.pending() == 0);
    CHECK_FALSE(all<StartConnect>().size());
    while (!granted.empty())
      release(granted.begin()->first);
    while (!to_connect.empty()) {
      connected(to_connect.front());
      CHECK(all<Close>().size() == 1);
    }
    CHECK(pool.total() == 0);
    CHECK(pool.active_exchanges() == 0);
    CHECK(pool.idle() == 0);
    CHECK_FALSE(pool.next_deadline().has_value());
    for (const auto& [id, c] : conns)
      CHECK_MESSAGE(c.state == CS::gone, "conn ", id, " leaked");
    for (const auto& [id, w] : waiters)
      CHECK_MESSAGE(!queued(id), "waiter ", id, " left waiting");
  }
};

Limits limits_with(std::size_t max_connections) {
  Limits l;
  l.max_connections = max_connections;
  return l;
}

}  // namespace

TEST_CASE("a ready connection is granted at once, and reused") {
  Harness h(limits_with(2));
  const WaiterId w1 = h.acquire();
  const ConnId c1 = h.only<StartConnect>().conn;
  CHECK(h.pool.connecting() == 1);
  h.connected(c1);
  CHECK(h.only<Grant>().waiter == w1);
  CHECK_FALSE(h.only<Grant>().reused);
  h.release(w1);
  CHECK(h.only<WatchIdle>().conn == c1);
  const WaiterId w2 = h.acquire();
  const Grant g = h.only<Grant>();
  CHECK(g.waiter == w2);
  CHECK(g.conn == c1);
  CHECK(g.reused);
  CHECK(h.last.size() == 1);
}

TEST_CASE("try_acquire grants a ready connection at once, and queues nothing otherwise") {
  Harness h(limits_with(1));
  CHECK_FALSE(h.try_acquire());
  CHECK(h.last.empty());  // no connect started for it
  CHECK(h.pool.pending() == 0);
  const WaiterId w1 = h.acquire();
  h.connected(h.only<StartConnect>().conn);
  CHECK(h.only<Grant>().waiter == w1);
  CHECK_FALSE(h.try_acquire());  // busy
  h.release(w1);
  const auto w2 = h.try_acquire();
  REQUIRE(w2);
  CHECK(h.only<Grant>().reused);
  h.release(*w2);
  // An idle connection past its idle deadline is closed on the way, not granted.
  h.now += 1h;
  CHECK_FALSE(h.try_acquire());
  CHECK(h.only<Close>().reason == CloseReason::idle_timeout);
}

TEST_CASE("grants are FIFO") {
  Harness h(limits_with(2));
  std::vector<WaiterId> ws;
  for (int i = 0; i < 5; ++i)
    ws.push_back(h.acquire());
  REQUIRE(h.to_connect.size() == 2);
  CHECK(h.pool.pending() == 5);
  const ConnId c1 = h.to_connect[0], c2 = h.to_connect[1];
  h.connected(c2);  // the later connect finishes first: still the oldest waiter
  CHECK(h.only<Grant>().waiter == ws[0]);
  h.connected(c1);
  CHECK(h.only<Grant>().waiter == ws[1]);
  h.release(ws[0]);
  CHECK(h.only<Grant>().waiter == ws[2]);
  h.release(ws[1]);
  CHECK(h.only<Grant>().waiter == ws[3]);
  h.release(ws[3]);
  CHECK(h.only<Grant>().waiter == ws[4]);
  CHECK(h.grant_order == ws);
}

TEST_CASE("the most recently released idle connection is granted first") {
  Harness h(limits_with(2));
  const WaiterId w1 = h.acquire(), w2 = h.acquire();
  h.connected(h.to_connect[0]);
  h.connected(h.to_connect[0]);
  const ConnId c1 = h.conn_of(w1), c2 = h.conn_of(w2);
  h.now += 1s;
  h.release(w2);
  h.now += 1s;
  h.release(w1);
  CHECK(h.pool.idle() == 2);
  const WaiterId w3 = h.acquire();
  CHECK(h.only<Grant>().conn == c1);
  // c2, the least recently used, is the one left to time out.
  CHECK(h.pool.next_deadline() == TimePoint{} + 1s + h.pool.limits().idle_timeout);
  h.now = *h.pool.next_deadline();
  h.expire();
  CHECK(h.only<Close>().conn == c2);
  h.release(w3);
}

TEST_CASE("a partly used multiplexed connection is preferred to an idle one") {
  Harness h(limits_with(2));
  const WaiterId w1 = h.acquire(), w2 = h.acquire();
  const ConnId c1 = h.next_connect();
  h.connected(c1, 2);  // takes both
  const WaiterId w3 = h.acquire();
  const ConnId c2 = h.next_connect();
  h.connected(c2, 2);
  CHECK(h.only<Grant>().waiter == w3);
  h.release(w1);  // c1: one stream left, room for one
  h.release(w3);  // c2: idle, and the more recently released
  CHECK(h.only<WatchIdle>().conn == c2);
  h.acquire();
  CHECK(h.only<Grant>().conn == c1);  // fewer warm connections
  CHECK(h.pool.idle() == 1);
  h.release(w2);
}

TEST_CASE("the bound holds under 1000 waiters and a random interleaving") {
  for (const uint32_t seed : {1u, 2u, 3u, 42u}) {
    CAPTURE(seed);
    Limits l;
    l.max_connections = 4;
    l.max_pending = 1000;
    l.queue_timeout = 30s;
    l.idle_timeout = 5s;
    l.max_requests = seed % 2 ? 0 : 7;
    Harness h(l);
    std::mt19937 rng(seed);
    auto pick = [&rng](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
    int issued = 0, steps = 0;
    std::size_t max_total = 0;
    while (issued < 1000 || h.pool.pending() > 0 || !h.granted.empty()) {
      REQUIRE(++steps < 200000);
      const std::size_t r = pick(100);
      if (r < 30 && issued < 1000) {
        const bool fresh = pick(20) == 0;
        if (pick(2) == 0 || !h.try_acquire(fresh)) h.acquire(fresh);
        ++issued;
      } else if (r < 50 && !h.to_connect.empty()) {
        const ConnId c = h.to_connect[pick(h.to_connect.size())];
        if (pick(10) == 0) {
          h.connect_failed(c);
        } else {
          h.connected(c, 1 + pick(3));
        }
      } else if (r < 85 && !h.granted.empty()) {
        auto it = h.granted.begin();
        std::advance(it, static_cast<long>(pick(h.granted.size())));
        const bool reusable = pick(10) != 0;
        std::optional<Duration> hint;
        if (pick(4) == 0) hint = std::chrono::seconds(pick(10));
        h.release(it->first, reusable, CloseReason::server_closed, hint);
      } else if (r < 90 && h.pool.pending() > 0) {
        std::vector<WaiterId> q;
        for (const auto& [id, w] : h.waiters) {
          if (h.queued(id)) q.push_back(id);
        }
        h.cancel(q[pick(q.size())]);
      } else if (r < 92) {
        std::vector<ConnId> open;
        for (const auto& [id, c] : h.conns) {
          if (c.state == Harness::CS::open) open.push_back(id);
        }
        if (!open.empty()) {
          const ConnId c = open[pick(open.size())];
          if (pick(2) == 0) {
            h.closed(c);
          } else {
            h.drain(c, CloseReason::goaway);
          }
        }
      } else if (r < 94) {
        std::vector<ConnId> open;
        for (const auto& [id, c] : h.conns) {
          if (c.state == Harness::CS::open) open.push_back(id);
        }
        if (!open.empty()) h.set_capacity(open[pick(open.size())], pick(4));
      } else {
        h.now += std::chrono::milliseconds(pick(3000));
        h.expire();
      }
      max_total = std::max(max_total, h.pool.total());
      // A waiter stuck behind capacity-0 connections only leaves by timing out.
      if (issued == 1000 && h.granted.empty() && h.to_connect.empty() && h.pool.pending() > 0) {
        h.now += 1s;
        h.expire();
      }
    }
    CHECK(max_total == 4);  // it did fill up, so the bound was exercised
    CHECK(h.grant_order.size() > 500);
    h.finish();
  }
}

TEST_CASE("a full queue refuses at once") {
  Limits l = limits_with(1);
  l.max_pending = 2;
  Harness h(l);
  const WaiterId w1 = h.acquire();
  h.acquire();
  CHECK(h.quiet());
  const WaiterId w3 = h.acquire();
  CHECK(h.only<Fail>().waiter == w3);
  CHECK(h.only<Fail>().reason == FailReason::queue_full);
  CHECK(h.pool.pending() == 2);
  h.connected(h.next_connect());
  CHECK(h.only<Grant>().waiter == w1);
  h.acquire();  // room again
  CHECK(h.quiet());
  CHECK(h.pool.pending() == 2);
}

TEST_CASE("a waiter past queue_timeout fails") {
  Limits l = limits_with(1);
  l.queue_timeout = 10s;
  Harness h(l);
  CHECK_FALSE(h.pool.next_deadline().has_value());
  const TimePoint t0 = h.now;
  const WaiterId w1 = h.acquire();
  h.now += 4s;
  const WaiterId w2 = h.acquire();
  CHECK(h.pool.next_deadline() == t0 + 10s);
  h.now = t0 + 10s - 1ns;
  h.expire();
  CHECK(h.quiet());
  h.now = t0 + 10s;
  h.expire();
  CHECK(h.only<Fail>().waiter == w1);
  CHECK(h.only<Fail>().reason == FailReason::queue_timeout);
  CHECK(h.pool.next_deadline() == t0 + 14s);
  h.connected(h.next_connect());
  CHECK(h.only<Grant>().waiter == w2);
  CHECK_FALSE(h.pool.next_deadline().has_value());
}

TEST_CASE("cancel removes a waiter silently") {
  Limits l = limits_with(1);
  l.max_pending = 3;
  Harness h(l);
  const WaiterId w1 = h.acquire(), w2 = h.acquire(), w3 = h.acquire();
  h.cancel(w2);
  CHECK(h.quiet());
  CHECK(h.pool.pending() == 2);
  const WaiterId w4 = h.acquire();  // the cancelled one no longer counts against max_pending
  CHECK(h.quiet());
  h.cancel(w1);
  h.connected(h.next_connect());
  CHECK(h.only<Grant>().waiter == w3);
  h.release(w3);
  CHECK(h.only<Grant>().waiter == w4);
  h.cancel(w4);  // already granted: nothing changes
  CHECK(h.quiet());
  CHECK(h.pool.active_exchanges() == 1);
  const ConnId c = h.conn_of(w4);
  h.release(w4);
  CHECK(h.only<WatchIdle>().conn == c);
}

TEST_CASE("many cancellations behind a waiting front stay consistent") {
  Harness h(limits_with(1));
  std::vector<WaiterId> ws;
  for (int i = 0; i < 500; ++i)
    ws.push_back(h.acquire());
  for (std::size_t i = 1; i + 1 < ws.size(); ++i)
    h.cancel(ws[i]);
  CHECK(h.pool.pending() == 2);
  h.cancel(ws[1]);  // twice: no effect
  CHECK(h.pool.pending() == 2);
  h.connected(h.next_connect());
  CHECK(h.only<Grant>().waiter == ws.front());
  h.release(ws.front());
  CHECK(h.only<Grant>().waiter == ws.back());
  CHECK(h.pool.pending() == 0);
}

TEST_CASE("an idle connection is evicted after idle_timeout") {
  Limits l = limits_with(2);
  l.idle_timeout = 60s;
  Harness h(l);
  const WaiterId w1 = h.acquire();
  const ConnId c1 = h.next_connect();
  h.connected(c1);
  h.now += 1s;
  h.release(w1);
  CHECK(h.only<WatchIdle>().conn == c1);
  CHECK(h.pool.idle() == 1);
  CHECK(h.pool.next_deadline() == h.now + 60s);
  const TimePoint deadline = h.now + 60s;
  h.now = deadline - 1ms;
  h.expire();
  CHECK(h.quiet());
  h.now = deadline;
  h.expire();
  const Close c = h.only<Close>();
  CHECK(c.conn == c1);
  CHECK(c.reason == CloseReason::idle_timeout);
  CHECK(c.requests == 1);
  CHECK(h.pool.total() == 0);
  CHECK_FALSE(h.pool.next_deadline().has_value());
}

TEST_CASE("a connection that finds no waiter goes idle and times out") {
  Limits l = limits_with(1);
  l.idle_timeout = 30s;
  Harness h(l);
  const WaiterId w1 = h.acquire();
  h.cancel(w1);
  const ConnId c1 = h.next_connect();
  h.connected(c1);
  CHECK(h.only<WatchIdle>().conn == c1);
  CHECK(h.pool.next_deadline() == h.now + 30s);
  h.now += 30s;
  h.expire();
  CHECK(h.only<Close>().requests == 0);
}

TEST_CASE("a Keep-Alive hint shortens the idle deadline, never lengthens it") {
  Limits l = limits_with(1);
  l.idle_timeout = 60s;
  Harness h(l);
  const WaiterId w1 = h.acquire();
  h.connected(h.next_connect());
  h.release(w1, true, CloseReason::error, 5s);
  CHECK(h.pool.next_deadline() == h.now + 5s);

  const WaiterId w2 = h.acquire();
  CHECK_FALSE(h.pool.next_deadline().has_value());
  h.release(w2, true, CloseReason::error, 120s);
  CHECK(h.pool.next_deadline() == h.now + 60s);

  const WaiterId w3 = h.acquire();
  h.release(w3, true, CloseReason::error, 5s);
  h.now += 5s;
  // An acquire that comes before the timer does not get the expired connection.
  const WaiterId w4 = h.acquire();
  CHECK(h.all<Grant>().empty());
  CHECK(h.only<Close>().reason == CloseReason::idle_timeout);
  CHECK(h.all<StartConnect>().size() == 1);
  h.connected(h.next_connect());
  CHECK(h.only<Grant>().waiter == w4);
  CHECK_FALSE(h.only<Grant>().reused);
}

TEST_CASE("max_requests recycles a connection") {
  SUBCASE("HTTP/1.1") {
    Limits l = limits_with(1);
    l.max_requests = 2;
    Harness h(l);
    const WaiterId w1 = h.acquire(), w2 = h.acquire(), w3 = h.acquire();
    const ConnId c1 = h.next_connect();
    h.connected(c1);
    h.release(w1);
    CHECK(h.only<Grant>().waiter == w2);
    CHECK(h.only<Grant>().reused);
    h.release(w2);
    const Close c = h.only<Close>();
    CHECK(c.conn == c1);
    CHECK(c.reason == CloseReason::max_requests);
    CHECK(c.requests == 2);
    REQUIRE(h.all<StartConnect>().size() == 1);  // the slot went to the waiter
    h.connected(h.next_connect());
    CHECK(h.only<Grant>().waiter == w3);
    CHECK_FALSE(h.only<Grant>().reused);
  }
  SUBCASE("HTTP/2: no more streams than max_requests") {
    Limits l = limits_with(1);
    l.max_requests = 3;
    Harness h(l);
    std::vector<WaiterId> ws;
    for (int i = 0; i < 5; ++i)
      ws.push_back(h.acquire());
    const ConnId c1 = h.next_connect();
    h.connected(c1, 10);
    CHECK(h.all<Grant>().size() == 3);
    CHECK(h.pool.pending() == 2);
    h.release(ws[0]);
    h.release(ws[1]);
    CHECK(h.quiet());
    h.release(ws[2]);
    CHECK(h.only<Close>().reason == CloseReason::max_requests);
    CHECK(h.only<Close>().requests == 3);
    h.connected(h.next_connect(), 10);
    CHECK(h.all<Grant>().size() == 2);
  }
}

TEST_CASE("max_age recycles a connection") {
  Limits l = limits_with(1);
  l.max_age = 30s;
  l.idle_timeout = 60s;
  Harness h(l);
  const TimePoint t0 = h.now;

  SUBCASE("idle: by the timer") {
    const WaiterId w1 = h.acquire();
    h.connected(h.next_connect());
    h.now += 10s;
    h.release(w1);
    CHECK(h.pool.next_deadline() == t0 + 30s);
    h.now = t0 + 30s;
    h.expire();
    CHECK(h.only<Close>().reason == CloseReason::max_age);
  }
  SUBCASE("idle: at the next acquire, before the timer") {
    const WaiterId w1 = h.acquire();
    h.connected(h.next_connect());
    h.release(w1);
    h.now = t0 + 31s;
    h.acquire();
    CHECK(h.only<Close>().reason == CloseReason::max_age);
    CHECK(h.all<StartConnect>().size() == 1);
    CHECK(h.all<Grant>().empty());
  }
  SUBCASE("busy: at release, and the slot goes to a waiter") {
    const WaiterId w1 = h.acquire();
    const ConnId c1 = h.next_connect();
    h.connected(c1);
    h.now = t0 + 20s;
    const WaiterId w2 = h.acquire();
    h.now = t0 + 31s;
    h.release(w1);
    CHECK(h.only<Close>().conn == c1);
    CHECK(h.only<Close>().reason == CloseReason::max_age);
    CHECK(h.all<StartConnect>().size() == 1);
    CHECK(h.all<Grant>().empty());
    h.connected(h.next_connect());
    CHECK(h.only<Grant>().waiter == w2);
  }
  SUBCASE("HTTP/2: an old connection with streams takes no new ones") {
    const WaiterId w1 = h.acquire();
    const ConnId c1 = h.next_connect();
    h.connected(c1, 10);
    h.now = t0 + 31s;
    h.acquire();
    CHECK(h.all<Grant>().empty());
    CHECK(h.pool.pending() == 1);
    h.release(w1);
    CHECK(h.only<Close>().reason == CloseReason::max_age);
    CHECK(h.all<StartConnect>().size() == 1);
  }
}

TEST_CASE("a failed connect fails the waiters it was meant for, oldest first") {
  Harness h(limits_with(2));
  std::vector<WaiterId> ws;
  for (int i = 0; i < 5; ++i)
    ws.push_back(h.acquire());
  REQUIRE(h.to_connect.size() == 2);
  const ConnId c1 = h.to_connect[0], c2 = h.to_connect[1];
  h.connect_failed(c1);
  const auto fails = h.all<Fail>();
  REQUIRE(fails.size() == 4);
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(fails[i].waiter == ws[i]);
    CHECK(fails[i].reason == FailReason::connect_failed);
  }
  CHECK(h.all<StartConnect>().empty());  // fail fast, no retry storm
  CHECK(h.pool.pending() == 1);
  h.connect_failed(c2);
  CHECK(h.only<Fail>().waiter == ws[4]);
  CHECK(h.pool.total() == 0);
  CHECK(h.pool.pending() == 0);
  // The pool is usable again.
  h.acquire();
  CHECK(h.all<StartConnect>().size() == 1);
}

TEST_CASE("fresh_only") {
  SUBCASE("a reused idle connection is passed over for a new one") {
    Harness h(limits_with(2));
    const WaiterId w1 = h.acquire();
    const ConnId c1 = h.next_connect();
    h.connected(c1);
    h.release(w1);
    const WaiterId w2 = h.acquire(true);
    CHECK(h.all<Grant>().empty());
    CHECK(h.all<Close>().empty());
    const ConnId c2 = h.only<StartConnect>().conn;
    h.connected(c2);
    CHECK(h.only<Grant>().waiter == w2);
    CHECK(h.only<Grant>().conn == c2);
    CHECK(h.pool.idle() == 1);
  }
  SUBCASE("in a full pool an idle connection is closed to make room") {
    Harness h(limits_with(1));
    const WaiterId w1 = h.acquire();
    const ConnId c1 = h.next_connect();
    h.connected(c1);
    h.release(w1);
    const WaiterId w2 = h.acquire(true);
    REQUIRE(h.last.size() == 2);
    const Close* close = std::get_if<Close>(&h.last[0]);
    REQUIRE(close != nullptr);  // Close before StartConnect: the bound holds for the owner too
    CHECK(close->conn == c1);
    CHECK(close->reason == CloseReason::error);
    CHECK(std::holds_alternative<StartConnect>(h.last[1]));
    h.connected(h.next_connect());
    CHECK(h.only<Grant>().waiter == w2);
  }
  SUBCASE("a released reused connection skips it for a younger plain waiter") {
    Harness h(limits_with(1));
    const WaiterId w1 = h.acquire();
    const ConnId c1 = h.next_connect();
    h.connected(c1);
    const WaiterId w2 = h.acquire(true);
    const WaiterId w3 = h.acquire();
    CHECK(h.quiet());
    h.release(w1);
    CHECK(h.only<Grant>().waiter == w3);
    CHECK(h.queued(w2));
    h.release(w3);  // idle now, and w2 cannot use it: it makes room for w2
    CHECK(h.only<Close>().conn == c1);
    CHECK(h.all<WatchIdle>().empty());
    h.connected(h.next_connect());
    CHECK(h.only<Grant>().waiter == w2);
    CHECK_FALSE(h.only<Grant>().reused);
  }
  // A connection whose waiter left before it connected: it waits idle, never used.
  auto idle_unused = [](Harness& h) {
    h.cancel(h.acquire());
    const ConnId c = h.next_connect();
    h.connected(c);
    return c;
  };
  SUBCASE("a never used idle connection is no fresh one: it may be stale too") {
    // The server may have closed it while it waited.
    Harness h(limits_with(1));
    const ConnId c1 = idle_unused(h);
    CHECK(h.pool.idle() == 1);
    const WaiterId w2 = h.acquire();
    CHECK(h.only<Grant>().conn == c1);
    CHECK(h.only<Grant>().reused);  // so a failure on it is retried
    h.release(w2);
    const WaiterId w3 = h.acquire(true);
    CHECK(h.only<Close>().conn == c1);  // the retry gets a new one, not this one
    h.connected(h.next_connect());
    CHECK(h.only<Grant>().waiter == w3);
    CHECK_FALSE(h.only<Grant>().reused);
  }
  SUBCASE("a warm-style idle connection is not granted to a fresh_only waiter") {
    Harness h(limits_with(2));
    const ConnId c1 = idle_unused(h);
    const WaiterId w2 = h.acquire(true);
    CHECK(h.all<Grant>().empty());
    h.connected(h.only<StartConnect>().conn);
    CHECK(h.only<Grant>().waiter == w2);
    CHECK(h.only<Grant>().conn != c1);
    CHECK(h.pool.idle() == 1);
  }
  SUBCASE("a new multiplexed connection takes the fresh waiter once") {
    Harness h(limits_with(2));
    const WaiterId w1 = h.acquire(true);
    const WaiterId w2 = h.acquire();
    const WaiterId w3 = h.acquire(true);
    REQUIRE(h.to_connect.size() == 2);
    h.connected(h.to_connect[0], 4);
    const auto g = h.all<Grant>();
    REQUIRE(g.size() == 2);
    CHECK(g[0].waiter == w1);
    CHECK(g[1].waiter == w2);
    CHECK(h.queued(w3));
    h.connected(h.to_connect[0], 4);
    CHECK(h.only<Grant>().waiter == w3);
  }
}

TEST_CASE("multiplexing: capacity > 1 and set_capacity") {
  Harness h(limits_with(1));
  std::vector<WaiterId> ws;
  for (int i = 0; i < 5; ++i)
    ws.push_back(h.acquire());
  CHECK(h.to_connect.size() == 1);
  const ConnId c1 = h.next_connect();
  h.connected(c1, 3);
  auto g = h.all<Grant>();
  REQUIRE(g.size() == 3);
  CHECK_FALSE(g[0].reused);
  CHECK(g[1].reused);
  CHECK(h.pool.active_exchanges() == 3);
  CHECK(h.pool.idle() == 0);
  h.set_capacity(c1, 5);
  g = h.all<Grant>();
  REQUIRE(g.size() == 2);
  CHECK(g[0].waiter == ws[3]);
  CHECK(g[1].waiter == ws[4]);
  h.set_capacity(c1, 2);
  CHECK(h.quiet());
  const WaiterId w6 = h.acquire();
  CHECK(h.quiet());  // the only slot is taken; it waits for a stream
  h.release(ws[0]);
  h.release(ws[1]);
  h.release(ws[2]);
  CHECK(h.quiet());  // 2 active, capacity 2
  h.release(ws[3]);
  CHECK(h.only<Grant>().waiter == w6);
  const WaiterId w7 = h.acquire();
  CHECK(h.quiet());
  h.set_capacity(c1, 3);
  CHECK(h.only<Grant>().waiter == w7);
  const WaiterId w8 = h.acquire();
  CHECK(h.quiet());
  h.release(ws[4]);
  CHECK(h.only<Grant>().waiter == w8);
}

TEST_CASE("drain") {
  SUBCASE("a busy connection takes no new exchange and closes when its last ends") {
    Harness h(limits_with(1));
    const WaiterId w1 = h.acquire();
    const ConnId c1 = h.next_connect();
    h.connected(c1, 5);
    const WaiterId w2 = h.acquire();
    CHECK(h.only<Grant>().conn == c1);
    h.drain(c1, CloseReason::goaway);
    CHECK(h.quiet());
    const WaiterId w3 = h.acquire();
    CHECK(h.quiet());
    h.release(w1);
    CHECK(h.quiet());
    h.release(w2);
    CHECK(h.only<Close>().reason == CloseReason::goaway);
    CHECK(h.only<Close>().requests == 2);
    CHECK(h.all<StartConnect>().size() == 1);
    h.connected(h.next_connect());
    CHECK(h.only<Grant>().waiter == w3);
  }
  SUBCASE("an idle connection closes at once") {
    Harness h(limits_with(1));
    const WaiterId w1 = h.acquire();
    const ConnId c1 = h.next_connect();
    h.connected(c1);
    h.release(w1);
    h.drain(c1, CloseReason::goaway);
    CHECK(h.only<Close>().reason == CloseReason::goaway);
    CHECK(h.pool.total() == 0);
  }
  SUBCASE("a connecting one closes when it connects") {
    Harness h(limits_with(1));
    const WaiterId w1 = h.acquire();
    const ConnId c1 = h.next_connect();
    h.drain(c1, CloseReason::goaway);
    CHECK(h.quiet());
    h.connected(c1);
    CHECK(h.only<Close>().conn == c1);
    CHECK(h.all<Grant>().empty());
    CHECK(h.all<StartConnect>().size() == 1);  // w1 still waits
    h.connected(h.next_connect());
    CHECK(h.only<Grant>().waiter == w1);
  }
  SUBCASE("a connection not reusable closes after its last exchange") {
    Harness h(limits_with(1));
    const WaiterId w1 = h.acquire();
    h.connected(h.next_connect(), 2);
    const WaiterId w2 = h.acquire();
    h.release(w1, false, CloseReason::client_abort);
    CHECK(h.quiet());
    const WaiterId w3 = h.acquire();
    CHECK(h.quiet());
    h.release(w2);
    CHECK(h.only<Close>().reason == CloseReason::client_abort);
    h.connected(h.next_connect());
    CHECK(h.only<Grant>().waiter == w3);
  }
}

TEST_CASE("closed() frees the slot for a waiter") {
  Harness h(limits_with(1));
  const WaiterId w1 = h.acquire();
  const ConnId c1 = h.next_connect();
  h.connected(c1);
  const WaiterId w2 = h.acquire();
  CHECK(h.quiet());
  h.closed(c1);
  CHECK(h.all<Close>().empty());  // it is gone already; nothing to close
  const ConnId c2 = h.only<StartConnect>().conn;
  CHECK(h.pool.total() == 1);
  CHECK(h.pool.active_exchanges() == 0);
  // The owner's late release for the dead connection is ignored.
  Actions out;
  h.pool.release(c1, true, h.now, out);
  CHECK(out.empty());
  h.check();
  CHECK(h.waiters[w1].done);
  h.connected(c2);
  CHECK(h.only<Grant>().waiter == w2);
  h.release(w2);
  h.closed(c2);  // the idle watch saw EOF
  CHECK(h.quiet());
  CHECK(h.pool.total() == 0);
  CHECK(h.pool.idle() == 0);
}

TEST_CASE("shutdown") {
  Harness h(limits_with(3));
  const WaiterId w1 = h.acquire(), w2 = h.acquire(), w3 = h.acquire();
  REQUIRE(h.to_connect.size() == 3);
  const ConnId c1 = h.to_connect[0], c2 = h.to_connect[1], c3 = h.to_connect[2];
  h.connected(c1);
  h.connected(c2);
  h.cancel(w3);
  h.release(w2);                        // c2 idle, c3 still connecting
  const WaiterId w4 = h.acquire(true);  // waits for c3
  CHECK(h.quiet());
  h.shutdown();
  CHECK(h.only<Fail>().waiter == w4);
  CHECK(h.only<Fail>().reason == FailReason::shutdown);
  CHECK(h.only<Close>().conn == c2);
  CHECK(h.only<Close>().reason == CloseReason::shutdown);
  CHECK(h.all<StartConnect>().empty());
  CHECK(h.pool.total() == 2);

  const WaiterId w5 = h.acquire();
  CHECK(h.only<Fail>().waiter == w5);
  CHECK(h.only<Fail>().reason == FailReason::shutdown);
  CHECK(h.pool.pending() == 0);

  h.connected(c3);
  CHECK(h.only<Close>().conn == c3);
  CHECK(h.only<Close>().requests == 0);
  h.release(w1);
  CHECK(h.only<Close>().conn == c1);
  CHECK(h.only<Close>().reason == CloseReason::shutdown);
  CHECK(h.all<StartConnect>().empty());
  CHECK(h.pool.total() == 0);
  CHECK_FALSE(h.pool.next_deadline().has_value());
}

TEST_CASE("set_limits") {
  SUBCASE("a lower max_connections closes the excess as it becomes idle") {
    Harness h(limits_with(3));
    const WaiterId w1 = h.acquire(), w2 = h.acquire(), w3 = h.acquire();
    for (int i = 0; i < 3; ++i)
      h.connected(h.next_connect());
    h.release(w2);
    h.release(w3);
    Limits l = h.pool.limits();
    l.max_connections = 1;
    h.pool.set_limits(l);
    CHECK(h.pool.next_deadline() == TimePoint{});  // due at once
    h.expire();
    CHECK(h.all<Close>().size() == 2);
    CHECK(h.pool.total() == 1);
    h.bound = 1;
    const WaiterId w4 = h.acquire();
    CHECK(h.quiet());
    h.release(w1);
    CHECK(h.only<Grant>().waiter == w4);
    CHECK(h.pool.total() == 1);
  }
  SUBCASE("excess busy connections close at release, not before") {
    Harness h(limits_with(2));
    const WaiterId w1 = h.acquire(), w2 = h.acquire();
    h.connected(h.next_connect());
    h.connected(h.next_connect());
    const WaiterId w3 = h.acquire();
    Limits l = h.pool.limits();
    l.max_connections = 1;
    h.pool.set_limits(l);
    CHECK_FALSE(h.pool.next_deadline() == TimePoint{});
    const ConnId c1 = h.conn_of(w1);
    h.release(w1);
    // Closed although a waiter is queued: the survivor serves it.
    CHECK(h.only<Close>().conn == c1);
    CHECK(h.all<Grant>().empty());
    h.bound = 1;
    h.release(w2);
    CHECK(h.only<Grant>().waiter == w3);
  }
  SUBCASE("a higher max_connections opens for queued waiters at the next expire") {
    Harness h(limits_with(1));
    const WaiterId w1 = h.acquire();
    h.connected(h.next_connect());
    const WaiterId w2 = h.acquire();
    CHECK(h.quiet());
    Limits l = h.pool.limits();
    l.max_connections = 2;
    h.pool.set_limits(l);
    h.bound = 2;
    REQUIRE(h.pool.next_deadline() == TimePoint{});
    h.expire();
    h.connected(h.only<StartConnect>().conn);
    CHECK(h.only<Grant>().waiter == w2);
    h.release(w1);
  }
  SUBCASE("a shorter queue_timeout applies to waiters already queued") {
    Limits l = limits_with(1);
    l.queue_timeout = 10s;
    Harness h(l);
    h.acquire();
    h.now += 1s;
    const WaiterId w2 = h.acquire();
    l.queue_timeout = 2s;
    h.pool.set_limits(l);
    CHECK(h.pool.next_deadline() == TimePoint{} + 2s);
    h.now = TimePoint{} + 2s;
    h.expire();
    CHECK(h.all<Fail>().size() == 1);
    const WaiterId w3 = h.acquire();
    CHECK(h.pool.next_deadline() == TimePoint{} + 3s);
    h.now = TimePoint{} + 4s;
    h.expire();
    const auto f = h.all<Fail>();
    REQUIRE(f.size() == 2);
    CHECK(f[0].waiter == w2);
    CHECK(f[1].waiter == w3);
  }
}

TEST_CASE("events about unknown connections are ignored") {
  Harness h(limits_with(1));
  Actions out;
  h.pool.connected(99, 1, h.now, out);
  h.pool.connect_failed(99, h.now, out);
  h.pool.release(99, true, h.now, out);
  h.pool.closed(99, CloseReason::error, h.now, out);
  h.pool.drain(99, CloseReason::goaway, h.now, out);
  h.pool.set_capacity(99, 4, h.now, out);
  h.pool.cancel(99, out);
  CHECK(out.empty());
  CHECK(h.pool.total() == 0);
}

TEST_CASE("close reasons have names") {
  CHECK(to_string(CloseReason::server_closed) == "server_closed");
  CHECK(to_string(CloseReason::idle_timeout) == "idle_timeout");
  CHECK(to_string(CloseReason::max_requests) == "max_requests");
  CHECK(to_string(CloseReason::max_age) == "max_age");
  CHECK(to_string(CloseReason::goaway) == "goaway");
  CHECK(to_string(CloseReason::drain_limit) == "drain_limit");
  CHECK(to_string(CloseReason::client_abort) == "client_abort");
  CHECK(to_string(CloseReason::error) == "error");
  CHECK(to_string(CloseReason::shutdown) == "shutdown");
}
