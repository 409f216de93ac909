#include "client_session_impl.hpp"
#include "metrics.hpp"

namespace upkeep::downstream {

// The client stopped reading: finish reading the upstream body within the drain caps
// so the connection can go back to the pool instead of being thrown away.
asio::awaitable<void> ClientSession::drain(std::shared_ptr<ConnectionPool> pool,
                                           std::shared_ptr<UpstreamConn> conn,
                                           const UpstreamSettings& s) {
  auto& reg = metrics::Registry::get();
  if (conn->response_until_close()) {
    pool->release(conn, false, pool::CloseReason::client_abort);
    co_return;
  }
  if (auto rem = conn->content_length_remaining(); rem && *rem > s.drain.max_bytes) {
    reg.drain_aborted.inc();
    pool->release(conn, false, pool::CloseReason::drain_limit);
    co_return;
  }
  conn->expires_after(s.drain.max_time);
  uint64_t drained = 0;
  bool failed = false;
  while (!conn->response_done()) {
    auto [ec, n] = co_await conn->read_body(body_buf(), kBodyChunk);
    drained += n;
    if (ec || drained > s.drain.max_bytes) {
      failed = true;
      break;
    }
  }
  conn->expires_never();
  // Counted once the pool has the connection back, so whoever sees the counter move
  // can count on the drained connection being reusable already.
  const bool reused = !failed && conn->reusable();
  pool->release(conn, reused, pool::CloseReason::drain_limit, std::nullopt, [drained, reused]() {
    auto& r = metrics::Registry::get();
    r.drained_bytes.inc(drained);
    if (!reused) r.drain_aborted.inc();
  });
}

}  // namespace upkeep::downstream
