#include "deadline.hpp"

#include <atomic>
#include <mutex>

#include <boost/asio/dispatch.hpp>

namespace upkeep {

// Everything but `generation` and the owner fields is touched only on the owner.
struct Deadline::State {
  State(const boost::asio::any_io_executor& ex, boost::asio::ip::tcp::socket& s)
      : timer(ex), socket(&s), owner(ex) {}
  boost::asio::steady_timer timer;
  boost::asio::ip::tcp::socket* socket;  // null once the owner is gone
  clock::time_point deadline = clock::time_point::max();
  // Of the armed wait; older ones were superseded. Read where the wait completes,
  // which is the timer's executor, not necessarily the owner.
  std::atomic<uint64_t> generation{0};
  bool waiting = false;
  bool fired = false;

  std::mutex owner_mutex;  // taken at a hand-over and when a wait completes, not per I/O
  boost::asio::any_io_executor owner;
  uint64_t owner_epoch = 0;  // hand-overs so far

  static void arm(const std::shared_ptr<State>& st, clock::time_point t) {
    const uint64_t gen = st->generation.load(std::memory_order_relaxed) + 1;
    st->generation.store(gen, std::memory_order_release);
    st->waiting = true;
    st->timer.expires_at(t);
    st->timer.async_wait([st, gen](boost::system::error_code) { route(st, gen); });
  }

  // On the timer's executor: go to the owner's.
  static void route(const std::shared_ptr<State>& st, uint64_t gen) {
    if (gen != st->generation.load(std::memory_order_acquire)) return;  // re-armed since
    boost::asio::any_io_executor ex;
    uint64_t epoch = 0;
    {
      std::lock_guard lock(st->owner_mutex);
      ex = st->owner;
      epoch = st->owner_epoch;
    }
    boost::asio::dispatch(ex, [st, gen, epoch]() { expired(st, gen, epoch); });
  }

  // On the executor that owned the socket at `epoch`. If that is still the owner, we
  // are serialised with it (it hands over only from its own executor); if it has
  // handed over meanwhile, go on to the new one.
  static void expired(const std::shared_ptr<State>& st, uint64_t gen, uint64_t epoch) {
    bool moved = false;
    {
      std::lock_guard lock(st->owner_mutex);
      moved = epoch != st->owner_epoch;
    }
    if (moved) {
      route(st, gen);
      return;
    }
    if (gen != st->generation.load(std::memory_order_relaxed)) return;
    st->waiting = false;
    if (!st->socket || st->deadline == clock::time_point::max()) return;
    if (clock::now() < st->deadline) {
      arm(st, st->deadline);  // moved later while this wait ran
      return;
    }
    st->fired = true;
    // Like beast::basic_stream, which closes: what is pending fails now, and so
    // does whatever the owner tries next without setting a new deadline.
    boost::system::error_code ignored;
    st->socket->shutdown(boost::asio::ip::tcp::socket::shutdown_both, ignored);
    st->socket->cancel(ignored);
  }
};

Deadline::Deadline(const boost::asio::any_io_executor& owner, boost::asio::ip::tcp::socket& socket)
    : state_(std::make_shared<State>(owner, socket)) {}

Deadline::~Deadline() {
  state_->socket = nullptr;
  state_->generation.fetch_add(1, std::memory_order_release);
  state_->timer.cancel();
}

void Deadline::expires_at(clock::time_point t) {
  state_->deadline = t;
  state_->fired = false;
  if (!state_->waiting || t < state_->timer.expiry()) State::arm(state_, t);
}

void Deadline::expires_never() {
  // The armed wait, if any, stays: when it fires it finds no deadline and stops.
  state_->deadline = clock::time_point::max();
  state_->fired = false;
}

bool Deadline::fired() const noexcept {
  return state_->fired;
}

void Deadline::hand_over(const boost::asio::any_io_executor& new_owner) {
  std::lock_guard lock(state_->owner_mutex);
  state_->owner = new_owner;
  ++state_->owner_epoch;
}

}  // namespace upkeep
