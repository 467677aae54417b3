// Rate limit for log lines that a peer can trigger at will (refused
// handshakes, floods, resource exhaustion): at most one line per interval,
// and the next line that gets through says how many were suppressed. When no
// line comes after a burst to carry that count, flush() (the owner's tick,
// about once a second) writes it on a line of its own, so the log never
// understates a burst.
//
// Not thread-safe: each owner (a worker, a component) keeps its own, so the
// data path takes no lock. The count of events belongs in a counter; this
// only keeps the log readable.
#pragma once

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "sluice/common/fmt.h"

namespace sluice::log {

class Limiter {
 public:
  using Clock = std::chrono::steady_clock;
  explicit Limiter(std::chrono::milliseconds interval = std::chrono::seconds(1))
      : interval_(interval) {}

  // nullopt: suppress this line. Otherwise log it, with the number of lines
  // suppressed since the last one that was written.
  std::optional<uint64_t> admit(Clock::time_point now = Clock::now()) {
    if (written_ && now - last_ < interval_) {
      ++suppressed_;
      return std::nullopt;
    }
    written_ = true;
    last_ = now;
    uint64_t n = suppressed_;
    suppressed_ = 0;
    return n;
  }

  // The line admit() let through, as written: flush() names it.
  void wrote(std::shared_ptr<spdlog::logger> logger, spdlog::level::level_enum level,
             std::string line) {
    logger_ = std::move(logger);
    level_ = level;
    line_ = std::move(line);
  }

  // Lines suppressed since the last one written, once an interval has passed
  // without a line to carry their count: one line says how many, and the
  // count starts again. Returns that number (0: nothing written).
  uint64_t flush(Clock::time_point now = Clock::now()) {
    if (suppressed_ == 0 || now - last_ < interval_ || !logger_) return 0;
    uint64_t n = suppressed_;
    logger_->log(level_, "{} more line(s) like this one suppressed: {}", n, line_);
    suppressed_ = 0;
    last_ = now;
    return n;
  }

 private:
  std::chrono::milliseconds interval_;
  Clock::time_point last_{};
  bool written_ = false;
  uint64_t suppressed_ = 0;
  std::shared_ptr<spdlog::logger> logger_;
  spdlog::level::level_enum level_ = spdlog::level::info;
  std::string line_;
};

// flush() of each of an owner's limiters.
inline void flushAll(std::initializer_list<Limiter*> limiters, Limiter::Clock::time_point now) {
  for (Limiter* l : limiters) l->flush(now);
}

}  // namespace sluice::log

// Logs at `level` through `logger` when `limiter` admits the line. The
// format string and arguments are those of spdlog.
#define SLUICE_LOG_LIMITED(limiter, logger, level, ...)                              \
  do {                                                                               \
    if (auto sluice_suppressed_ = (limiter).admit()) {                               \
      std::string sluice_line_ = fmt::format(__VA_ARGS__);                           \
      auto&& sluice_logger_ = (logger);                                              \
      if (*sluice_suppressed_ == 0)                                                  \
        sluice_logger_->log(level, "{}", sluice_line_);                              \
      else                                                                           \
        sluice_logger_->log(level, "{} ({} similar lines suppressed)", sluice_line_, \
                            *sluice_suppressed_);                                    \
      (limiter).wrote(sluice_logger_, level, std::move(sluice_line_));               \
    }                                                                                \
  } while (0)
