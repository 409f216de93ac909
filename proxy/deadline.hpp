// A socket's deadline, kept lazily: moving it is a store, not a timer operation.
//
// beast::basic_stream arms and cancels a timer around every read and write (a timer
// queue insert, often a timerfd_settime, and a posted cancellation each time). Here
// one wait per socket stays armed; when it fires before the current deadline it
// re-arms for that, and only a deadline moved earlier than the armed one re-arms at
// once. On expiry the socket is shut down and its pending operations cancelled.
//
// A Deadline has one owner at a time: the executor (a strand, or the io_context with
// one thread) that calls expires_* and uses the socket. A pooled upstream connection
// changes owner (pool strand, then a client session's, then back), so the owner
// hands it over; the armed wait stays armed and its expiry is carried out on
// whoever owns the socket when it fires, never beside them.
#pragma once

#include <chrono>
#include <memory>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

namespace upkeep {

class Deadline {
 public:
  using clock = std::chrono::steady_clock;

  // `owner` is the executor the socket is first used on.
  Deadline(const boost::asio::any_io_executor& owner, boost::asio::ip::tcp::socket& socket);
  ~Deadline();
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

  void expires_at(clock::time_point t);
  void expires_after(clock::duration d) { expires_at(clock::now() + d); }
  void expires_never();
  // The deadline passed (and cancelled what was pending) since it was last set.
  bool fired() const noexcept;

  // Called by the current owner, before the new one can touch the socket (the
  // hand-off that follows, a post, orders everything after it).
  void hand_over(const boost::asio::any_io_executor& new_owner);

 private:
  struct State;
  // Handlers share the state: the owner may be gone before a fired wait's handler runs.
  std::shared_ptr<State> state_;
};

}  // namespace upkeep
