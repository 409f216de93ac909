#include "pool_core.hpp"

#include <algorithm>
#include <iterator>
#include <utility>

namespace upkeep::pool {

std::string_view to_string(CloseReason r) noexcept {
  switch (r) {
    case CloseReason::server_closed:
      return "server_closed";
    case CloseReason::idle_timeout:
      return "idle_timeout";
    case CloseReason::max_requests:
      return "max_requests";
    case CloseReason::max_age:
      return "max_age";
    case CloseReason::goaway:
      return "goaway";
    case CloseReason::drain_limit:
      return "drain_limit";
    case CloseReason::client_abort:
      return "client_abort";
    case CloseReason::config_changed:
      return "config_changed";
    case CloseReason::ping_timeout:
      return "ping_timeout";
    case CloseReason::error:
      return "error";
    case CloseReason::shutdown:
      return "shutdown";
  }
  return "unknown";
}

PoolCore::PoolCore(Limits limits) : limits_(limits) {}

// --- connection lists -------------------------------------------------------------

PoolCore::ConnList& PoolCore::list_of(State s) noexcept {
  switch (s) {
    case State::connecting:
      return connecting_;
    case State::idle:
      return idle_;
    case State::ready:
      return ready_;
    case State::busy:
      return busy_;
    case State::draining:
      return draining_;
  }
  return draining_;
}

// Splicing to the front makes idle_ most-recently-used first, which is what
// acquire() wants (LIFO keeps few connections warm, the rest time out).
void PoolCore::move_to(ConnIt it, State s) {
  if (it->where == s) return;
  ConnList& to = list_of(s);
  to.splice(to.begin(), list_of(it->where), it);
  it->where = s;
}

std::optional<PoolCore::ConnIt> PoolCore::find_conn(ConnId id) {
  auto found = index_.find(id);
  if (found == index_.end()) return std::nullopt;
  return found->second;
}

// Puts an established connection on the list its counters call for. Returns false
// if it was closed (draining with nothing left on it); `it` is then invalid.
bool PoolCore::settle(ConnIt it, Actions& out) {
  Conn& c = *it;
  if (c.draining) {
    if (c.active == 0) {
      close_conn(it, c.drain_reason, out);
      return false;
    }
    move_to(it, State::draining);
  } else if (c.active == 0) {
    move_to(it, State::idle);
  } else {
    move_to(it, c.active < c.capacity ? State::ready : State::busy);
  }
  return true;
}

// The slot is free as soon as the Close is emitted: the owner carries out actions
// in order, so a StartConnect that follows cannot overlap the old socket.
void PoolCore::close_conn(ConnIt it, CloseReason reason, Actions& out) {
  out.push_back(Close{it->id, reason, it->grants});
  active_ -= it->active;
  index_.erase(it->id);
  list_of(it->where).erase(it);
}

void PoolCore::start_connect(Actions& out) {
  const ConnId id = next_conn_++;
  connecting_.push_front(Conn{.id = id});
  index_.emplace(id, connecting_.begin());
  out.push_back(StartConnect{id});
}

bool PoolCore::past_age(const Conn& c, TimePoint now) const noexcept {
  return limits_.max_age > Duration::zero() && now - c.connected_at >= limits_.max_age;
}

// Decides, at a release, whether the connection should take no more exchanges.
// Excess over a lowered max_connections is only retired once the connection is
// idle: draining a busy HTTP/2 connection early would retire more than the excess.
void PoolCore::retire_if_due(Conn& c, TimePoint now) noexcept {
  if (c.draining) return;
  if (past_age(c, now)) {
    c.draining = true;
    c.drain_reason = CloseReason::max_age;
  } else if (c.active == 0 && total() > limits_.max_connections) {
    c.draining = true;
    c.drain_reason = CloseReason::shutdown;
  }
}

// --- waiters ----------------------------------------------------------------------

void PoolCore::pop_front(Queue& q) {
  q.q.pop_front();
  --q.live;
  while (!q.q.empty() && !q.q.front().live)
    q.q.pop_front();
}

const PoolCore::Queue* PoolCore::oldest_queue() const noexcept {
  const bool a = !any_.q.empty(), f = !fresh_.q.empty();
  if (a && f) return any_.q.front().id < fresh_.q.front().id ? &any_ : &fresh_;
  if (a) return &any_;
  if (f) return &fresh_;
  return nullptr;
}

PoolCore::Queue* PoolCore::oldest_queue() noexcept {
  return const_cast<Queue*>(std::as_const(*this).oldest_queue());
}

// --- granting ---------------------------------------------------------------------

void PoolCore::grant(ConnIt it, WaiterId waiter, Actions& out) {
  Conn& c = *it;
  out.push_back(Grant{waiter, c.id, !fresh(c)});
  ++c.grants;
  ++c.active;
  ++active_;
  // Draining at the grant (not the release) so an HTTP/2 connection never takes
  // more than max_requests streams.
  if (limits_.max_requests != 0 && c.grants >= limits_.max_requests && !c.draining) {
    c.draining = true;
    c.drain_reason = CloseReason::max_requests;
  }
  settle(it, out);  // active > 0: cannot close
}

// Gives spare capacity on an established connection to the oldest waiters it suits.
void PoolCore::serve(ConnIt it, Actions& out) {
  Conn& c = *it;
  while (!c.draining && c.active < c.capacity) {
    Queue* q = fresh(c) ? oldest_queue() : (any_.q.empty() ? nullptr : &any_);
    if (q == nullptr) break;
    const WaiterId w = q->q.front().id;
    pop_front(*q);
    grant(it, w, out);
  }
}

// Connections with room for another exchange, best first: a partly used one (keeps
// the number of warm connections low), then the most recently idle one. Idle ones
// past their idle deadline or max_age are closed on the way rather than handed out
// just before the timer would have closed them.
std::optional<PoolCore::ConnIt> PoolCore::find_grantable(TimePoint now, bool fresh_only,
                                                         Actions& out) {
  if (!fresh_only) {
    while (!ready_.empty()) {
      ConnIt it = ready_.begin();
      if (!past_age(*it, now)) return it;
      it->draining = true;
      it->drain_reason = CloseReason::max_age;
      move_to(it, State::draining);  // ready: active > 0
    }
  }
  for (auto it = idle_.begin(); it != idle_.end();) {
    const auto next = std::next(it);
    if (idle_expired(*it, now)) {
      close_conn(it, CloseReason::idle_timeout, out);
    } else if (past_age(*it, now)) {
      close_conn(it, CloseReason::max_age, out);
    } else if (it->capacity > 0 && (!fresh_only || fresh(*it))) {
      return it;
    }
    it = next;
  }
  return std::nullopt;
}

std::size_t PoolCore::warm_target() const noexcept {
  return std::min(limits_.warm, limits_.max_connections);
}

// Past its idle deadline, and not one of the warm connections: those stay idle as
// long as they are needed to keep warm_target() open.
bool PoolCore::idle_expired(const Conn& c, TimePoint now) const noexcept {
  return now >= c.idle_deadline && total() > warm_target();
}

void PoolCore::warm_setback(TimePoint now) {
  if (warm_target() == 0) return;
  warm_backoff_ = warm_backoff_ == Duration::zero()
                      ? kWarmBackoffMin
                      : std::min<Duration>(warm_backoff_ * 2, kWarmBackoffMax);
  warm_paused_ = true;
  warm_retry_at_ = now + warm_backoff_;
}

// Opens connections for waiters no connecting one will serve, up to the bound. A
// fresh_only waiter cannot use a reused connection, so when the pool is full and
// some connection is idle, the least recently used idle one is closed to make room.
// Its reason is `error`: a fresh_only request follows a failure on a reused
// connection to this origin, which makes the other reused ones suspect too.
void PoolCore::pump(Actions& out) {
  if (shutting_down_) return;
  while (pending() > connecting_.size()) {
    if (total() < limits_.max_connections) {
      start_connect(out);
    } else if (fresh_.live > connecting_.size() && !idle_.empty()) {
      close_conn(std::prev(idle_.end()), CloseReason::error, out);
    } else {
      break;
    }
  }
  while (!warm_paused_ && total() < warm_target())
    start_connect(out);
}

// --- events -----------------------------------------------------------------------

WaiterId PoolCore::acquire(TimePoint now, bool fresh_only, Actions& out) {
  const WaiterId id = next_waiter_++;
  if (shutting_down_) {
    out.push_back(Fail{id, FailReason::shutdown});
    return id;
  }
  if (auto it = find_grantable(now, fresh_only, out)) {
    grant(*it, id, out);
    return id;
  }
  if (pending() >= limits_.max_pending) {
    out.push_back(Fail{id, FailReason::queue_full});
    pump(out);  // find_grantable may have closed stale idle connections
    return id;
  }
  // Deadlines never decrease along the queues (even with a clock that steps
  // back), so the expired waiters are always the oldest ones.
  last_enqueued_ = std::max(now, last_enqueued_);
  last_deadline_ = std::max(last_enqueued_ + limits_.queue_timeout, last_deadline_);
  Queue& q = fresh_only ? fresh_ : any_;
  q.q.push_back(Waiter{id, last_enqueued_, last_deadline_, true});
  ++q.live;
  pump(out);
  return id;
}

std::optional<WaiterId> PoolCore::try_acquire(TimePoint now, bool fresh_only, Actions& out) {
  if (shutting_down_) return std::nullopt;
  if (auto it = find_grantable(now, fresh_only, out)) {
    const WaiterId id = next_waiter_++;
    grant(*it, id, out);
    return id;
  }
  if (!out.empty()) pump(out);  // stale idle connections were closed on the way
  return std::nullopt;
}

void PoolCore::cancel(WaiterId waiter, Actions& out) {
  (void)out;
  for (Queue* q : {&any_, &fresh_}) {
    auto it = std::lower_bound(q->q.begin(), q->q.end(), waiter,
                               [](const Waiter& w, WaiterId id) { return w.id < id; });
    if (it == q->q.end() || it->id != waiter || !it->live) continue;
    if (it == q->q.begin()) {
      pop_front(*q);
      return;
    }
    it->live = false;
    --q->live;
    // Cancelled entries behind a long-lived front would pile up; compacting when
    // they outnumber the live ones keeps memory O(pending) at amortised O(1).
    if (q->q.size() > 2 * q->live + 64)
      std::erase_if(q->q, [](const Waiter& w) { return !w.live; });
    return;
  }
}

void PoolCore::connected(ConnId conn, std::size_t capacity, TimePoint now, Actions& out) {
  auto found = find_conn(conn);
  if (!found || (*found)->where != State::connecting) return;
  ConnIt it = *found;
  it->capacity = capacity;
  it->connected_at = now;
  warm_backoff_ = Duration::zero();
  // Draining here means drain() or shutdown() came while it was connecting.
  if (!it->draining && total() > limits_.max_connections) {
    it->draining = true;
    it->drain_reason = CloseReason::shutdown;
  }
  if (!settle(it, out)) {
    pump(out);
    return;
  }
  serve(it, out);
  const bool idle = it->active == 0;
  if (idle) {
    it->idle_deadline = now + limits_.idle_timeout;
    it->idled = true;
  }
  pump(out);  // may close it again for a fresh_only waiter it could not serve
  if (idle && index_.contains(conn)) out.push_back(WatchIdle{conn});
}

void PoolCore::connect_failed(ConnId conn, TimePoint now, Actions& out) {
  auto found = find_conn(conn);
  if (!found || (*found)->where != State::connecting) return;
  index_.erase(conn);
  connecting_.erase(*found);
  warm_setback(now);
  while (pending() > connecting_.size()) {
    Queue* q = oldest_queue();
    out.push_back(Fail{q->q.front().id, FailReason::connect_failed});
    pop_front(*q);
  }
}

void PoolCore::release(ConnId conn, bool reusable, TimePoint now, Actions& out,
                       CloseReason reason_if_not_reusable, std::optional<Duration> idle_timeout) {
  auto found = find_conn(conn);
  // Unknown: closed() already took it and its exchanges with it.
  if (!found || (*found)->where == State::connecting || (*found)->active == 0) return;
  ConnIt it = *found;
  --it->active;
  --active_;
  if (!reusable && !it->draining) {
    it->draining = true;
    it->drain_reason = reason_if_not_reusable;
  }
  retire_if_due(*it, now);
  if (!settle(it, out)) {
    pump(out);
    return;
  }
  serve(it, out);
  const bool idle = !it->draining && it->active == 0;
  if (idle) {
    Duration limit = limits_.idle_timeout;
    if (idle_timeout) limit = std::clamp(*idle_timeout, Duration::zero(), limit);
    it->idle_deadline = now + limit;
    it->idled = true;
  }
  pump(out);
  if (idle && index_.contains(conn)) out.push_back(WatchIdle{conn});
}

void PoolCore::closed(ConnId conn, CloseReason reason, TimePoint now, Actions& out) {
  (void)reason;  // the owner counts it; the pool only needs the slot back
  auto found = find_conn(conn);
  if (!found) return;
  ConnIt it = *found;
  // A server that closes new connections before any use would otherwise have its
  // warm connections re-opened in a loop.
  if (it->grants == 0 && it->where != State::connecting && now - it->connected_at < kWarmBackoffMin)
    warm_setback(now);
  active_ -= it->active;
  index_.erase(conn);
  list_of(it->where).erase(it);
  pump(out);
}

void PoolCore::set_capacity(ConnId conn, std::size_t capacity, TimePoint now, Actions& out) {
  auto found = find_conn(conn);
  if (!found || (*found)->where == State::connecting) return;
  ConnIt it = *found;
  it->capacity = capacity;
  if (!it->draining && past_age(*it, now)) {
    it->draining = true;
    it->drain_reason = CloseReason::max_age;
  }
  if (!settle(it, out)) {
    pump(out);
    return;
  }
  serve(it, out);
}

void PoolCore::drain(ConnId conn, CloseReason reason, TimePoint now, Actions& out) {
  (void)now;
  auto found = find_conn(conn);
  if (!found || (*found)->draining) return;
  ConnIt it = *found;
  it->draining = true;
  it->drain_reason = reason;
  if (it->where == State::connecting) return;  // closed on connected()
  if (!settle(it, out)) pump(out);
}

void PoolCore::expire(TimePoint now, Actions& out) {
  while (Queue* q = oldest_queue()) {
    if (q->q.front().deadline > now) break;
    out.push_back(Fail{q->q.front().id, FailReason::queue_timeout});
    pop_front(*q);
  }
  for (auto it = idle_.begin(); it != idle_.end();) {
    const auto next = std::next(it);
    if (idle_expired(*it, now)) {
      close_conn(it, CloseReason::idle_timeout, out);
    } else if (past_age(*it, now)) {
      close_conn(it, CloseReason::max_age, out);
    } else if (now >= it->idle_deadline) {
      it->idle_deadline = now + limits_.idle_timeout;  // kept warm: look again later
    }
    it = next;
  }
  if (warm_paused_ && now >= warm_retry_at_) warm_paused_ = false;
  // max_connections was lowered: idle ones go first, least recently used first.
  while (total() > limits_.max_connections && !idle_.empty()) {
    close_conn(std::prev(idle_.end()), CloseReason::shutdown, out);
  }
  pump(out);
}

std::optional<TimePoint> PoolCore::next_deadline() const {
  // Left over by set_limits(), which cannot emit actions: expire() is due at once.
  if (!shutting_down_ && pending() > connecting_.size() && total() < limits_.max_connections) {
    return TimePoint{};
  }
  if (total() > limits_.max_connections && !idle_.empty()) return TimePoint{};
  if (!shutting_down_ && !warm_paused_ && total() < warm_target()) return TimePoint{};

  std::optional<TimePoint> best;
  auto consider = [&best](TimePoint t) {
    if (!best || t < *best) best = t;
  };
  if (const Queue* q = oldest_queue()) consider(q->q.front().deadline);
  if (warm_paused_ && !shutting_down_) consider(warm_retry_at_);
  // O(idle) <= max_connections; idle deadlines differ by Keep-Alive hint, so no order.
  for (const Conn& c : idle_) {
    consider(c.idle_deadline);
    if (limits_.max_age > Duration::zero()) consider(c.connected_at + limits_.max_age);
  }
  return best;
}

void PoolCore::shutdown(Actions& out) {
  if (shutting_down_) return;
  shutting_down_ = true;
  while (Queue* q = oldest_queue()) {
    out.push_back(Fail{q->q.front().id, FailReason::shutdown});
    pop_front(*q);
  }
  while (!idle_.empty())
    close_conn(idle_.begin(), CloseReason::shutdown, out);
  // A connection already draining keeps its more telling reason (goaway, ...).
  for (ConnList* l : {&ready_, &busy_, &connecting_}) {
    for (auto it = l->begin(); it != l->end();) {
      const auto next = std::next(it);
      if (!it->draining) {
        it->draining = true;
        it->drain_reason = CloseReason::shutdown;
      }
      if (l != &connecting_) move_to(it, State::draining);
      it = next;
    }
  }
}

// --- counters and limits ----------------------------------------------------------

std::size_t PoolCore::total() const noexcept {
  return index_.size();
}
std::size_t PoolCore::connecting() const noexcept {
  return connecting_.size();
}
std::size_t PoolCore::idle() const noexcept {
  return idle_.size();
}
std::size_t PoolCore::active_exchanges() const noexcept {
  return active_;
}
std::size_t PoolCore::pending() const noexcept {
  return any_.live + fresh_.live;
}

// A shorter queue_timeout also applies to waiters already queued (a longer one does
// not extend them); that keeps deadlines non-decreasing along the queues.
void PoolCore::set_limits(const Limits& limits) {
  limits_ = limits;
  for (Queue* q : {&any_, &fresh_}) {
    for (Waiter& w : q->q)
      w.deadline = std::min(w.deadline, w.enqueued + limits_.queue_timeout);
  }
  last_deadline_ = std::min(last_deadline_, last_enqueued_ + limits_.queue_timeout);
}

}  // namespace upkeep::pool
