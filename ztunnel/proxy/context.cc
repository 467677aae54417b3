#include "ztunnel/proxy/context.h"

#include <sys/resource.h>

#include <algorithm>
#include <limits>

#include "sluice/common/log.h"

namespace sluice::ztunnel::proxy {

int descriptorCeiling(unsigned reserve) {
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) != 0 || nofile.rlim_cur == RLIM_INFINITY ||
      nofile.rlim_cur > static_cast<rlim_t>(std::numeric_limits<int>::max()))
    return std::numeric_limits<int>::max();
  const rlim_t keep = std::min<rlim_t>(reserve, nofile.rlim_cur / 4);
  return static_cast<int>(nofile.rlim_cur - keep);
}

bool WorkerContext::withinDescriptorReserve(int fd, const std::string& pod, const char* what) {
  if (fd < descriptor_ceiling) return false;
  counters().add(Counter::kLimitRejected);
  SLUICE_LOG_LIMITED(descriptor_log, log::get("ztunnel"), spdlog::level::warn,
                     "the agent holds more than {} descriptors, the reserve below its "
                     "RLIMIT_NOFILE begins at {} (--descriptor-reserve): refusing {} of pod {} "
                     "(see which pods hold connections with `sluicectl top`; raise the agent's "
                     "RLIMIT_NOFILE if this is legitimate load)",
                     fd, descriptor_ceiling, what, pod);
  return true;
}

std::optional<std::string> WorkerContext::denied(const LiveRecord& live, bool recheck) {
  if (!authorizer) return std::nullopt;
  InboundRequest request = inboundRequestOf(live);
  request.recheck = recheck;
  Authorization a = authorizer->authorize(request);
  if (a.verdict == Verdict::kAllow) return std::nullopt;
  if (a.why.empty()) a.why = "refused by the authorization hook";
  counters().add(Counter::kDenied);
  const auto& r = live.rec;
  SLUICE_LOG_LIMITED(denied_log, log::get("ztunnel"), spdlog::level::info,
                     "pod {}: denied {} connection {} from {} ({}) to {}: {}", live.dest_pod,
                     toString(r.path), r.id, r.source,
                     r.source_principal.empty() ? "unauthenticated" : r.source_principal,
                     r.destination, a.why);
  return std::move(a.why);
}

}  // namespace sluice::ztunnel::proxy
