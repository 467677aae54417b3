// The workloads at both ends of a proxied connection, as the telemetry
// observers name them: this node's pod from the record (named even when the
// view does not describe it), the other end from the view by IP.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "agent/telemetry/workloads.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::telemetry {

class Peers {
 public:
  // `snapshot` may be null (nothing is known but this node's pod).
  Peers(std::shared_ptr<const WorkloadSnapshot> snapshot, const ztunnel::ConnectionRecord& record,
        const std::string& cluster);
  // Null when unknown. Valid while this object lives.
  const WorkloadInfo* source() const { return source_; }
  const WorkloadInfo* destination() const { return destination_; }
  // The view the ends were looked up in; null when there is none.
  const WorkloadSnapshot* snapshot() const { return snapshot_.get(); }

 private:
  const WorkloadInfo* byEndpoint(const std::string& endpoint) const;
  const WorkloadInfo* own(const ztunnel::ConnectionRecord& record, const std::string& cluster);

  std::shared_ptr<const WorkloadSnapshot> snapshot_;
  std::optional<WorkloadInfo> own_fallback_;
  const WorkloadInfo* source_ = nullptr;
  const WorkloadInfo* destination_ = nullptr;
};

}  // namespace sluice::agent::telemetry
