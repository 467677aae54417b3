#include "controlplane/kube/policy_resources.h"

#include "sluice/common/fmt.h"
#include "sluice/common/log.h"

namespace sluice::controlplane::kube {

std::vector<PolicyResource> policyResources(bool watch_istio) {
  std::vector<PolicyResource> out = {
      {"AuthorizationPolicy", "/apis/security.sluice.dev/v1/authorizationpolicies",
       "security.sluice.dev/v1", true},
      {"PeerAuthentication", "/apis/security.sluice.dev/v1/peerauthentications",
       "security.sluice.dev/v1", true},
  };
  if (watch_istio) {
    out.push_back({"AuthorizationPolicy", "/apis/security.istio.io/v1/authorizationpolicies",
                   "security.istio.io/v1", false});
    out.push_back({"PeerAuthentication", "/apis/security.istio.io/v1/peerauthentications",
                   "security.istio.io/v1", false});
  }
  return out;
}

void writeStatus(const Client& client, const std::string& collection_path,
                 const StatusWrite& write) {
  auto logger = log::get("kubernetes");
  // /apis/G/V/plural -> /apis/G/V/namespaces/NS/plural/NAME/status
  auto slash = collection_path.rfind('/');
  std::string path = fmt::format("{}/namespaces/{}/{}/{}/status", collection_path.substr(0, slash),
                                 write.ns, collection_path.substr(slash + 1), write.name);
  std::string what = fmt::format("{}/{} ({})", write.ns, write.name, path);
  auto resp = client.mergePatch(path, write.patch, 10000);
  if (!resp) {
    logger->warn("could not write the status of {}: {}", what, resp.error().describe());
  } else if (resp->status == 403) {
    logger->warn(
        "could not write the status of {}: HTTP 403; the control plane needs `patch` on the "
        "status subresource (the ClusterRole in deploy/rbac.yaml grants it)",
        what);
  } else if (resp->status == 404) {
    logger->info("{} was deleted before its status could be written", what);
  } else if (resp->status != 200) {
    logger->warn("could not write the status of {}: HTTP {}: {}", what, resp->status,
                 resp->body.substr(0, 200));
  } else {
    // Once per change of the outcome: this is where a policy's warnings or
    // its rejection reach the log in Kubernetes mode.
    auto level = write.summary.starts_with("Accepted=True (Accepted)") ? spdlog::level::info
                                                                       : spdlog::level::warn;
    logger->log(level, "{} {}/{}: {}", collection_path.substr(collection_path.rfind('/') + 1),
                write.ns, write.name, write.summary);
  }
}

}  // namespace sluice::controlplane::kube
