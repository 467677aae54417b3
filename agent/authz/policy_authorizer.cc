#include "agent/authz/policy_authorizer.h"

#include <arpa/inet.h>

#include <cstring>

#include "sluice/common/addr.h"
#include "sluice/common/fmt.h"
#include "sluice/common/log.h"

namespace sluice::agent::authz {

namespace {

std::array<uint8_t, 16> ip6Bytes(const IpAddr& ip) {
  in6_addr a = ip.v6addr();
  std::array<uint8_t, 16> out;
  std::memcpy(out.data(), a.s6_addr, 16);
  return out;
}

}  // namespace

const char* toString(DenyReason r) {
  switch (r) {
    case DenyReason::kNoPolicyView:
      return "no_policy_view";
    case DenyReason::kDenyMatched:
      return "deny_matched";
    case DenyReason::kNoAllowMatched:
      return "no_allow_matched";
    case DenyReason::kStrictMtls:
      return "strict_mtls";
    case DenyReason::kCount:
      break;
  }
  return "?";
}

AuthzView::AuthzView(std::shared_ptr<const policy::PolicySet> policies,
                     std::vector<LocalWorkload> workloads)
    : policies_(policies ? std::move(policies) : policy::PolicySet::empty()) {
  for (auto& w : workloads) {
    auto [it, inserted] = workloads_.try_emplace(w.ns + "/" + w.name);
    if (!inserted) continue;
    it->second.workload = std::move(w);
    // Views into the strings' final home (the map's node never moves).
    for (const auto& [k, v] : it->second.workload.labels) it->second.labels.push_back({k, v});
  }
}

const AuthzView::Entry* AuthzView::find(std::string_view pod, const IpAddr& ip) const {
  auto it = workloads_.find(pod);
  if (it == workloads_.end()) return nullptr;
  const LocalWorkload& w = it->second.workload;
  bool match = ip.empty() || (ip.isV4() && (w.ip4 == 0 || w.ip4 == ip.v4net())) ||
               (ip.isV6() && (w.ip6.empty() || w.ip6 == ip));
  return match ? &it->second : nullptr;
}

PolicyAuthorizer::PolicyAuthorizer(Options options) : options_(options) {}

bool PolicyAuthorizer::update(std::shared_ptr<const policy::PolicySet> policies,
                              std::vector<LocalWorkload> workloads) {
  auto next = std::make_shared<const AuthzView>(std::move(policies), std::move(workloads));
  auto prev = view_.exchange(next, std::memory_order_acq_rel);
  if (!prev) return true;
  if (prev->policySet() != next->policySet()) return true;
  for (const auto& [pod, e] : next->workloads()) {
    const auto* old = prev->find(pod, {});
    if (old && (old->workload.labels != e.workload.labels || old->workload.uid != e.workload.uid))
      return true;
  }
  return false;
}

policy::Request PolicyAuthorizer::requestFor(const AuthzView::Entry& entry, const IpAddr& source_ip,
                                             std::string_view source_principal,
                                             const IpAddr& destination_ip,
                                             uint16_t destination_port, bool mutual_tls) const {
  policy::Request q;
  q.destination = entry.view();
  q.destination_ip = destination_ip.v4net();  // 0 for IPv6
  if (destination_ip.isV6()) q.destination_ip6 = ip6Bytes(destination_ip);
  q.destination_port = destination_port;
  q.source_ip = source_ip.v4net();
  if (source_ip.isV6()) q.source_ip6 = ip6Bytes(source_ip);
  q.source_principal = source_principal;
  q.mutual_tls = mutual_tls;
  q.node_ip = options_.allow_node_probes ? entry.workload.probe_source : 0;
  if (options_.allow_node_probes && entry.workload.probe_source6.isV6())
    q.node_ip6 = ip6Bytes(entry.workload.probe_source6);
  return q;
}

std::string PolicyAuthorizer::explain(const policy::Decision& d) {
  std::string out = policy::toString(d.reason);
  // "no policy" also answers when policies exist and none decided.
  if (d.reason == policy::Reason::kNoPolicy)
    out += " decides: no ALLOW policy applies to the workload, and no DENY matched";
  if (!d.policy.empty()) out += fmt::format(" by policy {}/{}", d.policy.ns, d.policy.name);
  return out;
}

ztunnel::Authorization PolicyAuthorizer::deny(DenyReason r, std::string why) {
  denied_[static_cast<size_t>(r)].fetch_add(1, std::memory_order_relaxed);
  return {ztunnel::Verdict::kDeny, std::move(why)};
}

ztunnel::Authorization PolicyAuthorizer::authorize(const ztunnel::InboundRequest& r) {
  // Keeps the set alive while the Decision's PolicyRefs point into it.
  auto view = view_.load(std::memory_order_acquire);
  const AuthzView::Entry* entry = view ? view->find(r.pod, r.destination.ip()) : nullptr;
  if (!entry)
    return deny(DenyReason::kNoPolicyView,
                "no policy view: the control plane has not sent this pod's workload yet");
  auto q = requestFor(*entry, r.source.ip(), r.source_principal, r.destination.ip(),
                      r.destination.port(), r.mutual_tls);
  // From the node's address: a probe only if the node itself opened it.
  if (q.fromNode() && options_.node_opened && !options_.node_opened(r.source, r.destination)) {
    q.node_ip = 0;
    q.node_ip6.reset();
  }
  auto d = view->policies().evaluate(q);
  if (d.audit_count > 0 && !r.recheck) {
    audit_matches_.fetch_add(1, std::memory_order_relaxed);
    // The operator asked for these lines by writing an AUDIT policy.
    std::string audits;
    for (size_t i = 0; i < d.audit_count && i < policy::Decision::kMaxAudits; ++i)
      audits += fmt::format("{}{}/{}", i ? ", " : "", d.audits[i].ns, d.audits[i].name);
    log::get("policy")->info("audit: {} {} connection from {} ({}) to pod {} at {} ({}): {}",
                             d.allow ? "allowed" : "denied", ztunnel::toString(r.path),
                             formatEndpoint(r.source),
                             r.source_principal.empty() ? "unauthenticated" : r.source_principal,
                             r.pod, formatEndpoint(r.destination), audits, explain(d));
  }
  if (d.allow) return {};
  switch (d.reason) {
    case policy::Reason::kDenyMatched:
      return deny(DenyReason::kDenyMatched, explain(d));
    case policy::Reason::kStrictMtls:
      return deny(DenyReason::kStrictMtls, explain(d));
    default:
      return deny(DenyReason::kNoAllowMatched, explain(d));
  }
}

AuthzStats PolicyAuthorizer::stats() const {
  AuthzStats s;
  for (size_t i = 0; i < s.denied.size(); ++i)
    s.denied[i] = denied_[i].load(std::memory_order_relaxed);
  s.audit_matches = audit_matches_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace sluice::agent::authz
