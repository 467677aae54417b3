// Per-component spdlog loggers. Components call sluice::log::get("agent") etc.;
// main() calls setup() once with the level from the command line.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>

#include "sluice/common/fmt.h"

namespace sluice::log {

// Installs the default pattern and level; json=true emits one JSON object per line.
void setup(const std::string& level, bool json = false);

// Returns (creating on first use) the logger of a component. Lines go to
// stderr, each with one write(2) unless the thread batches (below); on a
// terminal, in colour and never batched.
std::shared_ptr<spdlog::logger> get(const std::string& component);

// From now on the lines this thread logs gather in its buffer and go out
// with one write(2) at flushThread() (or with a warning or an error, once
// 64 KiB have gathered, or when the thread ends). For a loop that logs a line per connection (the
// access log) and calls flushThread() before it sleeps: lines are whole and in order, and appear
// once the loop's round ends rather than one system call each.
void batchThisThread();
void flushThread();

}  // namespace sluice::log
