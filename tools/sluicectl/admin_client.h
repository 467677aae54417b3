// sluicectl's client of the agent's admin API (local, small documents).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace sluice::ctl {

// GET `path` (with its query string, already escaped) and parse the JSON;
// exits with the agent's error message on anything but 200.
nlohmann::json adminGet(const std::string& admin, const std::string& path);

// A JSON field as text ("" when absent; booleans and numbers printed).
std::string str(const nlohmann::json& j, const char* key);

}  // namespace sluice::ctl
