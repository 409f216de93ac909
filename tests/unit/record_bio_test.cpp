#include "record_bio.hpp"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <span>
#include <string>
#include <vector>

namespace {

// A record as it travels: type 23 (application data), TLS 1.2, length, payload.
std::string record(std::size_t len, char fill) {
  std::string r;
  r += '\x17';
  r += '\x03';
  r += '\x03';
  r += static_cast<char>(len >> 8);
  r += static_cast<char>(len & 0xff);
  r.append(len, fill);
  return r;
}

struct Pair {
  int reader = -1;
  int writer = -1;
  Pair() {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    reader = fds[0];
    writer = fds[1];
    REQUIRE(::fcntl(reader, F_SETFL, O_NONBLOCK) == 0);
  }
  ~Pair() {
    if (reader >= 0) ::close(reader);
    if (writer >= 0) ::close(writer);
  }
  void send(const std::string& s) const {
    REQUIRE(::write(writer, s.data(), s.size()) == static_cast<ssize_t>(s.size()));
  }
};

// n bytes through BIO_read, which must not run dry before.
std::string read_bytes(BIO* b, std::size_t n) {
  std::string out;
  char buf[32 * 1024];
  while (out.size() < n) {
    const int got = BIO_read(b, buf, sizeof buf);
    REQUIRE(got > 0);
    out.append(buf, static_cast<std::size_t>(got));
  }
  return out;
}

// The end of the stream, as OpenSSL must see it: no bytes and no retry.
void check_ended(BIO* b) {
  char buf[16];
  CHECK(BIO_read(b, buf, sizeof buf) == 0);
  CHECK_FALSE(BIO_should_retry(b));
  CHECK(BIO_eof(b) == 1);
}

// What UpstreamStream::receive does, with a plain recv: the bytes it brought.
std::size_t owner_receive(const Pair& p, BIO* b, std::span<char> space) {
  const ssize_t got = ::recv(p.reader, space.data(), space.size(), 0);
  REQUIRE(got > 0);
  upkeep::record_bio_received(b, static_cast<std::size_t>(got));
  return static_cast<std::size_t>(got);
}

}  // namespace

TEST_CASE("each read hands over no more than the rest of one record") {
  Pair p;
  BIO* b = upkeep::record_bio_new(p.reader);
  REQUIRE(b != nullptr);
  // Many records in one recv, as an HTTP/2 connection's socket delivers them.
  const std::vector<std::size_t> sizes{1024, 30, 200, 0, 16384, 7};
  std::string all;
  for (std::size_t i = 0; i < sizes.size(); ++i)
    all += record(sizes[i], static_cast<char>('a' + i));
  p.send(all);

  std::string got;
  char buf[32 * 1024];
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    // A record larger than what one recv brought comes in pieces, never with
    // the next record's bytes.
    std::size_t left = 5 + sizes[i];
    while (left > 0) {
      const int n = BIO_read(b, buf, sizeof buf);
      REQUIRE(n > 0);
      REQUIRE(static_cast<std::size_t>(n) <= left);
      left -= static_cast<std::size_t>(n);
      got.append(buf, static_cast<std::size_t>(n));
    }
    if (i + 1 < sizes.size()) CHECK(BIO_ctrl_pending(b) > 0);
  }
  CHECK(got == all);
  CHECK(BIO_ctrl_pending(b) == 0);
  // Nothing more yet: a retry, not an end.
  CHECK(BIO_read(b, buf, sizeof buf) == -1);
  CHECK(BIO_should_retry(b));
  CHECK(BIO_should_read(b));
  CHECK(BIO_eof(b) == 0);
  BIO_free(b);
}

TEST_CASE("a record split across receives, and a smaller read than the record") {
  Pair p;
  BIO* b = upkeep::record_bio_new(p.reader);
  const std::string r1 = record(3000, 'x');
  const std::string r2 = record(10, 'y');
  char buf[4096];
  // Three header bytes only: nothing can be handed over yet.
  p.send(r1.substr(0, 3));
  CHECK(BIO_read(b, buf, sizeof buf) == -1);
  CHECK(BIO_should_retry(b));
  // The rest of the header and part of the body, after a readiness wait.
  p.send(r1.substr(3, 1000));
  upkeep::record_bio_readable(b);
  int n = BIO_read(b, buf, sizeof buf);
  CHECK(n == 1003);
  std::string got(buf, static_cast<std::size_t>(n));
  p.send(r1.substr(1003) + r2);
  upkeep::record_bio_readable(b);
  // OpenSSL may ask for less than the record: it gets that, then the rest.
  n = BIO_read(b, buf, 500);
  CHECK(n == 500);
  got.append(buf, 500);
  n = BIO_read(b, buf, sizeof buf);
  CHECK(n == static_cast<int>(r1.size() - 1503));
  got.append(buf, static_cast<std::size_t>(n));
  CHECK(got == r1);
  n = BIO_read(b, buf, sizeof buf);
  CHECK(std::string(buf, static_cast<std::size_t>(n)) == r2);
  BIO_free(b);
}

TEST_CASE("the end of the stream is reported once the bytes are out") {
  Pair p;
  BIO* b = upkeep::record_bio_new(p.reader);
  const std::string r = record(100, 'z');
  p.send(r + r.substr(0, 2));  // a whole record, then a cut-off header
  ::close(p.writer);
  p.writer = -1;
  char buf[1024];
  CHECK(BIO_read(b, buf, sizeof buf) == static_cast<int>(r.size()));
  upkeep::record_bio_readable(b);  // the end makes the socket readable
  // The partial header is handed over as it is, so OpenSSL sees the truncation.
  CHECK(BIO_read(b, buf, sizeof buf) == 2);
  check_ended(b);
  BIO_free(b);
}

TEST_CASE("the buffer goes back only when it is empty") {
  Pair p;
  BIO* b = upkeep::record_bio_new(p.reader);
  const std::string r = record(50, 'q');
  p.send(r + r);
  char buf[1024];
  CHECK(BIO_read(b, buf, sizeof buf) == static_cast<int>(r.size()));
  upkeep::record_bio_release_buffer(b);  // one record still held: kept
  CHECK(BIO_ctrl_pending(b) == r.size());
  CHECK(BIO_read(b, buf, sizeof buf) == static_cast<int>(r.size()));
  CHECK(std::string(buf, r.size()) == r);
  upkeep::record_bio_release_buffer(b);
  p.send(r);
  upkeep::record_bio_readable(b);
  CHECK(BIO_read(b, buf, sizeof buf) == static_cast<int>(r.size()));
  BIO_free(b);
}

TEST_CASE("after a short recv the next bytes come through the owner's receive") {
  Pair p;
  BIO* b = upkeep::record_bio_new(p.reader);
  const std::string r1 = record(40, 'm');
  const std::string r2 = record(3000, 'n');
  char buf[4096];
  p.send(r1);
  CHECK(BIO_read(b, buf, sizeof buf) == static_cast<int>(r1.size()));
  // That recv came back short: the socket was drained, so the BIO does not ask it
  // again (that recv would fail with EAGAIN), even when bytes are there by now.
  p.send(r2);
  CHECK(BIO_read(b, buf, sizeof buf) == -1);
  CHECK(BIO_should_retry(b));
  CHECK(BIO_should_read(b));
  char peek[8];
  CHECK(::recv(p.reader, peek, sizeof peek, MSG_PEEK) == static_cast<ssize_t>(sizeof peek));
  // The owner receives into the BIO's space; a release meanwhile keeps the buffer
  // (the sanitizer builds would see a write into a freed one).
  std::span<char> space = upkeep::record_bio_space(b);
  REQUIRE(space.size() >= r2.size());
  upkeep::record_bio_release_buffer(b);
  REQUIRE(owner_receive(p, b, space) == r2.size());
  CHECK(read_bytes(b, r2.size()) == r2);
  // A receive that failed or was cancelled lends the space back, nothing else.
  space = upkeep::record_bio_space(b);
  upkeep::record_bio_received(b, 0);
  CHECK(BIO_read(b, buf, sizeof buf) == -1);
  CHECK(BIO_eof(b) == 0);
  // The end, as the owner's receive saw it.
  ::close(p.writer);
  p.writer = -1;
  space = upkeep::record_bio_space(b);
  CHECK(::recv(p.reader, space.data(), space.size(), 0) == 0);
  upkeep::record_bio_ended(b);
  check_ended(b);
  BIO_free(b);
}

TEST_CASE("a record split across the owner's receive and the BIO's own") {
  Pair p;
  BIO* b = upkeep::record_bio_new(p.reader);
  const std::string r = record(20000 - 5, 'w');  // more than the BIO's buffer
  char buf[64];
  p.send(r.substr(0, 2));  // a partial header first, drained by the BIO's own recv
  CHECK(BIO_read(b, buf, sizeof buf) == -1);
  p.send(r.substr(2));
  // The owner's receive fills the whole space: the socket may hold more, so the
  // BIO takes the rest itself.
  std::span<char> space = upkeep::record_bio_space(b);
  const std::size_t got = owner_receive(p, b, space);
  REQUIRE(got == space.size());
  CHECK(read_bytes(b, r.size()) == r);
  BIO_free(b);
}
