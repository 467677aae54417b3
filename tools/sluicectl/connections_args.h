// `sluicectl connections [reset ID | reset --pod NS/NAME]`: the arguments as
// the request they make (the admin API's POST /connections/reset).
#pragma once

#include <string>
#include <vector>

namespace sluice::ctl {

struct ConnectionsRequest {
  bool reset = false;  // false: list (GET /connections)
  std::string path;    // the admin API path (with its query string)
  std::string error;   // non-empty: a usage error (exit 2)
};

// `args`: the positional arguments after `connections`; `pod`: --pod.
ConnectionsRequest connectionsRequest(const std::vector<std::string>& args, const std::string& pod);

}  // namespace sluice::ctl
