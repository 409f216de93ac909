#include "deadline.hpp"

namespace upkeep {

struct Deadline::State {
  explicit State(const boost::asio::any_io_executor& ex) : timer(ex) {}
  boost::asio::steady_timer timer;
  boost::asio::ip::tcp::socket* socket = nullptr;  // null once the owner is gone
  clock::time_point deadline = clock::time_point::max();
  uint64_t generation = 0;  // of the armed wait; older ones were superseded
  bool waiting = false;
  bool fired = false;

  static void arm(const std::shared_ptr<State>& st, clock::time_point t) {
    const uint64_t gen = ++st->generation;
    st->waiting = true;
    st->timer.expires_at(t);
    st->timer.async_wait([st, gen](boost::system::error_code) {
      if (gen != st->generation) return;  // re-armed since
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
    });
  }
};

Deadline::Deadline(const boost::asio::any_io_executor& ex, boost::asio::ip::tcp::socket& socket)
    : state_(std::make_shared<State>(ex)) {
  state_->socket = &socket;
}

Deadline::~Deadline() {
  state_->socket = nullptr;
  ++state_->generation;
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

}  // namespace upkeep
