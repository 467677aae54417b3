// The agent's admin API as sluicectl reads it: one HTTP/1.0 GET over a
// blocking socket with a timeout (the API is local and small).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "sluice/common/result.h"

namespace sluice::ctl {

struct AdminResponse {
  int status = 0;
  std::string body;
};

// Fails when the API cannot be reached or does not answer HTTP; the message
// says what to do.
Result<AdminResponse> adminFetch(const std::string& admin, const std::string& path);
// adminFetch, then a 200 with a JSON body (else the error names the path).
Result<nlohmann::json> adminJson(const std::string& admin, const std::string& path);

}  // namespace sluice::ctl
