#include "sluice/common/log.h"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <unistd.h>

#include <cerrno>
#include <mutex>
#include <string>

namespace sluice::log {

namespace {
std::mutex g_mutex;
spdlog::level::level_enum g_level = spdlog::level::info;
std::string g_pattern = "%Y-%m-%dT%H:%M:%S.%fZ %^%l%$ [%n] %v";

constexpr size_t kBatchLimit = 64 * 1024;

// All of `text` to stderr. One writer at a time, so that a batch stays whole
// even where the kernel would interleave (a pipe's writes above PIPE_BUF).
void writeAll(const char* p, size_t n) {
  static std::mutex write_mu;
  std::lock_guard lk(write_mu);
  while (n > 0) {
    ssize_t w = ::write(STDERR_FILENO, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;  // nowhere to log to: the lines are dropped, as spdlog's sinks do
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// What a batching thread logged and has not written yet; written when the
// thread ends.
struct ThreadBuffer {
  bool batching = false;
  std::string lines;
  void flush() {
    if (lines.empty()) return;
    writeAll(lines.data(), lines.size());
    lines.clear();
  }
  ~ThreadBuffer() { flush(); }
};
thread_local ThreadBuffer t_buffer;

// Formats under the sink's lock (base_sink), writes outside any logger's.
class StderrSink final : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t line;
    formatter_->format(msg, line);
    if (!t_buffer.batching) {
      writeAll(line.data(), line.size());
      return;
    }
    t_buffer.lines.append(line.data(), line.size());
    // A warning or an error goes out at once (with what came before it): it
    // may be the last thing the thread says.
    if (msg.level >= spdlog::level::warn || t_buffer.lines.size() >= kBatchLimit) t_buffer.flush();
  }
  void flush_() override {}
};
}  // namespace

void batchThisThread() { t_buffer.batching = true; }

void flushThread() { t_buffer.flush(); }

void setup(const std::string& level, bool json) {
  std::lock_guard lock(g_mutex);
  g_level = spdlog::level::from_str(level);
  if (json)
    g_pattern = R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","component":"%n","msg":"%v"})";
  spdlog::set_pattern(g_pattern, spdlog::pattern_time_type::utc);
  spdlog::set_level(g_level);
  spdlog::apply_all([](const std::shared_ptr<spdlog::logger>& l) { l->set_level(g_level); });
}

std::shared_ptr<spdlog::logger> get(const std::string& component) {
  std::lock_guard lock(g_mutex);
  if (auto existing = spdlog::get(component)) return existing;
  auto logger = ::isatty(STDERR_FILENO) ? spdlog::stderr_color_mt(component)
                                        : spdlog::create<StderrSink>(component);
  logger->set_pattern(g_pattern, spdlog::pattern_time_type::utc);
  logger->set_level(g_level);
  return logger;
}

}  // namespace sluice::log
