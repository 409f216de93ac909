// The per-origin connection pool as a pure state machine: no sockets, no timers,
// no HTTP. The owner (connection_pool.cpp) feeds it events with the current time
// and carries out the actions it returns, in order. This keeps the hard bound,
// the FIFO queue and idle eviction testable with a fake clock and a fake
// connector (tests/unit/pool_test.cpp).
//
// A connection's life (one list per state, as Envoy's conn_pool):
//
//   CONNECTING --connected()--> READY (active < capacity) <--> BUSY (active == capacity)
//        |                         |   ^ release()
//        | connect_failed()        | draining (GOAWAY, max_requests, max_age): no new grants
//        v                         v
//      (gone)                   CLOSED  (Close action; the owner closes the socket)
//
// An idle connection is READY with active == 0; the owner keeps an idle watch
// (a pending one-byte read) on it, and reports closed() if the server hangs up.
//
// Invariant (the point of upkeep): total() <= limits.max_connections at all times,
// CONNECTING ones included.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
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
  Duration max_age{0};           // 0 = unlimited
  uint64_t max_requests = 0;     // grants per connection; 0 = unlimited
};

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
};
inline constexpr std::size_t kCloseReasonCount = 9;
std::string_view to_string(CloseReason r) noexcept;

enum class FailReason { queue_full, queue_timeout, connect_failed, shutdown };

// Open a new connection; report connected() or connect_failed() later.
struct StartConnect {
  ConnId conn;
};
// Hand `conn` to `waiter` for one exchange (one stream). If the connection was
// idle the owner stops its idle watch first. reused: it already carried an exchange.
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
  // fresh_only: only a connection that has never carried an exchange will do (the
  // one-time retry after a failure on a reused connection).
  WaiterId acquire(TimePoint now, bool fresh_only, Actions& out);
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

  std::size_t total() const noexcept;       // all connections, connecting included
  std::size_t connecting() const noexcept;
  std::size_t idle() const noexcept;        // ready with no active exchange
  std::size_t active_exchanges() const noexcept;
  std::size_t pending() const noexcept;     // queued waiters
  const Limits& limits() const noexcept { return limits_; }
  void set_limits(const Limits& limits);    // takes effect for later decisions

 private:
  // implementation-defined members
  struct Conn;
  struct Waiter;
  Limits limits_;
  // ... (see pool_core.cpp)
};

}  // namespace upkeep::pool
