// latency_relay: a TCP relay that behaves like a long link, for the tests and the bench.
//
//   latency_relay --listen 127.0.0.1:0 --to 127.0.0.1:PORT --delay-ms 25
//                 [--rate-mbit N] [--max-queue-kib K] [--port-file FILE]
//
// Prints the bound port as the first line of stdout (and writes it, with a newline, to
// --port-file through a rename, so a reader never sees a partial file), then one line
// "exit" when it stops after SIGTERM/SIGINT. Standalone Boost.Asio, one thread, no upkeep
// code.
//
// The model, with d = --delay-ms (the one-way delay; a round trip is 2d):
//
// - Data: every chunk read from one side is written to the other d after it was read,
//   in order (a FIFO of (deadline, bytes) per direction). With --rate-mbit a direction
//   also serialises: a chunk starts "on the wire" when the one before it has finished,
//   and takes bytes * 8 / rate to send, then d to arrive.
//
// - The TCP handshake costs one round trip, as on a real link. The client's connect()
//   completes at once here (the relay accepts locally), so the relay makes up for it:
//   it opens the connection to the target d after the accept (when the SYN would have
//   arrived), and it treats each side's bytes as sent no earlier than that side could
//   have sent them on a real link: the client at accept + 2d (its SYN-ACK arrived), the
//   server at accept + 3d (the client's ACK arrived). So a client that connects and
//   sends a request at once gets the answer 4d = two round trips after its connect
//   began (one for the handshake, one for the exchange); a server that greets first is
//   heard 4d after the connect too. A refused or failed connect to the target closes
//   the client with a reset 2d after the accept (when a real RST would have arrived).
//
// - Half-close: a FIN (end of stream) read from one side is passed on (shutdown(send)
//   on the other) d after it was read, after every byte read before it. The connection
//   ends once both directions have passed their FIN.
//
// - A read or write error (RST, ...) on either side ends the connection at once: both
//   sockets are closed with a reset (SO_LINGER 0); bytes still queued are dropped.
//
// - Bounded buffering: a direction stops reading while its queue holds more than
//   --max-queue-kib (default 4096) and resumes once the queue is drained below it; the
//   kernel's socket buffers then push back on the sender, as a full window would.
//
// Every socket has TCP_NODELAY, so no Nagle/delayed-ACK stall is added on top.
#include <boost/asio.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using boost::system::error_code;

namespace {

struct Options {
  tcp::endpoint listen{asio::ip::make_address("127.0.0.1"), 0};
  tcp::endpoint to;
  Clock::duration delay{};
  double rate_bytes_per_s = 0;  // 0: unlimited
  std::size_t max_queue = 4u << 20;
  std::string port_file;
};

constexpr std::size_t kReadSize = 64 * 1024;
constexpr std::size_t kMaxWriteBuffers = 64;

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "latency_relay: " << why
            << "\nusage: latency_relay --listen HOST:PORT --to HOST:PORT --delay-ms N "
               "[--rate-mbit N] [--max-queue-kib K] [--port-file FILE]\n";
  std::exit(2);
}

tcp::endpoint parse_endpoint(const std::string& s) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos) usage("expected HOST:PORT, got " + s);
  std::string host = s.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  error_code ec;
  auto addr = asio::ip::make_address(host, ec);
  if (ec) usage("not an IP address: " + host);
  char* end = nullptr;
  long port = std::strtol(s.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port < 0 || port > 65535) usage("bad port in " + s);
  return {addr, static_cast<unsigned short>(port)};
}

double parse_number(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  double d = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || d < 0) usage("bad value for " + flag + ": " + v);
  return d;
}

Options parse_args(int argc, char** argv) {
  Options o;
  bool have_to = false, have_delay = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "--listen") {
      o.listen = parse_endpoint(value());
    } else if (a == "--to") {
      o.to = parse_endpoint(value());
      have_to = true;
    } else if (a == "--delay-ms") {
      o.delay = std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double, std::milli>(parse_number(a, value())));
      have_delay = true;
    } else if (a == "--rate-mbit") {
      o.rate_bytes_per_s = parse_number(a, value()) * 1e6 / 8;
    } else if (a == "--max-queue-kib") {
      o.max_queue = static_cast<std::size_t>(parse_number(a, value())) * 1024;
      if (o.max_queue == 0) usage("--max-queue-kib must be at least 1");
    } else if (a == "--port-file") {
      o.port_file = value();
    } else {
      usage("unknown argument " + a);
    }
  }
  if (!have_to) usage("--to is required");
  if (!have_delay) usage("--delay-ms is required");
  return o;
}

class Connection;

// One direction of a connection: reads `from`, delivers to `to` after the delay.
struct Direction {
  struct Chunk {
    Clock::time_point deadline;
    std::vector<char> bytes;  // empty: the FIN
  };

  Direction(tcp::socket& f, tcp::socket& t, asio::io_context& io) : from(f), to(t), timer(io) {}

  tcp::socket& from;
  tcp::socket& to;
  asio::steady_timer timer;
  std::deque<Chunk> queue;
  std::size_t queued = 0;             // bytes in queue
  Clock::time_point earliest_send{};  // bytes read before this count as sent at it
  Clock::time_point wire_free{};      // --rate-mbit: when the last chunk has left
  bool reading = false, eof_read = false, writing = false, timer_armed = false;
  bool fin_sent = false;
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(asio::io_context& io, tcp::socket client, const Options& opt)
      : opt_(opt),
        client_(std::move(client)),
        server_(io),
        connect_timer_(io),
        up_(client_, server_, io),
        down_(server_, client_, io) {}

  void start() {
    auto accepted = Clock::now();
    up_.earliest_send = accepted + 2 * opt_.delay;
    down_.earliest_send = accepted + 3 * opt_.delay;
    error_code ec;
    client_.set_option(tcp::no_delay(true), ec);
    // Bytes the client sends right away are read (and stamped) from now on.
    read(up_);
    auto self = shared_from_this();
    connect_timer_.expires_at(accepted + opt_.delay);
    connect_timer_.async_wait([this, self](error_code e) {
      if (e || closed_) return;
      server_.async_connect(opt_.to, [this, self](error_code ce) { on_connect(ce); });
    });
  }

 private:
  void on_connect(error_code ec) {
    if (closed_) return;
    if (ec) {
      // A real client would hear the RST one round trip after its SYN.
      auto self = shared_from_this();
      connect_timer_.expires_at(up_.earliest_send);
      connect_timer_.async_wait([this, self](error_code) { abort(); });
      return;
    }
    connected_ = true;
    error_code ignored;
    server_.set_option(tcp::no_delay(true), ignored);
    read(down_);
    schedule(up_);  // whatever the client sent meanwhile
  }

  Clock::time_point deadline_for(Direction& d, std::size_t bytes) {
    auto sent = std::max(Clock::now(), d.earliest_send);
    if (opt_.rate_bytes_per_s > 0) {
      auto start = std::max(sent, d.wire_free);
      d.wire_free =
          start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                      static_cast<double>(bytes) / opt_.rate_bytes_per_s));
      sent = d.wire_free;
    }
    return sent + opt_.delay;
  }

  void read(Direction& d) {
    if (closed_ || d.reading || d.eof_read || d.queued > opt_.max_queue) return;
    d.reading = true;
    auto buf = std::make_shared<std::vector<char>>(kReadSize);
    auto self = shared_from_this();
    d.from.async_read_some(asio::buffer(*buf), [this, self, &d, buf](error_code ec, std::size_t n) {
      d.reading = false;
      if (closed_) return;
      if (ec == asio::error::eof) {
        d.eof_read = true;
        d.queue.push_back({deadline_for(d, 0), {}});
        schedule(d);
        return;
      }
      if (ec) {
        abort();
        return;
      }
      buf->resize(n);
      if (n < kReadSize / 16) buf->shrink_to_fit();  // small reads do not pin 64 KiB each
      d.queued += n;
      d.queue.push_back({deadline_for(d, n), std::move(*buf)});
      schedule(d);
      read(d);
    });
  }

  // Writes whatever is due, or waits for the first deadline.
  void schedule(Direction& d) {
    if (closed_ || d.writing || d.timer_armed || d.queue.empty()) return;
    if (&d == &up_ && !connected_) return;  // on_connect calls again
    auto now = Clock::now();
    if (d.queue.front().deadline > now) {
      d.timer_armed = true;
      d.timer.expires_at(d.queue.front().deadline);
      auto self = shared_from_this();
      d.timer.async_wait([this, self, &d](error_code ec) {
        d.timer_armed = false;
        if (ec || closed_) return;
        schedule(d);
      });
      return;
    }
    if (d.queue.front().bytes.empty()) {  // the FIN is due: everything before it went out
      d.queue.pop_front();
      error_code ec;
      d.to.shutdown(tcp::socket::shutdown_send, ec);
      d.fin_sent = true;
      if (up_.fin_sent && down_.fin_sent) close();
      return;
    }
    std::vector<asio::const_buffer> bufs;
    std::size_t count = 0;
    for (auto& c : d.queue) {
      if (c.deadline > now || c.bytes.empty() || bufs.size() == kMaxWriteBuffers) break;
      bufs.emplace_back(asio::buffer(c.bytes));
      ++count;
    }
    d.writing = true;
    auto self = shared_from_this();
    asio::async_write(d.to, bufs, [this, self, &d, count](error_code ec, std::size_t) {
      d.writing = false;
      if (closed_) return;
      if (ec) {
        abort();
        return;
      }
      for (std::size_t i = 0; i < count; ++i) {
        d.queued -= d.queue.front().bytes.size();
        d.queue.pop_front();
      }
      read(d);  // resumes a paused reader once the queue is below the bound
      schedule(d);
    });
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    error_code ec;
    connect_timer_.cancel();
    up_.timer.cancel();
    down_.timer.cancel();
    client_.close(ec);
    server_.close(ec);
  }

  void abort() {
    if (closed_) return;
    error_code ec;
    for (auto* s : {&client_, &server_})
      if (s->is_open()) s->set_option(asio::socket_base::linger(true, 0), ec);
    close();
  }

  const Options& opt_;
  tcp::socket client_;
  tcp::socket server_;
  asio::steady_timer connect_timer_;
  Direction up_;    // client -> server
  Direction down_;  // server -> client
  bool connected_ = false;
  bool closed_ = false;
};

class Relay {
 public:
  Relay(asio::io_context& io, const Options& opt) : io_(io), opt_(opt), acceptor_(io), retry_(io) {
    acceptor_.open(opt.listen.protocol());
    acceptor_.set_option(tcp::acceptor::reuse_address(true));
    acceptor_.bind(opt.listen);
    acceptor_.listen(4096);
  }

  unsigned short port() const { return acceptor_.local_endpoint().port(); }

  void accept() {
    acceptor_.async_accept([this](error_code ec, tcp::socket s) {
      if (ec == asio::error::operation_aborted) return;
      if (ec) {  // EMFILE and the like: try again shortly
        retry_.expires_after(std::chrono::milliseconds(50));
        retry_.async_wait([this](error_code e) {
          if (!e) accept();
        });
        return;
      }
      std::make_shared<Connection>(io_, std::move(s), opt_)->start();
      accept();
    });
  }

  void stop() {
    error_code ec;
    acceptor_.close(ec);
    retry_.cancel();
  }

 private:
  asio::io_context& io_;
  const Options& opt_;
  tcp::acceptor acceptor_;
  asio::steady_timer retry_;
};

}  // namespace

int main(int argc, char** argv) {
  Options opt = parse_args(argc, argv);
  asio::io_context io(1);
  std::optional<Relay> relay;
  try {
    relay.emplace(io, opt);
  } catch (const std::exception& e) {
    std::cerr << "latency_relay: cannot listen on " << opt.listen << ": " << e.what() << "\n";
    return 1;
  }
  if (!opt.port_file.empty()) {
    std::string tmp = opt.port_file + ".tmp";
    std::FILE* f = std::fopen(tmp.c_str(), "w");
    if (!f || std::fprintf(f, "%u\n", relay->port()) < 0 || std::fclose(f) != 0 ||
        std::rename(tmp.c_str(), opt.port_file.c_str()) != 0) {
      std::cerr << "latency_relay: cannot write " << opt.port_file << "\n";
      return 1;
    }
  }
  std::cout << relay->port() << std::endl;
  asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&](error_code ec, int) {
    if (ec) return;
    relay->stop();
    io.stop();  // open connections end with the process
  });
  relay->accept();
  io.run();
  std::cout << "exit" << std::endl;
  return 0;
}
