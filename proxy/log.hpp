// Diagnostic log (stderr) and access log (stdout). Lines are written whole under a
// mutex so concurrent workers never interleave. Under journald ($JOURNAL_STREAM)
// lines carry no timestamp of their own; journald stamps them.
#pragma once

#include <string>
#include <string_view>

#include "config.hpp"
#include "text.hpp"

namespace upkeep::log {

void configure(const LogSettings& s);
bool enabled(LogLevel level) noexcept;
// Read on every line from any worker; reload may change them, hence atomics.
LogFormat format() noexcept;
// stderr and stdout go to journald, which stamps each line itself.
bool under_journald() noexcept;
bool access_log_enabled() noexcept;

// msg is a short human sentence; fields are pre-rendered "key=value" pairs (text)
// and are emitted as JSON members when format is json.
struct Field {
  std::string_view key;
  std::string value;
};
void write(LogLevel level, std::string_view msg, std::initializer_list<Field> fields = {});

inline void debug(std::string_view m, std::initializer_list<Field> f = {}) {
  if (enabled(LogLevel::debug)) write(LogLevel::debug, m, f);
}
inline void info(std::string_view m, std::initializer_list<Field> f = {}) {
  if (enabled(LogLevel::info)) write(LogLevel::info, m, f);
}
inline void warn(std::string_view m, std::initializer_list<Field> f = {}) {
  if (enabled(LogLevel::warn)) write(LogLevel::warn, m, f);
}
inline void error(std::string_view m, std::initializer_list<Field> f = {}) {
  write(LogLevel::error, m, f);
}

// RFC 3339 UTC time with milliseconds: "2026-11-23T21:48:12.123Z".
std::string now_rfc3339();
using upkeep::append_json_string;
// Writes one complete line to stdout (access log).
void write_stdout_line(const std::string& line);

}  // namespace upkeep::log
