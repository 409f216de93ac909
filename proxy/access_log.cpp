#include "access_log.hpp"

#include <cstdio>

#include "log.hpp"

namespace upkeep {
namespace {

std::string ms(std::chrono::steady_clock::duration d) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3f", std::chrono::duration<double, std::milli>(d).count());
  return b;
}

// Text values are single tokens; a URL with spaces cannot reach here (the parser
// refuses it) but quotes keep any odd byte from splitting the line.
void text_field(std::string& line, std::string_view k, std::string_view v) {
  line += ' ';
  line += k;
  line += '=';
  if (v.empty()) {
    line += '-';
  } else if (v.find_first_of(" \"") != std::string_view::npos) {
    log::append_json_string(line, v);
  } else {
    line += v;
  }
}

}  // namespace

void write_access_log(const AccessEntry& e) {
  if (!log::access_log_enabled()) return;
  const auto duration = std::chrono::steady_clock::now() - e.start_mono;
  std::string line;
  line.reserve(256);
  if (log::format() == LogFormat::json) {
    line += "{\"time\":";
    log::append_json_string(line, log::now_rfc3339());
    auto str = [&](std::string_view k, std::string_view v) {
      line += ',';
      log::append_json_string(line, k);
      line += ':';
      log::append_json_string(line, v);
    };
    auto raw = [&](std::string_view k, const std::string& v) {
      line += ',';
      log::append_json_string(line, k);
      line += ':';
      line += v;
    };
    str("client", e.client);
    str("method", e.method);
    str("url", e.url);
    raw("status", std::to_string(e.status));
    raw("bytes", std::to_string(e.bytes));
    raw("duration_ms", ms(duration));
    str("origin", e.origin.empty() ? "-" : e.origin);
    str("protocol", e.protocol.empty() ? "-" : e.protocol);
    raw("upstream_conn", std::to_string(e.conn_id));
    raw("reused", e.reused ? "true" : "false");
    raw("queue_wait_ms", ms(e.queue_wait));
    str("error", e.error.empty() ? "-" : e.error);
    line += "}\n";
  } else {
    if (!log::under_journald()) {
      line += log::now_rfc3339();
      line += ' ';
    }
    line += "access";
    text_field(line, "client", e.client);
    text_field(line, "method", e.method);
    text_field(line, "url", e.url);
    text_field(line, "status", std::to_string(e.status));
    text_field(line, "bytes", std::to_string(e.bytes));
    text_field(line, "duration_ms", ms(duration));
    text_field(line, "origin", e.origin);
    text_field(line, "protocol", e.protocol);
    text_field(line, "upstream_conn", std::to_string(e.conn_id));
    text_field(line, "reused", e.reused ? "true" : "false");
    text_field(line, "queue_wait_ms", ms(e.queue_wait));
    text_field(line, "error", e.error);
    line += '\n';
  }
  log::write_stdout_line(line);
}

}  // namespace upkeep
