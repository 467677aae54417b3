// Rate limit for log lines that a peer can trigger at will (refused
// handshakes, floods, resource exhaustion): at most one line per interval,
// and the next line that gets through says how many were suppressed.
//
// Not thread-safe: each owner (a worker, a component) keeps its own, so the
// data path takes no lock. The count of events belongs in a counter; this
// only keeps the log readable.
#pragma once

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdint>
#include <optional>

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

 private:
  std::chrono::milliseconds interval_;
  Clock::time_point last_{};
  bool written_ = false;
  uint64_t suppressed_ = 0;
};

}  // namespace sluice::log

// Logs at `level` through `logger` when `limiter` admits the line. The
// format string and arguments are those of spdlog.
#define SLUICE_LOG_LIMITED(limiter, logger, level, ...)                                    \
  do {                                                                                     \
    if (auto sluice_suppressed_ = (limiter).admit()) {                                     \
      if (*sluice_suppressed_ == 0)                                                        \
        (logger)->log(level, __VA_ARGS__);                                                 \
      else                                                                                 \
        (logger)->log(level, "{} ({} similar lines suppressed)", fmt::format(__VA_ARGS__), \
                      *sluice_suppressed_);                                                \
    }                                                                                      \
  } while (0)
