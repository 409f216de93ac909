// A socket's deadline, kept lazily: moving it is a store, not a timer operation.
//
// beast::basic_stream arms and cancels a timer around every read and write (a timer
// queue insert, often a timerfd_settime, and a posted cancellation each time). Here
// one wait per socket stays armed; when it fires before the current deadline it
// re-arms for that, and only a deadline moved earlier than the armed one re-arms at
// once. On expiry the socket is shut down and its pending operations cancelled.
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

  Deadline(const boost::asio::any_io_executor& ex, boost::asio::ip::tcp::socket& socket);
  ~Deadline();
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

  void expires_at(clock::time_point t);
  void expires_after(clock::duration d) { expires_at(clock::now() + d); }
  void expires_never();
  // The deadline passed (and cancelled what was pending) since it was last set.
  bool fired() const noexcept;

 private:
  struct State;
  // Handlers share the state: the owner may be gone before a fired wait's handler runs.
  std::shared_ptr<State> state_;
};

}  // namespace upkeep
