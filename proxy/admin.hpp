// The admin listener: /livez, /healthz, /readyz, /metrics (Prometheus), /stats (JSON).
#pragma once

#include <memory>

#include <boost/asio/ip/tcp.hpp>

#include "runtime.hpp"

namespace upkeep {

// Serves one admin connection; the socket must be on a strand of its own.
void start_admin_session(asio::ip::tcp::socket socket, std::shared_ptr<Runtime> rt);

// `upkeep healthcheck`: GET /readyz on addr; 0 when it answers 200.
int healthcheck(const HostPort& admin);

}  // namespace upkeep
