#include "agent/telemetry/peers.h"

#include "sluice/common/addr.h"

namespace sluice::agent::telemetry {

Peers::Peers(std::shared_ptr<const WorkloadSnapshot> snapshot,
             const ztunnel::ConnectionRecord& record, const std::string& cluster)
    : snapshot_(std::move(snapshot)) {
  bool outbound = record.direction == ztunnel::Direction::kOutbound;
  source_ = outbound ? own(record, cluster) : byEndpoint(record.source);
  destination_ = outbound ? byEndpoint(record.destination) : own(record, cluster);
}

const WorkloadInfo* Peers::byEndpoint(const std::string& endpoint) const {
  auto ep = SockAddr::parse(endpoint);
  if (!snapshot_ || !ep) return nullptr;
  auto it = snapshot_->by_ip.find(ep->ip());
  return it == snapshot_->by_ip.end() ? nullptr : it->second.get();
}

// The pod that owns the listener is enrolled on this node: named from the
// record ("ns/name") when the view does not describe it.
const WorkloadInfo* Peers::own(const ztunnel::ConnectionRecord& record,
                               const std::string& cluster) {
  if (snapshot_)
    if (auto it = snapshot_->by_pod.find(record.pod); it != snapshot_->by_pod.end())
      return it->second.get();
  auto slash = record.pod.find('/');
  if (slash == std::string::npos) return nullptr;
  own_fallback_ = describeWorkload(record.pod.substr(slash + 1), record.pod.substr(0, slash), {},
                                   {}, {}, cluster);
  return &*own_fallback_;
}

}  // namespace sluice::agent::telemetry
