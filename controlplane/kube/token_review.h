// Agent authentication in Kubernetes: the agent presents its projected
// service account token (audience "sluice"); the API server's TokenReview
// says whose it is. Accepted only for the agent's service account, and the
// node is where that token's pod is scheduled (from the token's node-name
// claim, else from the pod's spec.nodeName in our watch cache).
#pragma once

#include <chrono>
#include <map>
#include <mutex>
#include <string>

#include "controlplane/kube/client.h"
#include "controlplane/kube/source.h"

namespace sluice::controlplane::kube {

class TokenReviewer {
 public:
  // service_account: "namespace:name"
  TokenReviewer(const Client& client, const Source& source, std::string service_account,
                std::string audience = "sluice")
      : client_(client),
        source_(source),
        username_("system:serviceaccount:" + service_account),
        audience_(std::move(audience)) {}

  // The node the token's agent runs on, or why it is refused.
  Result<std::string> nodeOf(const std::string& token);

 private:
  const Client& client_;
  const Source& source_;
  std::string username_;
  std::string audience_;
  std::mutex mu_;
  // token -> (node, until): a TokenReview per Sign call would be wasteful.
  std::map<std::string, std::pair<std::string, std::chrono::steady_clock::time_point>> cache_;
};

}  // namespace sluice::controlplane::kube
