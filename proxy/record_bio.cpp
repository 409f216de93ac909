#include "record_bio.hpp"

#include <sys/socket.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <memory>

namespace upkeep {

namespace {

// 16 KiB less malloc's 8: a size thread_cache keeps.
constexpr std::size_t kBuffer = 16 * 1024 - 8;
constexpr std::size_t kHeader = 5;  // TLS record header: type, version, length

struct State {
  int fd = -1;
  std::unique_ptr<char[]> buf;  // [begin, end) received, not yet handed over
  std::size_t begin = 0;
  std::size_t end = 0;
  // Bytes of the current record (header included) not yet handed over; 0 at a
  // record boundary.
  std::size_t record_left = 0;
  bool eof = false;
  // The socket may hold more than was received: the last recv filled the space it
  // was given, or a readiness wait said so. Otherwise the socket was drained then,
  // and fill() leaves the next recv to the owner's receive (record_bio_space), whose
  // readiness tracking makes it cost no syscall until the socket has bytes again.
  bool more = true;
  bool lent = false;  // [end, kBuffer) is being received into by the owner

  std::size_t held() const noexcept { return end - begin; }
  // At a boundary, a whole header must be here to know where the record ends.
  bool can_give() const noexcept { return record_left > 0 ? held() > 0 : held() >= kHeader; }
};

State* state(BIO* b) {
  return static_cast<State*>(BIO_get_data(b));
}

// Moves what is held to the front of a buffer that exists.
void compact(State& s) {
  if (!s.buf) s.buf = std::make_unique_for_overwrite<char[]>(kBuffer);
  if (s.begin > 0) {
    std::memmove(s.buf.get(), s.buf.get() + s.begin, s.held());
    s.end -= s.begin;
    s.begin = 0;
  }
}

// Receives until can_give(): 1, or 0 at end of stream, or -1 (retry flag set
// when the socket has nothing yet or is left to the owner; errno kept for
// SSL_ERROR_SYSCALL).
int fill(BIO* b, State& s) {
  for (;;) {
    if (s.eof) return 0;
    if (!s.more || s.lent) {
      BIO_set_retry_read(b);
      return -1;
    }
    compact(s);  // at most a partial header is left
    const std::size_t space = kBuffer - s.end;
    const ssize_t r = ::recv(s.fd, s.buf.get() + s.end, space, 0);
    if (r > 0) {
      s.end += static_cast<std::size_t>(r);
      s.more = static_cast<std::size_t>(r) == space;
      if (s.can_give()) return 1;
      continue;
    }
    if (r == 0) {
      s.eof = true;
      return 0;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      s.more = false;
      BIO_set_retry_read(b);
    }
    return -1;
  }
}

int bio_read(BIO* b, char* out, int outl) {
  BIO_clear_retry_flags(b);
  State& s = *state(b);
  if (outl <= 0) return 0;
  if (!s.can_give()) {
    const int r = fill(b, s);
    // A partial header before the end is handed over as it is: OpenSSL then
    // reports the truncated record.
    if (r == 0 && s.held() == 0) return 0;
    if (r < 0) return -1;
  }
  if (s.record_left == 0 && s.held() >= kHeader) {
    const auto* h = reinterpret_cast<const unsigned char*>(s.buf.get() + s.begin);
    s.record_left = kHeader + ((std::size_t{h[3]} << 8) | h[4]);
  }
  std::size_t give = s.held();
  if (s.record_left > 0 && give > s.record_left) give = s.record_left;
  if (give > static_cast<std::size_t>(outl)) give = static_cast<std::size_t>(outl);
  std::memcpy(out, s.buf.get() + s.begin, give);
  s.begin += give;
  if (s.record_left > 0) s.record_left -= give;
  if (s.begin == s.end) s.begin = s.end = 0;
  return static_cast<int>(give);
}

int bio_write(BIO*, const char*, int) {
  return -1;  // the write side is the socket BIO
}

long bio_ctrl(BIO* b, int cmd, long, void*) {
  State* s = state(b);
  switch (cmd) {
    case BIO_CTRL_PENDING:
      return s ? static_cast<long>(s->held()) : 0;
    case BIO_CTRL_EOF:
      return s && s->eof && s->held() == 0 ? 1 : 0;
    case BIO_CTRL_FLUSH:
      return 1;
    default:
      return 0;
  }
}

int bio_create(BIO* b) {
  BIO_set_init(b, 1);
  return 1;
}

int bio_destroy(BIO* b) {
  delete state(b);
  BIO_set_data(b, nullptr);
  return 1;
}

BIO_METHOD* method() {
  static BIO_METHOD* m = [] {
    BIO_METHOD* x =
        BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "upkeep TLS record reader");
    BIO_meth_set_read(x, bio_read);
    BIO_meth_set_write(x, bio_write);
    BIO_meth_set_ctrl(x, bio_ctrl);
    BIO_meth_set_create(x, bio_create);
    BIO_meth_set_destroy(x, bio_destroy);
    return x;
  }();
  return m;
}

}  // namespace

BIO* record_bio_new(int fd) {
  BIO* b = BIO_new(method());
  if (b == nullptr) return nullptr;
  auto* s = new State;
  s->fd = fd;
  BIO_set_data(b, s);
  return b;
}

std::span<char> record_bio_space(BIO* b) {
  State& s = *state(b);
  compact(s);
  s.lent = true;
  return {s.buf.get() + s.end, kBuffer - s.end};
}

void record_bio_received(BIO* b, std::size_t n) noexcept {
  State& s = *state(b);
  s.more = n == kBuffer - s.end;
  s.end += n;
  s.lent = false;
}

void record_bio_ended(BIO* b) noexcept {
  State& s = *state(b);
  s.eof = true;
  s.lent = false;
}

void record_bio_readable(BIO* b) noexcept {
  state(b)->more = true;
}

void record_bio_release_buffer(BIO* b) noexcept {
  State* s = state(b);
  if (s && s->held() == 0 && !s->lent) {
    s->buf.reset();
    s->begin = s->end = 0;
  }
}

}  // namespace upkeep
