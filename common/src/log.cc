#include "sluice/common/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <mutex>

namespace sluice::log {

namespace {
std::mutex g_mutex;
spdlog::level::level_enum g_level = spdlog::level::info;
std::string g_pattern = "%Y-%m-%dT%H:%M:%S.%fZ %^%l%$ [%n] %v";
}  // namespace

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
  auto logger = spdlog::stderr_color_mt(component);
  logger->set_pattern(g_pattern, spdlog::pattern_time_type::utc);
  logger->set_level(g_level);
  return logger;
}

}  // namespace sluice::log
