// The admin listener: /livez, /healthz, /readyz, /metrics (Prometheus), /stats (JSON).
#pragma once

#include <memory>

#include <boost/asio/ip/tcp.hpp>

#include "runtime.hpp"

namespace upkeep {

// Accepts on `acceptor` until it is closed.
asio::awaitable<void> run_admin(std::shared_ptr<asio::ip::tcp::acceptor> acceptor,
                                std::shared_ptr<Runtime> rt);

// `upkeep healthcheck`: GET /readyz on addr; 0 when it answers 200.
int healthcheck(const HostPort& admin);

}  // namespace upkeep
