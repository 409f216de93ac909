#include "log.hpp"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>

namespace upkeep::log {
namespace {

std::mutex g_mutex;
std::atomic<int> g_level{static_cast<int>(LogLevel::info)};
std::atomic<LogFormat> g_format{LogFormat::text};
std::atomic<bool> g_access{true};
const bool g_journald = std::getenv("JOURNAL_STREAM") != nullptr;

void write_all(int fd, const std::string& s) {
  const char* p = s.data();
  std::size_t left = s.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n <= 0) return;  // nowhere to report a failing log sink
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

}  // namespace

void configure(const LogSettings& s) {
  g_level.store(static_cast<int>(s.level), std::memory_order_relaxed);
  g_format.store(s.format, std::memory_order_relaxed);
  g_access.store(s.access_log, std::memory_order_relaxed);
}

bool enabled(LogLevel level) noexcept {
  return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed);
}

bool under_journald() noexcept {
  return g_journald;
}
LogFormat format() noexcept {
  return g_format.load(std::memory_order_relaxed);
}
bool access_log_enabled() noexcept {
  return g_access.load(std::memory_order_relaxed);
}

std::string now_rfc3339() {
  using namespace std::chrono;
  auto now = system_clock::now();
  std::time_t t = system_clock::to_time_t(now);
  auto ms = duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return buf;
}

void write(LogLevel level, std::string_view msg, std::initializer_list<Field> fields) {
  std::string line;
  line.reserve(128);
  if (format() == LogFormat::json) {
    line += '{';
    if (!g_journald) {
      line += "\"time\":";
      append_json_string(line, now_rfc3339());
      line += ',';
    }
    line += "\"level\":";
    append_json_string(line, level_name(level));
    line += ",\"msg\":";
    append_json_string(line, msg);
    for (const auto& f : fields) {
      line += ',';
      append_json_string(line, f.key);
      line += ':';
      append_json_string(line, f.value);
    }
    line += "}\n";
  } else {
    if (!g_journald) {
      line += now_rfc3339();
      line += ' ';
    }
    line += level_name(level);
    line += ' ';
    line += msg;
    for (const auto& f : fields) {
      line += ' ';
      line += f.key;
      line += '=';
      line += f.value;
    }
    line += '\n';
  }
  std::lock_guard lock(g_mutex);
  write_all(STDERR_FILENO, line);
}

void write_stdout_line(const std::string& line) {
  std::lock_guard lock(g_mutex);
  write_all(STDOUT_FILENO, line);
}

}  // namespace upkeep::log
