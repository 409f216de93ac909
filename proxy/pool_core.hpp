// The per-origin connection pool as a pure state machine: no sockets, no timers,
// no HTTP. The owner (connection_pool.cpp) feeds it events with the current time
// and carries out the actions it returns, in order. This keeps the hard bound,
// the FIFO queue and idle eviction testable with a fake clock and a fake
// connector (tests/unit/pool_test.cpp).
//
// A connection's life (one list per state, as Envoy's conn_pool):
//
//                          StartConnect
//                               v
//            (gone) <------ CONNECTING
//       connect_failed()        | connected()
//                               v
//   IDLE (active == 0) <--> READY (0 < active < capacity) <--> BUSY (active == capacity)
//     |                         |   no new grants: drain(), max_requests, max_age,
//     |                         v   release(reusable = false), shutdown()
//     |                     DRAINING (active > 0)
//     |                         | last release()
//     v                         v
//   CLOSED: a Close action (the owner closes the socket) or closed() (it died by
//   itself, from any state). Either way its slot is free at once.
//
// IDLE connections are closed outright where a busy one would drain: idle timeout,
// max_age, drain(), shutdown(), and a fresh_only waiter needing room in a full pool.
// The IDLE list is most recently used first; the owner keeps an idle watch (a
// pending one-byte read) on each, and reports closed() if the server hangs up.
// Events about a connection the pool no longer tracks (closed() after the pool
// emitted Close, a release() after closed()) are ignored.
//
// Invariant (the point of upkeep): total() <= limits.max_connections at all times,
// CONNECTING ones included. The one exception is set_limits() lowering the maximum
// below total(): no connection opens until total() is under it again, and the
// excess is closed (reason shutdown) as connections become idle and on the next
// expire(), which next_deadline() then reports as due at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <list>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

namespace upkeep::pool {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;
using Duration = Clock::duration;
using ConnId = uint64_t;
using WaiterId = uint64_t;

struct Limits {
  std::size_t max_connections = 4;  // >= 1
  std::size_t max_pending = 1024;   // waiters beyond this are refused (queue_full)
  Duration queue_timeout = std::chrono::seconds(10);
  Duration idle_timeout = std::chrono::seconds(60);
  Duration max_age{0};        // 0 = unlimited
  uint64_t max_requests = 0;  // grants per connection; 0 = unlimited
  // Connections kept open (connecting included) with or without waiters, at most
  // max_connections: re-opened when they close, exempt from idle_timeout.
  std::size_t warm = 0;
};

// Warm top-ups after a failure wait this long, doubling up to the max.
inline constexpr Duration kWarmBackoffMin = std::chrono::seconds(1);
inline constexpr Duration kWarmBackoffMax = std::chrono::seconds(30);

enum class CloseReason {
  server_closed,
  idle_timeout,
  max_requests,
  max_age,
  goaway,
  drain_limit,
  client_abort,
  error,
  shutdown,
  config_changed,  // a reload changed how this origin is reached; retired gracefully
  ping_timeout,    // HTTP/2: an idle connection did not answer a PING in time
};
inline constexpr std::size_t kCloseReasonCount = 11;
std::string_view to_string(CloseReason r) noexcept;

enum class FailReason { queue_full, queue_timeout, connect_failed, shutdown };

// Open a new connection; report connected() or connect_failed() later.
struct StartConnect {
  ConnId conn;
};
// Hand `conn` to `waiter` for one exchange (one stream). If the connection was
// idle the owner stops its idle watch first. reused: it already carried an exchange
// or waited idle (a warm connection, or one whose waiter left), so it may be stale.
struct Grant {
  WaiterId waiter;
  ConnId conn;
  bool reused;
};
// The waiter gets no connection.
struct Fail {
  WaiterId waiter;
  FailReason reason;
};
// Close the socket. `requests` = exchanges it carried (for the histogram).
struct Close {
  ConnId conn;
  CloseReason reason;
  uint64_t requests;
};
// The connection became idle: start the idle watch (and, for HTTP/2, PINGs).
struct WatchIdle {
  ConnId conn;
};
using Action = std::variant<StartConnect, Grant, Fail, Close, WatchIdle>;
using Actions = std::vector<Action>;

class PoolCore {
 public:
  explicit PoolCore(Limits limits);

  // A request wants a connection. Appends at most a Grant, a Fail(queue_full) or a
  // StartConnect (plus Close for an idle connection sacrificed for a fresh one);
  // otherwise the waiter is queued FIFO until a Grant or Fail for it is emitted.
  // fresh_only: only a connection that has neither carried an exchange nor waited
  // idle will do (the one-time retry after a failure on a reused connection).
  WaiterId acquire(TimePoint now, bool fresh_only, Actions& out);
  // The same when a connection can be granted at once: appends that Grant (after
  // any Close for stale idle connections on the way) and returns its waiter id.
  // Otherwise queues nothing and returns nullopt; what it appended still has to be
  // carried out.
  std::optional<WaiterId> try_acquire(TimePoint now, bool fresh_only, Actions& out);
  // The waiter went away (client hung up) before a Grant; no action is emitted for it later.
  void cancel(WaiterId waiter, Actions& out);

  // A StartConnect finished. capacity: concurrent exchanges it takes (1 for HTTP/1.1).
  void connected(ConnId conn, std::size_t capacity, TimePoint now, Actions& out);
  // A StartConnect failed: queued waiters beyond the number of connections still
  // connecting fail with connect_failed (oldest first), so an origin that is down
  // fails its queue fast instead of one connect_timeout per waiter.
  void connect_failed(ConnId conn, TimePoint now, Actions& out);

  // One exchange on conn finished. reusable=false closes it (reason given) once no
  // other exchange is active on it. idle_timeout: a shorter idle limit the server
  // asked for (Keep-Alive: timeout=); the pool uses min(this, limits.idle_timeout).
  void release(ConnId conn, bool reusable, TimePoint now, Actions& out,
               CloseReason reason_if_not_reusable = CloseReason::error,
               std::optional<Duration> idle_timeout = std::nullopt);
  // The connection died by itself (idle watch saw EOF or bytes, socket error, ...).
  // Any exchange still on it is the owner's business; the slot is freed now, so a
  // queued waiter may get a StartConnect.
  void closed(ConnId conn, CloseReason reason, TimePoint now, Actions& out);

  // HTTP/2: the server changed SETTINGS_MAX_CONCURRENT_STREAMS (may grant waiters).
  void set_capacity(ConnId conn, std::size_t capacity, TimePoint now, Actions& out);
  // No new exchanges on conn (GOAWAY, ...); closed with `reason` when its last one ends.
  void drain(ConnId conn, CloseReason reason, TimePoint now, Actions& out);

  // Timers: fail waiters past queue_timeout (queue_timeout), close idle connections
  // past their idle deadline (idle_timeout) and idle ones past max_age (max_age).
  void expire(TimePoint now, Actions& out);
  // The earliest time expire() has something to do; nullopt when nothing is due.
  std::optional<TimePoint> next_deadline() const;

  // Shutdown: fail all waiters (shutdown), close idle connections (shutdown); busy
  // ones are closed (shutdown) as their exchanges are released; no new connects.
  void shutdown(Actions& out);

  std::size_t total() const noexcept;  // all connections, connecting included
  std::size_t connecting() const noexcept;
  std::size_t idle() const noexcept;  // ready with no active exchange
  std::size_t active_exchanges() const noexcept;
  std::size_t pending() const noexcept;  // queued waiters
  const Limits& limits() const noexcept { return limits_; }
  void set_limits(const Limits& limits);  // takes effect for later decisions

 private:
  // Which list a connection is on. A draining connection takes no new exchange and
  // is closed when its last one ends; one with no exchange is closed at once, so
  // DRAINING only holds connections with active > 0 (CONNECTING ones keep a
  // `draining` flag and are closed on connected()).
  enum class State : uint8_t { connecting, idle, ready, busy, draining };
  struct Conn {
    ConnId id;
    State where = State::connecting;
    std::size_t capacity = 0;
    std::size_t active = 0;
    uint64_t grants = 0;  // exchanges it carried or carries
    // It waited idle in the pool, so the server may have closed it meanwhile: its
    // first request can fail like one on a reused connection (and is retried so).
    bool idled = false;
    bool draining = false;
    CloseReason drain_reason = CloseReason::error;
    TimePoint connected_at{};
    TimePoint idle_deadline{};  // valid while IDLE
  };
  // std::list so a state change is a splice (no allocation) and the index's
  // iterators stay valid across it.
  using ConnList = std::list<Conn>;
  using ConnIt = ConnList::iterator;

  struct Waiter {
    WaiterId id;
    TimePoint enqueued;
    TimePoint deadline;
    bool live;  // false once cancelled: left in place, skipped at the front
  };
  // FIFO, sorted by id (cancel is a binary search). Invariant: the front, if
  // any, is live, so the oldest live waiter and its deadline are O(1).
  struct Queue {
    std::deque<Waiter> q;
    std::size_t live = 0;
  };

  ConnList& list_of(State s) noexcept;
  void move_to(ConnIt it, State s);
  bool settle(ConnIt it, Actions& out);
  void close_conn(ConnIt it, CloseReason reason, Actions& out);
  void start_connect(Actions& out);
  void grant(ConnIt it, WaiterId waiter, Actions& out);
  void serve(ConnIt it, Actions& out);
  void retire_if_due(Conn& c, TimePoint now) noexcept;
  bool past_age(const Conn& c, TimePoint now) const noexcept;
  std::optional<ConnIt> find_grantable(TimePoint now, bool fresh_only, Actions& out);
  void pump(Actions& out);
  void pop_front(Queue& q);
  Queue* oldest_queue() noexcept;
  const Queue* oldest_queue() const noexcept;
  std::optional<ConnIt> find_conn(ConnId id);
  std::size_t warm_target() const noexcept;
  bool idle_expired(const Conn& c, TimePoint now) const noexcept;
  static bool fresh(const Conn& c) noexcept { return c.grants == 0 && !c.idled; }
  void warm_setback(TimePoint now);

  Limits limits_;
  ConnList connecting_, idle_, ready_, busy_, draining_;  // idle_: front = most recently used
  std::unordered_map<ConnId, ConnIt> index_;              // every connection, by id
  Queue any_;                                             // waiters that take any connection
  Queue fresh_;  // fresh_only waiters (kept apart so a reused connection skips them in O(1))
  std::size_t active_ = 0;  // exchanges on tracked connections
  ConnId next_conn_ = 1;
  WaiterId next_waiter_ = 1;
  TimePoint last_enqueued_{};  // clamps so deadlines never decrease along the queues
  TimePoint last_deadline_{};
  bool shutting_down_ = false;
  // After a failed or at once closed warm connection, top-ups wait until
  // warm_retry_at_ (backing off up to kWarmBackoffMax) so a dead origin is not dialled
  // in a loop.
  bool warm_paused_ = false;
  TimePoint warm_retry_at_{};
  Duration warm_backoff_{};
};

}  // namespace upkeep::pool
