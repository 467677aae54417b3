#include "tools/sluicectl/connections_args.h"

#include <algorithm>
#include <cctype>

namespace sluice::ctl {

namespace {

constexpr const char* kUsage =
    "usage: sluicectl connections [reset ID | reset --pod NAMESPACE/NAME]";

bool decimal(const std::string& s) {
  return !s.empty() && s.size() <= 20 &&
         std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); }) &&
         s.find_first_not_of('0') != std::string::npos;
}

}  // namespace

ConnectionsRequest connectionsRequest(const std::vector<std::string>& args,
                                      const std::string& pod) {
  ConnectionsRequest r;
  if (args.empty()) {
    if (!pod.empty())
      r.error = std::string("--pod is for 'connections reset'\n") + kUsage;
    else
      r.path = "/connections";
    return r;
  }
  if (args[0] != "reset") {
    r.error = "unknown connections action '" + args[0] + "'\n" + kUsage;
    return r;
  }
  r.reset = true;
  if (args.size() == 2 && pod.empty()) {
    if (!decimal(args[1])) {
      r.error = "invalid connection id '" + args[1] +
                "': expected the ID column of 'sluicectl connections'";
      return r;
    }
    r.path = "/connections/reset?id=" + args[1];
    return r;
  }
  if (args.size() == 1 && !pod.empty()) {
    auto slash = pod.find('/');
    bool dns = std::all_of(pod.begin(), pod.end(), [](unsigned char c) {
      return std::isalnum(c) || c == '-' || c == '.' || c == '/';
    });
    if (!dns || slash == 0 || slash == std::string::npos || slash + 1 == pod.size() ||
        pod.find('/', slash + 1) != std::string::npos) {
      r.error = "invalid --pod '" + pod + "': expected NAMESPACE/NAME";
      return r;
    }
    r.path = "/connections/reset?pod=" + pod;  // DNS names: nothing to encode
    return r;
  }
  r.error = std::string(args.size() == 1 ? "reset needs a connection ID or --pod\n"
                                         : "reset takes a connection ID or --pod, not both\n") +
            kUsage;
  return r;
}

}  // namespace sluice::ctl
