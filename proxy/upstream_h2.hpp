// One upstream HTTP/2 connection: an nghttp2 client session over TLS carrying
// streams for client sessions on any worker thread.
//
// Thread ownership: the connection has its own strand. Every nghttp2 call, every
// socket operation and every H2Stream field below "conn strand only" happen on it.
// A client session talks to its stream only through the async_* operations, which
// hop onto the strand and complete on the caller's executor (the hand-off by post
// is the synchronisation), and cancel(), which posts.
//
// Flow control (RFC 9113 §5.2): automatic WINDOW_UPDATE is off. DATA received for
// a stream sits in that stream's buffer and is only acknowledged (consumed) when
// the client session takes it, so a client that reads slowly holds back its own
// stream's window and never the connection's: a stream buffers at most its window.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include "config.hpp"
#include "h2_memory.hpp"
#include "pool_core.hpp"
#include "relay_buffer.hpp"
#include "upstream_h1.hpp"

struct nghttp2_session;

namespace upkeep {

// How a stream ended, as far as the client session needs to know.
enum class H2Outcome : uint8_t {
  ok,
  refused,    // never processed by the server (REFUSED_STREAM, above GOAWAY's last
              // stream id, or never sent): always safe to send again (RFC 9113 §8.7)
  reset,      // the server reset the stream (or it broke the protocol)
  conn_lost,  // the connection died under the stream
  timeout,    // no response head within response_timeout
};

struct H2Field {
  std::string name;  // lower case
  std::string value;
};

struct H2Head {
  H2Outcome outcome = H2Outcome::ok;
  bool got_response_bytes = false;  // some frame of a response arrived on this stream
  http::response_header<> head;     // status and fields (1xx heads too)
};

struct H2Read {
  H2Outcome outcome = H2Outcome::ok;
  std::size_t n = 0;
  bool eof = false;  // the body is complete (n may still be > 0)
};

class H2Conn;

class H2Stream : public std::enable_shared_from_this<H2Stream> {
 public:
  H2Stream(std::shared_ptr<H2Conn> conn, asio::any_io_executor strand)
      : conn_(std::move(conn)), strand_(std::move(strand)), head_timer_(strand_) {}

  // Queues body bytes for DATA frames. Completes once they are copied, so `data`
  // may be reused; waits while the stream already holds a full buffer.
  template <class Token>
  auto async_write_body(const char* data, std::size_t n, bool last, Token&& token) {
    return asio::async_initiate<Token, void(H2Outcome)>(
        [self = shared_from_this(), data, n, last](auto handler) {
          auto ex = asio::get_associated_executor(handler);
          self->run_on_strand(
              [self, data, n, last, ex,
               h = asio::any_completion_handler<void(H2Outcome)>(std::move(handler))]() mutable {
                self->write_ = WriteOp{std::move(ex), std::move(h), data, n, last};
                self->progress();
              });
        },
        token);
  }

  // The next response head (a 1xx one too), or how the stream ended without one.
  template <class Token>
  auto async_read_head(Token&& token) {
    return asio::async_initiate<Token, void(H2Head)>(
        [self = shared_from_this()](auto handler) {
          auto ex = asio::get_associated_executor(handler);
          self->run_on_strand(
              [self, ex,
               h = asio::any_completion_handler<void(H2Head)>(std::move(handler))]() mutable {
                self->head_ = HeadOp{std::move(ex), std::move(h)};
                self->progress();
              });
        },
        token);
  }

  // The request is fully handed over: the final head must arrive within `timeout`
  // (response_timeout runs from the request's end, not while a client uploads).
  void start_response_timer(std::chrono::steady_clock::duration timeout);

  // Up to n body bytes into buf (which must stay valid until completion).
  template <class Token>
  // wait=false: complete at once, with n == 0 if nothing is buffered yet.
  auto async_read_body(char* buf, std::size_t n, bool wait, Token&& token) {
    return asio::async_initiate<Token, void(H2Read)>(
        [self = shared_from_this(), buf, n, wait](auto handler) {
          auto ex = asio::get_associated_executor(handler);
          self->run_on_strand(
              [self, buf, n, wait, ex,
               h = asio::any_completion_handler<void(H2Read)>(std::move(handler))]() mutable {
                self->read_ = ReadOp{std::move(ex), std::move(h), buf, n, wait};
                self->progress();
              });
        },
        token);
  }

  // The client is gone: RST_STREAM(CANCEL) if the stream is still open, buffered
  // data given back to the connection window. Pending operations complete with reset.
  void cancel();

  // Trailer fields; read them only after async_read_body reported eof.
  const std::vector<H2Field>& trailers() const noexcept { return trailers_; }

 private:
  friend class H2Conn;
  friend struct H2Callbacks;
  struct HeadOp {
    asio::any_io_executor ex;
    asio::any_completion_handler<void(H2Head)> h;
  };
  struct ReadOp {
    asio::any_io_executor ex;
    asio::any_completion_handler<void(H2Read)> h;
    char* buf;
    std::size_t n;
    bool wait;
  };
  struct WriteOp {
    asio::any_io_executor ex;
    asio::any_completion_handler<void(H2Outcome)> h;
    const char* data;
    std::size_t n;
    bool last;
  };

  // Onto the connection's strand: at once when already there (one event-loop
  // thread, or a call from the strand), so an exchange's request for its head or
  // body costs no queued handler. Completions are always posted (complete()).
  template <class F>
  void run_on_strand(F&& f) {
    asio::dispatch(strand_, std::forward<F>(f));
  }
  // Completes whatever pending operation the stream's state now allows.
  void progress();
  H2Outcome end_outcome() const;
  void grow_window();                                 // conn strand only; after taken_ grew
  void fit_window(const http::response_header<>& h);  // conn strand only; the final head

  std::shared_ptr<H2Conn> conn_;
  asio::any_io_executor strand_;   // the connection's serial executor
  asio::steady_timer head_timer_;  // response_timeout; conn strand only
  // --- conn strand only ---
  int32_t id_ = -1;
  bool headers_sent_ = false;
  bool got_response_ = false;
  bool final_head_ = false;
  bool eof_ = false;  // END_STREAM received
  bool closed_ = false;
  bool cancelled_ = false;
  H2Outcome close_outcome_ = H2Outcome::ok;
  int status_ = 0;
  // The head being received, built in place: each field is copied once, by Beast.
  http::response_header<> building_;
  std::deque<http::response_header<>> heads_;
  std::vector<H2Field> trailers_;
  BlockQueue rbuf_;     // received DATA not yet taken by the client session
  uint64_t taken_ = 0;  // body bytes the client session has taken
  int32_t window_ = 0;  // our receive window for the stream
  std::string ubuf_;    // upload bytes not yet framed
  std::size_t uoff_ = 0;
  bool upload_eof_ = false;
  bool upload_deferred_ = false;
  std::optional<HeadOp> head_;
  std::optional<ReadOp> read_;
  std::optional<WriteOp> write_;
  bool head_timed_out_ = false;
};

class H2Conn : public std::enable_shared_from_this<H2Conn> {
 public:
  // Events for the pool, called on the connection's strand.
  struct Events {
    // The server's first SETTINGS arrived (or took longer than connect_timeout):
    // the connection takes this many streams. Later changes come as capacity.
    std::function<void(std::size_t)> ready;
    std::function<void(std::size_t)> capacity;      // streams the server now allows (min config)
    std::function<void()> goaway;                   // takes no new streams
    std::function<void(pool::CloseReason)> closed;  // the connection is gone (once)
  };

  // serial: a strand, or the io_context itself when it has one thread.
  H2Conn(asio::any_io_executor serial, uint64_t id, std::unique_ptr<UpstreamStream> stream,
         const UpstreamSettings& settings);
  ~H2Conn();
  H2Conn(const H2Conn&) = delete;
  H2Conn& operator=(const H2Conn&) = delete;

  // Sends the preface and SETTINGS and starts reading. Call once.
  void start(Events events);
  // A new stream for one request: fields are the HTTP/2 request (pseudo-headers
  // first). With body_follows the body comes through async_write_body.
  std::shared_ptr<H2Stream> open(std::vector<H2Field> fields, bool body_follows);
  // Graceful close: GOAWAY, then the socket closes once written. Any thread.
  void close();

  uint64_t id() const noexcept { return id_; }

  // Bookkeeping by the pool (its strand only).
  uint64_t exchanges = 0;
  uint64_t pool_id = 0;

 private:
  friend class H2Stream;
  friend struct H2Callbacks;

  asio::awaitable<void> reader(std::shared_ptr<H2Conn> self);
  asio::awaitable<void> writer(std::shared_ptr<H2Conn> self);
  asio::awaitable<void> pinger(std::shared_ptr<H2Conn> self);
  void submit(const std::shared_ptr<H2Stream>& s, std::vector<H2Field> fields, bool body_follows);
  void kick();  // wake the writer: nghttp2 may have frames to send
  void fail(pool::CloseReason reason);
  void finish_stream(H2Stream& s);
  void on_settings();  // the server's SETTINGS: its stream limit becomes the capacity
  // Before the server's SETTINGS: at most min(100, max_concurrent_streams).
  std::size_t initial_capacity() const noexcept;

  asio::any_io_executor strand_;  // the connection's serial executor
  uint64_t id_;
  std::unique_ptr<UpstreamStream> stream_;
  UpstreamSettings settings_;
  Events events_;
  H2Memory memory_;  // session_'s allocator: outlives it (~H2Conn deletes session_)
  nghttp2_session* session_ = nullptr;
  std::unordered_map<int32_t, std::shared_ptr<H2Stream>> streams_;
  asio::steady_timer wake_;
  asio::steady_timer ping_timer_;
  bool writer_waiting_ = false;
  bool dead_ = false;
  bool goaway_ = false;
  bool closing_ = false;
  bool ping_acked_ = true;
  std::string out_;
};

}  // namespace upkeep
