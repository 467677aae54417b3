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

// Returns (creating on first use) the logger of a component.
std::shared_ptr<spdlog::logger> get(const std::string& component);

}  // namespace sluice::log
