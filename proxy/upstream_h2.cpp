#include "upstream_h2.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>

#include <nghttp2/nghttp2.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "http_rules.hpp"
#include "log.hpp"
#include "text.hpp"

namespace upkeep {
namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
// Per-stream receive windows. A stream starts small: an abandoned response (the
// mission: a client that reads the head and hangs up) then costs the origin at most
// about this much before the RST_STREAM lands, and a response up to this size
// needs no WINDOW_UPDATE at all. Measured with tests/bench S5 (1 MiB bodies, 100
// bytes read): 64 KiB from the start, growing to 1 MiB after 64 KiB taken, made
// nginx send ~318 KiB per abandoned request; this ladder ~40 KiB.
constexpr int32_t kStreamWindow = 16 * 1024;
// A stream whose client keeps taking data grows in two steps, by bytes taken and
// not by time: 64 KiB once it has taken that much, 1 MiB once it has taken 256 KiB,
// so one large download is not held to a round trip per small window. (A time gate
// failed: on a loaded or sanitizer-slowed proxy, abandoned streams outlived it
// before their hang-up was noticed, and each then cost the origin ~1 MiB.)
constexpr int32_t kStreamWindowMid = 64 * 1024;
constexpr int32_t kStreamWindowRead = 1024 * 1024;
constexpr uint64_t kGrowTaken = 256 * 1024;
// The connection window covers many streams' buffers, so one slow stream never
// starves the others.
constexpr int32_t kConnWindow = 16 * 1024 * 1024;
// One full TLS record (16 KiB) and some; read_nb fills it from several records
// when they have already arrived.
constexpr std::size_t kReadChunk = 16 * 1024 + 512;
constexpr std::size_t kWriteBatch = 64 * 1024;
// Received bytes a connection hands to nghttp2 before letting other work run.
constexpr std::size_t kReadTurn = 256 * 1024;
// Upload bytes a stream accepts ahead of what DATA frames have taken.
constexpr std::size_t kUploadBuffer = 64 * 1024;

// nghttp2 takes each chunk before the next read, so one buffer per thread serves
// every connection: an idle connection holds none. A function, not a thread_local
// in the coroutine, which may resume on another thread with the old address cached.
[[gnu::noinline]] uint8_t* read_scratch() {
  thread_local auto buf = std::make_unique_for_overwrite<uint8_t[]>(kReadChunk);
  return buf.get();
}

template <class Op, class... Args>
void complete(std::optional<Op>& op, Args&&... args) {
  Op o = std::move(*op);
  op.reset();
  asio::post(o.ex, [h = std::move(o.h), ... a = std::forward<Args>(args)]() mutable {
    std::move(h)(std::move(a)...);
  });
}

}  // namespace

// nghttp2's C callbacks, with access to both classes' internals.
struct H2Callbacks {
  // By our own map, not nghttp2's stream user data: a request still queued behind
  // the concurrency limit has no nghttp2 stream yet, but can already be refused.
  static H2Stream* stream_of(void* user, int32_t id) {
    auto& m = static_cast<H2Conn*>(user)->streams_;
    auto it = m.find(id);
    return it == m.end() ? nullptr : it->second.get();
  }

  static int on_header(nghttp2_session* /*session*/, const nghttp2_frame* frame,
                       const uint8_t* name, size_t namelen, const uint8_t* value, size_t valuelen,
                       uint8_t /*flags*/, void* user) {
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    auto* st = stream_of(user, frame->hd.stream_id);
    if (!st || st->cancelled_) return 0;
    std::string_view n(reinterpret_cast<const char*>(name), namelen);
    std::string_view v(reinterpret_cast<const char*>(value), valuelen);
    if (st->final_head_) {  // a HEADERS frame after the final head carries trailers
      if (!n.empty() && n.front() != ':') st->trailers_.push_back({std::string(n), std::string(v)});
      return 0;
    }
    if (n == ":status") {
      int code = 0;
      for (char c : v) {
        if (c < '0' || c > '9') return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        code = code * 10 + (c - '0');
      }
      st->status_ = code;
    } else if (!n.empty() && n.front() != ':') {
      st->building_.insert(field_of_lowercase(n), n, v);  // the name as sent
    }
    return 0;
  }

  static int on_frame_recv(nghttp2_session* /*session*/, const nghttp2_frame* frame, void* user) {
    auto& c = *static_cast<H2Conn*>(user);
    switch (frame->hd.type) {
      case NGHTTP2_HEADERS: {
        auto* st = stream_of(user, frame->hd.stream_id);
        if (!st || st->cancelled_) return 0;
        st->got_response_ = true;
        if (!st->final_head_ && st->status_ >= 100) {
          http::response_header<> h = std::move(st->building_);
          st->building_ = {};
          h.version(11);
          h.result(static_cast<unsigned>(st->status_));
          if (st->status_ >= 200) {
            st->final_head_ = true;
            st->fit_window(h);
          }
          st->heads_.push_back(std::move(h));
          st->status_ = 0;
        }
        if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) st->eof_ = true;
        st->progress();
        return 0;
      }
      case NGHTTP2_DATA: {
        auto* st = stream_of(user, frame->hd.stream_id);
        if (!st || st->cancelled_) return 0;
        if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
          st->eof_ = true;
          st->progress();
        }
        return 0;
      }
      case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK)) c.on_settings();
        return 0;
      case NGHTTP2_GOAWAY:
        if (!c.goaway_) {
          c.goaway_ = true;
          log::debug("upstream GOAWAY",
                     {{"conn", std::to_string(c.id_)},
                      {"last_stream", std::to_string(frame->goaway.last_stream_id)},
                      {"code", std::to_string(frame->goaway.error_code)}});
          if (c.events_.goaway) c.events_.goaway();
        }
        return 0;
      case NGHTTP2_PING:
        if (frame->hd.flags & NGHTTP2_FLAG_ACK) c.ping_acked_ = true;
        return 0;
      default:
        return 0;
    }
  }

  static int on_data_chunk(nghttp2_session* session, uint8_t /*flags*/, int32_t stream_id,
                           const uint8_t* data, size_t len, void* user) {
    auto* st = stream_of(user, stream_id);
    if (!st || st->cancelled_) {
      // Nobody will take these bytes: give the window back now.
      nghttp2_session_consume(session, stream_id, len);
      return 0;
    }
    st->rbuf_.append(reinterpret_cast<const char*>(data), len);
    st->got_response_ = true;
    st->progress();
    return 0;
  }

  static int on_stream_close(nghttp2_session* /*session*/, int32_t stream_id, uint32_t code,
                             void* user) {
    auto& c = *static_cast<H2Conn*>(user);
    auto* st = stream_of(user, stream_id);
    if (!st) return 0;
    if (!st->eof_ || code != NGHTTP2_NO_ERROR) {
      // RFC 9113 §8.7: REFUSED_STREAM means nothing of the request was processed.
      st->close_outcome_ =
          (code == NGHTTP2_REFUSED_STREAM && !st->got_response_) || !st->headers_sent_
              ? H2Outcome::refused
              : H2Outcome::reset;
    }
    c.finish_stream(*st);
    return 0;
  }

  static int on_frame_send(nghttp2_session* /*session*/, const nghttp2_frame* frame, void* user) {
    if (frame->hd.type == NGHTTP2_HEADERS) {
      if (auto* st = stream_of(user, frame->hd.stream_id)) st->headers_sent_ = true;
    }
    return 0;
  }

  static int on_frame_not_send(nghttp2_session* /*session*/, const nghttp2_frame* frame,
                               int /*lib_error*/, void* user) {
    // A request HEADERS that could not be sent (the server said GOAWAY first): the
    // server never saw the request.
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    auto& c = *static_cast<H2Conn*>(user);
    auto* st = stream_of(user, frame->hd.stream_id);
    if (!st) return 0;
    st->close_outcome_ = H2Outcome::refused;
    c.finish_stream(*st);
    return 0;
  }

  static ssize_t read_upload(nghttp2_session* /*session*/, int32_t /*stream_id*/, uint8_t* buf,
                             size_t length, uint32_t* data_flags, nghttp2_data_source* source,
                             void* /*user*/) {
    auto* st = static_cast<H2Stream*>(source->ptr);
    const std::size_t avail = st->ubuf_.size() - st->uoff_;
    if (avail == 0 && !st->upload_eof_) {
      st->upload_deferred_ = true;
      return NGHTTP2_ERR_DEFERRED;
    }
    const std::size_t n = std::min(avail, length);
    std::memcpy(buf, st->ubuf_.data() + st->uoff_, n);
    st->uoff_ += n;
    if (st->uoff_ == st->ubuf_.size()) {
      st->ubuf_.clear();
      st->uoff_ = 0;
      if (st->upload_eof_) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    }
    st->progress();  // room for a waiting write
    return static_cast<ssize_t>(n);
  }
};

// ---------------------------------------------------------------------------------
// H2Stream

void H2Stream::start_response_timer(std::chrono::steady_clock::duration timeout) {
  asio::dispatch(strand_, [self = shared_from_this(), timeout]() {
    if (self->final_head_ || self->closed_ || self->cancelled_) return;
    self->head_timer_.expires_after(timeout);
    self->head_timer_.async_wait([self](error_code ec) {
      if (ec || self->final_head_) return;
      self->head_timed_out_ = true;
      self->progress();
    });
  });
}

void H2Stream::fit_window(const http::response_header<>& h) {
  // A body announced to fit in the middle window comes in one go: waiting for
  // WINDOW_UPDATEs would cost round trips, and abandoning it costs little anyway.
  auto it = h.find(http::field::content_length);
  if (it == h.end()) return;
  const auto v = it->value();
  int32_t len = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), len);
  if (ec != std::errc{} || end != v.data() + v.size()) return;  // too large for int32 too
  if (len <= window_ || len > kStreamWindowMid) return;
  window_ = len;
  nghttp2_session_set_local_window_size(conn_->session_, NGHTTP2_FLAG_NONE, id_, window_);
}

void H2Stream::grow_window() {
  if (window_ >= kStreamWindowRead || taken_ < static_cast<uint64_t>(window_)) return;
  int32_t to = window_;
  if (taken_ >= kGrowTaken) {
    to = kStreamWindowRead;
  } else if (taken_ >= static_cast<uint64_t>(kStreamWindowMid)) {
    to = kStreamWindowMid;
  }
  if (to == window_) return;
  window_ = to;
  nghttp2_session_set_local_window_size(conn_->session_, NGHTTP2_FLAG_NONE, id_, to);
}

H2Outcome H2Stream::end_outcome() const {
  if (cancelled_) return H2Outcome::reset;
  if (conn_->dead_ && close_outcome_ == H2Outcome::ok && !closed_) {
    return headers_sent_ ? H2Outcome::conn_lost : H2Outcome::refused;
  }
  return close_outcome_;
}

void H2Stream::progress() {
  const bool over = closed_ || cancelled_ || conn_->dead_;
  if (head_) {
    if (!heads_.empty()) {
      if (final_head_) head_timer_.cancel();
      H2Head r;
      r.got_response_bytes = true;
      r.head = std::move(heads_.front());
      heads_.pop_front();
      complete(head_, std::move(r));
    } else if (over || head_timed_out_) {
      head_timer_.cancel();
      H2Head r;
      r.outcome = head_timed_out_ && !over ? H2Outcome::timeout : end_outcome();
      if (r.outcome == H2Outcome::ok) r.outcome = H2Outcome::reset;  // ended without a head
      r.got_response_bytes = got_response_;
      head_timed_out_ = false;
      complete(head_, std::move(r));
    }
  }
  if (read_) {
    if (rbuf_.size() > 0) {
      const std::size_t n = rbuf_.take(read_->buf, read_->n);
      taken_ += n;
      if (!conn_->dead_) {
        nghttp2_session_consume(conn_->session_, id_, n);
        grow_window();
        conn_->kick();
      }
      const bool eof = eof_ && rbuf_.size() == 0;
      complete(read_, H2Read{H2Outcome::ok, n, eof});
    } else if (eof_) {
      complete(read_, H2Read{H2Outcome::ok, 0, true});
    } else if (over) {
      auto o = end_outcome();
      complete(read_, H2Read{o == H2Outcome::ok ? H2Outcome::reset : o, 0, false});
    } else if (!read_->wait) {
      complete(read_, H2Read{H2Outcome::ok, 0, false});
    }
  }
  if (write_) {
    if (over && !(closed_ && close_outcome_ == H2Outcome::ok)) {
      auto o = end_outcome();
      complete(write_, o == H2Outcome::ok ? H2Outcome::reset : o);
    } else if (closed_ || ubuf_.size() - uoff_ < kUploadBuffer) {
      // A server may answer and end the stream before taking the whole body; the
      // remaining bytes have nowhere to go and are dropped.
      if (!closed_) {
        if (uoff_ == ubuf_.size()) {
          ubuf_.clear();
          uoff_ = 0;
        }
        ubuf_.append(write_->data, write_->n);
        if (write_->last) upload_eof_ = true;
        if (upload_deferred_) {
          upload_deferred_ = false;
          nghttp2_session_resume_data(conn_->session_, id_);
          conn_->kick();
        }
      }
      complete(write_, H2Outcome::ok);
    }
  }
}

void H2Stream::cancel() {
  asio::post(strand_, [self = shared_from_this()]() {
    if (self->cancelled_) return;
    self->cancelled_ = true;
    self->head_timer_.cancel();
    // Whoever still waits on the stream (the other half of a full-duplex exchange)
    // learns that it is over.
    if (self->head_) {
      H2Head r;
      r.outcome = H2Outcome::reset;
      r.got_response_bytes = self->got_response_;
      complete(self->head_, std::move(r));
    }
    if (self->read_) complete(self->read_, H2Read{H2Outcome::reset, 0, false});
    if (self->write_) complete(self->write_, H2Outcome::reset);
    auto& c = *self->conn_;
    if (c.dead_) return;
    // Bytes buffered but never taken still count against the connection window.
    const std::size_t unread = self->rbuf_.size();
    self->rbuf_.clear();
    if (unread) nghttp2_session_consume_connection(c.session_, unread);
    if (!self->closed_ && self->id_ > 0) {
      nghttp2_submit_rst_stream(c.session_, NGHTTP2_FLAG_NONE, self->id_, NGHTTP2_CANCEL);
    }
    c.kick();
  });
}

// ---------------------------------------------------------------------------------
// H2Conn

H2Conn::H2Conn(asio::any_io_executor serial, uint64_t id, std::unique_ptr<UpstreamStream> stream,
               const UpstreamSettings& settings)
    : strand_(std::move(serial)),
      id_(id),
      stream_(std::move(stream)),
      settings_(settings),
      wake_(strand_),
      ping_timer_(strand_) {
  nghttp2_session_callbacks* cbs = nullptr;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_header_callback(cbs, &H2Callbacks::on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, &H2Callbacks::on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, &H2Callbacks::on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, &H2Callbacks::on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, &H2Callbacks::on_frame_send);
  nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, &H2Callbacks::on_frame_not_send);
  nghttp2_option* opt = nullptr;
  nghttp2_option_new(&opt);
  nghttp2_option_set_no_auto_window_update(opt, 1);
  // RFC 9113 §6.5.2: until the server's SETTINGS arrive, at most min(100, config).
  nghttp2_option_set_peer_max_concurrent_streams(opt, static_cast<uint32_t>(initial_capacity()));
  nghttp2_session_client_new3(&session_, cbs, this, opt, memory_.mem());
  memory_.end_setup();
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cbs);
}

H2Conn::~H2Conn() {
  if (session_) nghttp2_session_del(session_);
}

std::size_t H2Conn::initial_capacity() const noexcept {
  return std::min<std::size_t>(100, settings_.max_concurrent_streams);
}

void H2Conn::start(Events events) {
  asio::dispatch(strand_, [self = shared_from_this(), events = std::move(events)]() mutable {
    self->events_ = std::move(events);
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, static_cast<uint32_t>(kStreamWindow)},
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 0},  // no pushed streams either
        // The default, said out loud: nginx adds each response field to our decoder's
        // table and never refers to one, until a peer's SETTINGS names this size;
        // then it shrinks the table to 0 in its next header block. 1,000 nginx
        // origins: 12 MB of dead table entries.
        {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, 4096},
    };
    nghttp2_submit_settings(self->session_, NGHTTP2_FLAG_NONE, iv, std::size(iv));
    nghttp2_session_set_local_window_size(self->session_, NGHTTP2_FLAG_NONE, 0, kConnWindow);
    asio::co_spawn(self->strand_, self->reader(self), asio::detached);
    asio::co_spawn(self->strand_, self->writer(self), asio::detached);
    asio::co_spawn(self->strand_, self->pinger(self), asio::detached);
    // At work at once with the initial limit; the server's SETTINGS adjust it.
    if (self->events_.ready) self->events_.ready(self->initial_capacity());
  });
}

// start() puts the connection to work as soon as our preface is queued, with the
// initial limit (SPEC and RFC 9113 §6.5.2: min(100, ours) until the server's SETTINGS):
// waiting for them costs a new connection a whole round trip when the server sends
// them only after our Finished (TLS 1.2). A server allowing fewer refuses the excess
// of a first burst (REFUSED_STREAM, replayed); its SETTINGS then lower the capacity,
// and nghttp2 holds any stream over the limit until one closes.
void H2Conn::on_settings() {
  auto remote =
      nghttp2_session_get_remote_settings(session_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
  const std::size_t n =
      std::max<std::size_t>(1, std::min<std::size_t>(remote, settings_.max_concurrent_streams));
  if (events_.capacity) events_.capacity(n);
}

std::shared_ptr<H2Stream> H2Conn::open(std::vector<H2Field> fields, bool body_follows) {
  auto st = std::make_shared<H2Stream>(shared_from_this(), strand_);
  asio::dispatch(
      strand_, [self = shared_from_this(), st, fields = std::move(fields), body_follows]() mutable {
        self->submit(st, std::move(fields), body_follows);
      });
  return st;
}

void H2Conn::submit(const std::shared_ptr<H2Stream>& st, std::vector<H2Field> fields,
                    bool body_follows) {
  if (dead_ || closing_) {
    st->closed_ = true;
    st->close_outcome_ = H2Outcome::refused;
    return;
  }
  std::vector<nghttp2_nv> nva;
  nva.reserve(fields.size());
  for (auto& f : fields) {
    nva.push_back({reinterpret_cast<uint8_t*>(f.name.data()),
                   reinterpret_cast<uint8_t*>(f.value.data()), f.name.size(), f.value.size(),
                   NGHTTP2_NV_FLAG_NONE});
  }
  nghttp2_data_provider prd{};
  prd.source.ptr = st.get();
  prd.read_callback = &H2Callbacks::read_upload;
  int32_t id = nghttp2_submit_request(session_, nullptr, nva.data(), nva.size(),
                                      body_follows ? &prd : nullptr, st.get());
  if (id < 0) {
    st->closed_ = true;
    st->close_outcome_ = H2Outcome::refused;
    return;
  }
  st->id_ = id;
  st->window_ = kStreamWindow;
  streams_.emplace(id, st);
  kick();
}

void H2Conn::finish_stream(H2Stream& s) {
  if (s.closed_) return;
  s.closed_ = true;  // a cancelled stream gave its buffered bytes back in cancel()
  s.progress();
  if (s.id_ > 0) {
    streams_.erase(s.id_);  // may drop the last owner but the caller's reference
  }
}

void H2Conn::close() {
  asio::dispatch(strand_, [self = shared_from_this()]() {
    if (self->dead_ || self->closing_) return;
    self->closing_ = true;
    nghttp2_session_terminate_session(self->session_, NGHTTP2_NO_ERROR);
    self->kick();
  });
}

void H2Conn::kick() {
  if (writer_waiting_) wake_.cancel();
}

void H2Conn::fail(pool::CloseReason reason) {
  if (dead_) return;
  dead_ = true;
  error_code ignored;
  stream_->socket().shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  stream_->socket().close(ignored);
  wake_.cancel();
  ping_timer_.cancel();
  auto streams = std::move(streams_);
  streams_.clear();
  for (auto& [id, st] : streams)
    st->progress();
  if (events_.closed) {
    auto cb = std::move(events_.closed);
    events_ = {};
    cb(goaway_ && reason == pool::CloseReason::server_closed ? pool::CloseReason::goaway : reason);
  }
}

asio::awaitable<void> H2Conn::reader(std::shared_ptr<H2Conn> self) {
  std::size_t fed = 0;  // bytes given to nghttp2 since the last wait
  while (!dead_) {
    error_code ec;
    UpstreamStream::Wait w = UpstreamStream::Wait::none;
    uint8_t* buf = read_scratch();
    const std::size_t n = stream_->read_nb(buf, kReadChunk, ec, w);
    if (n > 0) {
      auto rv = nghttp2_session_mem_recv(session_, buf, n);
      if (rv < 0) {
        log::warn("upstream HTTP/2 protocol error",
                  {{"conn", std::to_string(id_)},
                   {"detail", quoted(nghttp2_strerror(static_cast<int>(rv)))}});
        fail(pool::CloseReason::error);
        co_return;
      }
      fed += n;
      if (fed >= kReadTurn) {
        // A busy connection must not keep the thread from everything else.
        kick();
        fed = 0;
        co_await asio::post(strand_, asio::use_awaitable);
      }
      continue;
    }
    if (ec || w == UpstreamStream::Wait::none) {
      fail(closing_ || ec == asio::error::eof || ec == asio::ssl::error::stream_truncated
               ? pool::CloseReason::server_closed
               : pool::CloseReason::error);
      co_return;
    }
    if (fed > 0) {
      kick();  // WINDOW_UPDATEs, SETTINGS and PING ACKs to send
      fed = 0;
    }
    // With streams open a response is due: receive it straight into the record
    // BIO. Idle, hold no buffer while waiting (a thousand idle origins).
    // (Two statements: GCC 12 miscompiles co_await on a conditional expression.)
    error_code wec;
    if (w == UpstreamStream::Wait::read && !streams_.empty()) {
      wec = co_await stream_->receive();
    } else {
      wec = co_await stream_->wait(w);
    }
    if (dead_) co_return;
    if (wec) {
      fail(pool::CloseReason::error);
      co_return;
    }
  }
  (void)self;
}

asio::awaitable<void> H2Conn::writer(std::shared_ptr<H2Conn> self) {
  while (!dead_) {
    out_.clear();
    while (out_.size() < kWriteBatch) {
      const uint8_t* data = nullptr;
      auto n = nghttp2_session_mem_send(session_, &data);
      if (n < 0) {
        fail(pool::CloseReason::error);
        co_return;
      }
      if (n == 0) break;
      out_.append(reinterpret_cast<const char*>(data), static_cast<std::size_t>(n));
    }
    if (out_.empty()) {
      if (!nghttp2_session_want_read(session_) && !nghttp2_session_want_write(session_)) {
        // Both sides said GOAWAY and no stream is left.
        fail(goaway_ ? pool::CloseReason::goaway : pool::CloseReason::shutdown);
        co_return;
      }
      wake_.expires_at(asio::steady_timer::time_point::max());
      writer_waiting_ = true;
      co_await wake_.async_wait(use_tuple);
      writer_waiting_ = false;
      continue;
    }
    // A retry after a wait passes the same bytes again, as OpenSSL requires.
    for (std::size_t off = 0; off < out_.size();) {
      error_code ec;
      UpstreamStream::Wait w = UpstreamStream::Wait::none;
      const std::size_t n = stream_->write_nb(out_.data() + off, out_.size() - off, ec, w);
      off += n;
      if (n > 0) continue;  // partial writes report a record at a time
      if (ec || w == UpstreamStream::Wait::none) {
        fail(pool::CloseReason::error);
        co_return;
      }
      auto wec = co_await stream_->wait(w);
      if (dead_) co_return;
      if (wec) {
        fail(pool::CloseReason::error);
        co_return;
      }
    }
    if (dead_) co_return;
    if (streams_.empty() && out_.capacity() > 4096) std::string().swap(out_);  // idle: give it back
  }
  (void)self;
}

// PINGs an idle connection every ping_interval; an ACK later than ping_timeout
// means the path or the server is gone, and the connection leaves the pool before a
// request finds out the slow way.
asio::awaitable<void> H2Conn::pinger(std::shared_ptr<H2Conn> self) {
  if (settings_.ping_interval.count() == 0) co_return;
  while (!dead_) {
    ping_timer_.expires_after(settings_.ping_interval);
    co_await ping_timer_.async_wait(use_tuple);
    if (dead_ || closing_) co_return;
    if (!streams_.empty()) continue;
    ping_acked_ = false;
    nghttp2_submit_ping(session_, NGHTTP2_FLAG_NONE, nullptr);
    kick();
    ping_timer_.expires_after(settings_.ping_timeout);
    co_await ping_timer_.async_wait(use_tuple);
    if (dead_ || closing_) co_return;
    if (!ping_acked_) {
      log::info("upstream HTTP/2 PING unanswered; closing", {{"conn", std::to_string(id_)}});
      fail(pool::CloseReason::ping_timeout);
      co_return;
    }
  }
  (void)self;
}

}  // namespace upkeep
