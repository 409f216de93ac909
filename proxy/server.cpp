#include "server.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "admin.hpp"
#include "client_session.hpp"
#include "endpoint_text.hpp"
#include "intercept/interceptor.hpp"
#include "listener.hpp"
#include "log.hpp"

namespace upkeep {
namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
using tcp = asio::ip::tcp;

// prev: the running snapshot on a reload, whose interception state (CA, minted
// certificates, fallbacks) carries over while the intercept: keys stay the same.
std::shared_ptr<const Snapshot> make_snapshot(const Config& cfg,
                                              const std::shared_ptr<const Snapshot>& prev = {}) {
  auto snap = std::make_shared<Snapshot>();
  snap->router = std::make_shared<Router>(std::make_shared<const Config>(cfg));
  if (!cfg.access.auth.empty()) snap->auth_lines = load_auth_lines(cfg.access.auth);
  if (cfg.access.connect == ConnectMode::intercept) {
    if (prev && prev->interceptor && prev->interceptor->settings() == cfg.intercept) {
      snap->interceptor = prev->interceptor;
    } else {
      snap->interceptor = std::make_shared<intercept::Interceptor>(cfg);
    }
  }
  return snap;
}

// One accept loop for both listeners; on_accept gets each new socket, already on a
// strand of its own when there is more than one thread, and its peer (from accept
// itself: asking the socket later costs a getpeername per connection).
asio::awaitable<void> accept_loop(
    std::shared_ptr<tcp::acceptor> acceptor, std::shared_ptr<Runtime> rt,
    std::function<void(tcp::socket, const tcp::endpoint&)> on_accept) {
  using clock = std::chrono::steady_clock;
  // Out of descriptors the loop retries every 50 ms; the log says so once, then once
  // a second with a count, then when accepting works again (not 20 lines a second).
  uint64_t failures = 0, unreported = 0;
  clock::time_point reported{};
  for (;;) {
    // With one event-loop thread every handler is already serialised; a strand per
    // client would only add a lock and a queue hop to each of its operations.
    auto ex = rt->threads == 1 ? asio::any_io_executor(rt->ioc.get_executor())
                               : asio::any_io_executor(asio::make_strand(rt->ioc));
    tcp::endpoint peer;
    auto [ec, socket] = co_await acceptor->async_accept(ex, peer, use_tuple);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor->is_open()) co_return;
      // EMFILE and friends: back off briefly instead of spinning on the error.
      const auto now = clock::now();
      ++unreported;
      if (failures++ == 0) {
        log::warn("accept failed", {{"error", ec.message()}, {"retry_ms", "50"}});
        reported = now;
        unreported = 0;
      } else if (now - reported >= std::chrono::seconds(1)) {
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now - reported);
        log::warn("accept still failing", {{"error", ec.message()},
                                           {"failures", std::to_string(unreported)},
                                           {"over_ms", std::to_string(ms.count())}});
        reported = now;
        unreported = 0;
      }
      asio::steady_timer t(rt->ioc, std::chrono::milliseconds(50));
      co_await t.async_wait(use_tuple);
      continue;
    }
    if (failures != 0) {
      log::info("accepting again", {{"failed_accepts", std::to_string(failures)}});
      failures = 0;
    }
    on_accept(std::move(socket), peer);
  }
}

asio::awaitable<void> accept_clients(std::shared_ptr<tcp::acceptor> acceptor,
                                     std::shared_ptr<Runtime> rt) {
  return accept_loop(std::move(acceptor), rt, [rt](tcp::socket socket, const tcp::endpoint& peer) {
    const auto max = rt->current()->router->config().limits.max_client_connections;
    if (rt->client_connections.load() >= max) {
      // Refused before reading anything: existing clients keep their share.
      error_code ignored;
      socket.close(ignored);
      return;
    }
    rt->client_connections.fetch_add(1);
    start_client_session(std::move(socket), peer, rt);
  });
}

asio::awaitable<void> accept_admin(std::shared_ptr<tcp::acceptor> acceptor,
                                   std::shared_ptr<Runtime> rt) {
  return accept_loop(std::move(acceptor), rt, [rt](tcp::socket socket, const tcp::endpoint&) {
    start_admin_session(std::move(socket), rt);
  });
}

// $WATCHDOG_USEC, when systemd set it for this process ($WATCHDOG_PID, if present).
std::optional<std::chrono::microseconds> watchdog_interval() {
  const char* usec = std::getenv("WATCHDOG_USEC");
  if (!usec || !*usec) return std::nullopt;
  if (const char* pid = std::getenv("WATCHDOG_PID"); pid && *pid) {
    if (std::strtol(pid, nullptr, 10) != ::getpid()) return std::nullopt;
  }
  char* end = nullptr;
  unsigned long long v = std::strtoull(usec, &end, 10);
  if (*end != '\0' || v == 0) return std::nullopt;
  return std::chrono::microseconds(v);
}

}  // namespace

std::vector<std::string> load_auth_lines(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError("access.auth: cannot read " + path);
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    if (line.find(':') == std::string::npos) {
      throw ConfigError("access.auth: " + path + ": a line is not user:password");
    }
    lines.push_back(line);
  }
  return lines;
}

void sd_notify_state(const std::string& state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (!path || !*path) return;
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::size_t len = std::strlen(path);
  if (len >= sizeof(addr.sun_path)) {
    ::close(fd);
    return;
  }
  std::memcpy(addr.sun_path, path, len);
  if (path[0] == '@') addr.sun_path[0] = '\0';  // abstract namespace
  auto alen = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);
  (void)::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr),
                 alen);
  ::close(fd);
}

int run_server(Config cfg, const std::string& config_path, const Overrides& overrides) {
  const unsigned workers = std::max(1u, cfg.workers);
  asio::io_context ioc(static_cast<int>(workers));
  auto rt = std::make_shared<Runtime>(ioc, workers);
  try {
    rt->snapshot.store(make_snapshot(cfg));
  } catch (const ConfigError& e) {
    log::error(e.what());
    return 1;
  }

  // Listeners, signals and reloads share one strand: acceptors are swapped and
  // closed only there, never while another thread is inside one of them.
  auto control = asio::make_strand(ioc);
  std::shared_ptr<tcp::acceptor> proxy_acceptor;
  std::shared_ptr<tcp::acceptor> admin_acceptor;
  try {
    proxy_acceptor = open_listener(ioc, cfg.listen);
    if (cfg.admin) admin_acceptor = open_listener(ioc, *cfg.admin);
  } catch (const std::exception& e) {
    log::error("cannot listen", {{"error", quoted(e.what())}});
    return 1;
  }
  auto proxy_text = [&]() { return endpoint_text(proxy_acceptor->local_endpoint()); };
  auto admin_text = [&]() {
    return admin_acceptor ? endpoint_text(admin_acceptor->local_endpoint()) : std::string("-");
  };

  asio::co_spawn(control, accept_clients(proxy_acceptor, rt), asio::detached);
  if (admin_acceptor) asio::co_spawn(control, accept_admin(admin_acceptor, rt), asio::detached);
  rt->pools.warm(rt->current()->router);

  // SIGHUP: everything is prepared first (parse, snapshot, new listeners) and only
  // then swapped in, so a failure anywhere keeps the running configuration whole.
  // Established clients are never touched; a changed listener is opened before the
  // old one closes.
  auto reload = [&]() {
    if (config_path.empty()) {
      log::warn("SIGHUP: no config file to reload (running the embedded default)");
      return;
    }
    sd_notify_state("RELOADING=1");
    try {
      Config next = load_config_file(config_path);
      apply_overrides(next, overrides);
      auto snap = make_snapshot(next, rt->current());
      std::shared_ptr<tcp::acceptor> next_proxy;
      std::shared_ptr<tcp::acceptor> next_admin;
      const bool admin_changed = next.admin != cfg.admin;
      if (next.listen != cfg.listen) next_proxy = open_listener(ioc, next.listen);
      if (admin_changed && next.admin) next_admin = open_listener(ioc, *next.admin);
      if (next.workers != cfg.workers) {
        log::warn("reload: a new workers count takes effect on restart");
      }
      error_code ignored;
      if (next_proxy) {
        proxy_acceptor->close(ignored);
        proxy_acceptor = next_proxy;
        asio::co_spawn(control, accept_clients(proxy_acceptor, rt), asio::detached);
      }
      if (admin_changed) {
        if (admin_acceptor) admin_acceptor->close(ignored);
        admin_acceptor = next_admin;
        if (admin_acceptor)
          asio::co_spawn(control, accept_admin(admin_acceptor, rt), asio::detached);
      }
      rt->snapshot.store(snap);
      rt->pools.reconfigure(snap->router);
      log::configure(next.log);
      const unsigned keep_workers = cfg.workers;
      cfg = std::move(next);
      cfg.workers = keep_workers;
      log::info("configuration reloaded",
                {{"file", config_path}, {"proxy", proxy_text()}, {"admin", admin_text()}});
    } catch (const std::exception& e) {
      log::error("reload failed; keeping the running configuration", {{"error", quoted(e.what())}});
    }
    sd_notify_state("READY=1");
  };

  // Signals: TERM/INT drain (a second one exits at once), HUP reloads.
  asio::signal_set signals(control, SIGTERM, SIGINT, SIGHUP);
  asio::steady_timer drain_timer(control);
  int stop_signals = 0;
  std::function<void()> wait_signal;
  std::chrono::steady_clock::time_point drain_deadline;
  std::function<void()> check_drained = [&]() {
    if (rt->client_connections.load() == 0 || std::chrono::steady_clock::now() >= drain_deadline) {
      rt->pools.shutdown_all();
      // Give pools a turn to close their sockets, then stop.
      asio::post(ioc, [&ioc]() { ioc.stop(); });
      return;
    }
    drain_timer.expires_after(std::chrono::milliseconds(25));
    drain_timer.async_wait([&](error_code ec) {
      if (!ec) check_drained();
    });
  };
  wait_signal = [&]() {
    signals.async_wait([&](error_code ec, int sig) {
      if (ec) return;
      if (sig == SIGHUP) {
        reload();
        wait_signal();
        return;
      }
      if (++stop_signals > 1) {
        log::warn("second signal: exiting now");
        ioc.stop();
        return;
      }
      log::info("shutting down", {{"signal", std::to_string(sig)},
                                  {"grace_ms", std::to_string(cfg.shutdown_grace.count())}});
      sd_notify_state("STOPPING=1");
      rt->draining.store(true);
      error_code ignored;
      proxy_acceptor->close(ignored);
      rt->run_drain_hooks();
      drain_deadline = std::chrono::steady_clock::now() + cfg.shutdown_grace;
      check_drained();
      wait_signal();
    });
  };
  wait_signal();

  // systemd watchdog: ping at half the interval from the control strand, so a
  // wedged event loop stops the pings and systemd restarts us.
  asio::steady_timer watchdog(control);
  std::function<void()> ping_watchdog;
  if (auto interval = watchdog_interval()) {
    ping_watchdog = [&, half = *interval / 2]() {
      sd_notify_state("WATCHDOG=1");
      watchdog.expires_after(half);
      watchdog.async_wait([&](error_code ec) {
        if (!ec) ping_watchdog();
      });
    };
    asio::post(control, ping_watchdog);
  }

  log::info("listening", {{"proxy", proxy_text()},
                          {"admin", admin_text()},
                          {"workers", std::to_string(workers)},
                          {"config", cfg.source.empty() ? "<default>" : cfg.source}});
  sd_notify_state("READY=1\nMAINPID=" + std::to_string(::getpid()));

  std::vector<std::thread> threads;
  for (unsigned i = 1; i < workers; ++i)
    threads.emplace_back([&ioc]() { ioc.run(); });
  ioc.run();
  for (auto& t : threads)
    t.join();
  if (admin_acceptor) {
    error_code ignored;
    admin_acceptor->close(ignored);
  }
  log::info("stopped");
  return 0;
}

}  // namespace upkeep
