#include "controlplane/kube/token_review.h"

#include <nlohmann/json.hpp>

#include "sluice/common/fmt.h"
#include "sluice/common/json_text.h"

namespace sluice::controlplane::kube {

Result<std::string> TokenReviewer::nodeOf(const std::string& token) {
  auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard lk(mu_);
    std::erase_if(cache_, [&](const auto& kv) { return kv.second.second <= now; });
    auto it = cache_.find(token);
    if (it != cache_.end()) return it->second.first;
  }
  nlohmann::json review = {{"apiVersion", "authentication.k8s.io/v1"},
                           {"kind", "TokenReview"},
                           {"spec", {{"token", token}, {"audiences", {audience_}}}}};
  auto resp = client_.post("/apis/authentication.k8s.io/v1/tokenreviews", jsonText(review), 10000);
  if (!resp) return fail("TokenReview: " + resp.error().describe());
  if (resp->status != 201 && resp->status != 200)
    return fail(
        fmt::format("TokenReview: HTTP {} (does the control plane's RBAC allow creating "
                    "tokenreviews?)",
                    resp->status));
  auto j = nlohmann::json::parse(resp->body, nullptr, false);
  if (!j.is_object() || !j.contains("status") || !j["status"].is_object())
    return fail("TokenReview: malformed response");
  const auto& st = j["status"];
  if (!st.value("authenticated", false))
    return fail("token not authenticated: " + st.value("error", std::string("no reason given")));
  std::string user = st.contains("user") ? st["user"].value("username", "") : "";
  if (user != username_)
    return fail(
        fmt::format("token belongs to {}, not the agent's service account {}", user, username_));
  auto claim = [&](const char* key) -> std::string {
    if (!st["user"].contains("extra") || !st["user"]["extra"].contains(key)) return "";
    const auto& v = st["user"]["extra"][key];
    return v.is_array() && !v.empty() && v[0].is_string() ? v[0].get<std::string>() : "";
  };
  std::string node = claim("authentication.kubernetes.io/node-name");
  if (node.empty()) {
    std::string pod_uid = claim("authentication.kubernetes.io/pod-uid");
    if (pod_uid.empty())
      return fail("token is not bound to a pod (use a projected service account token)");
    node = source_.nodeOfPod(pod_uid);
    if (node.empty()) return fail("the token's pod " + pod_uid + " is not scheduled on any node");
  }
  std::lock_guard lk(mu_);
  cache_[token] = {node, now + std::chrono::seconds(60)};
  return node;
}

}  // namespace sluice::controlplane::kube
