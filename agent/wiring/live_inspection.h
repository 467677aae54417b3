// The live inspection endpoints of the admin API: /live/stat (the windows of
// `sluicectl stat`, with MESHED from the pod table) and /live/tap (the tap
// stream of `sluicectl tap` and `sluicectl top`).
#pragma once

#include <string>
#include <vector>

#include "agent/admin/server.h"
#include "agent/pods/pod_manager.h"
#include "agent/telemetry/live_stats.h"
#include "agent/telemetry/stat_table.h"
#include "agent/telemetry/tap.h"
#include "agent/telemetry/tap_stream.h"
#include "agent/telemetry/workloads.h"
#include "sluice/common/json_text.h"

namespace sluice::agent::wiring {

// This node's pods from the pod table's dump, named as the metrics name them.
inline std::vector<telemetry::LocalPod> localPods(const nlohmann::json& pods_dump,
                                                  const telemetry::WorkloadSnapshot& view,
                                                  const std::string& cluster_id) {
  std::vector<telemetry::LocalPod> out;
  for (const auto& p : pods_dump.value("pods", nlohmann::json::array())) {
    telemetry::LocalPod pod;
    pod.namespace_ = p.value("namespace", "");
    pod.pod = p.value("name", "");
    pod.enrolled = p.value("enrolled", false);
    auto it = view.by_pod.find(pod.namespace_ + "/" + pod.pod);
    pod.workload =
        it != view.by_pod.end()
            ? it->second->workload
            : telemetry::describeWorkload(pod.pod, pod.namespace_, {}, {}, {}, cluster_id).workload;
    out.push_back(std::move(pod));
  }
  return out;
}

// All of them outlive the admin server.
inline void addLiveInspection(admin::Sources& sources, telemetry::LiveStats& live,
                              telemetry::TapHub& tap, const pods::PodManager& pods,
                              const telemetry::WorkloadIndex& index, std::string cluster_id) {
  sources.routes["/live/stat"] = [&live, &pods, &index, cluster_id] {
    auto local = localPods(pods.dump(), *index.current(), cluster_id);
    return admin::Response{200, "application/json",
                           jsonText(telemetry::statJson(live.snapshot(), local), 2) + "\n"};
  };
  sources.streams["/live/tap"] = telemetry::tapStreamOpener(tap);
}

}  // namespace sluice::agent::wiring
