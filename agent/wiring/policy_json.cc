#include "agent/wiring/policy_json.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <set>
#include <tuple>

#include "sluice/common/addr.h"
#include "sluice/common/fmt.h"
#include "sluice/common/ip6.h"
#include "sluice/common/x509.h"

namespace sluice::agent::wiring {

namespace {

using nlohmann::json;

std::string labelsText(const policy::LabelMap& labels) {
  std::string out;
  for (const auto& [k, v] : labels) out += fmt::format("{}{}={}", out.empty() ? "" : ",", k, v);
  return out;
}

// "mesh", "namespace", or "workload (app=x)".
std::string scopeOf(const std::string& ns, const policy::LabelMap& selector,
                    const std::string& root) {
  if (!selector.empty()) return "workload (" + labelsText(selector) + ")";
  return ns == root ? "mesh" : "namespace";
}

json refJson(const policy::PolicyRef& r) {
  if (r.empty()) return nullptr;
  return fmt::format("{}/{}", r.ns, r.name);
}

json error(const std::string& msg) { return {{"error", msg}}; }

}  // namespace

json policiesJson(const authz::PolicyAuthorizer& authorizer, const MeshedPods& meshed,
                  const std::string& rejected) {
  json out = {{"authorization_policies", json::array()},
              {"peer_authentications", json::array()},
              {"rejected_update", rejected.empty() ? json(nullptr) : json(rejected)}};
  auto view = authorizer.view();
  if (!view) {
    out["note"] = "no view from the control plane yet: every inbound connection is refused";
    return out;
  }
  const auto& set = view->policies();
  const std::string& root = set.options().root_namespace;
  // Per policy: the local workloads it selects, meshed or not.
  struct Selected {
    json meshed = json::array(), unmeshed = json::array();
    void add(const std::string& name, bool is_meshed) {
      (is_meshed ? meshed : unmeshed).push_back(name);
    }
  };
  std::map<const policy::AuthorizationPolicy*, Selected> applies;
  std::map<std::string, Selected> peer_workloads;
  // A PeerAuthentication may decide only some ports (portLevelMtls): each
  // workload is asked about every port one of them names, besides the rest.
  std::set<uint16_t> ports = {0};
  for (const auto& pa : set.peerAuthentications())
    for (const auto& [port, mode] : pa.port_level) ports.insert(port);
  for (const auto& [name, e] : view->workloads()) {
    bool is_meshed = meshed.count(name) > 0;
    for (const auto* p : set.applicable(e.view())) applies[p].add(name, is_meshed);
    std::set<std::string> deciding;
    for (uint16_t port : ports) {
      policy::PolicyRef from;
      set.mtlsMode(e.view(), port, &from);
      if (!from.empty()) deciding.insert(fmt::format("{}/{}", from.ns, from.name));
    }
    for (const auto& pa : deciding) peer_workloads[pa].add(name, is_meshed);
  }
  const Selected none;
  for (const auto& p : set.authorizationPolicies()) {
    auto it = applies.find(&p);
    const Selected& selected = it == applies.end() ? none : it->second;
    out["authorization_policies"].push_back({{"namespace", p.ns},
                                             {"name", p.name},
                                             {"action", policy::toString(p.action)},
                                             {"scope", scopeOf(p.ns, p.selector, root)},
                                             {"rules", p.rules.size()},
                                             {"dry_run", p.dry_run},
                                             {"warnings", p.warnings},
                                             {"workloads", selected.meshed},
                                             {"unmeshed_workloads", selected.unmeshed}});
  }
  for (const auto& p : set.peerAuthentications()) {
    json ports = json::object();
    for (const auto& [port, mode] : p.port_level)
      ports[std::to_string(port)] = policy::toString(mode);
    auto it = peer_workloads.find(p.ns + "/" + p.name);
    const Selected& selected = it == peer_workloads.end() ? none : it->second;
    out["peer_authentications"].push_back({{"namespace", p.ns},
                                           {"name", p.name},
                                           {"mode", policy::toString(p.mode)},
                                           {"port_level", ports},
                                           {"scope", scopeOf(p.ns, p.selector, root)},
                                           {"warnings", p.warnings},
                                           {"workloads", selected.meshed},
                                           {"unmeshed_workloads", selected.unmeshed}});
  }
  return out;
}

std::pair<int, json> authzCheckJson(const authz::PolicyAuthorizer& authorizer,
                                    const MeshedPods& meshed, const SourceLookup& sources,
                                    const std::string& trust_domain,
                                    const std::map<std::string, std::string>& query) {
  auto from_it = query.find("from");
  auto to_it = query.find("to");
  if (from_it == query.end() || to_it == query.end())
    return {400, error("both from (NS/SA or IP) and to (NS/POD:PORT) are required")};
  const std::string& from = from_it->second;
  const std::string& to = to_it->second;

  std::string principal;
  IpAddr source_ip;
  bool from_identity = false;
  if (auto ip = IpAddr::parse(from)) {
    source_ip = *ip;
    // A meshed pod's connections come over mutual TLS with its identity.
    if (sources.identity_of)
      if (auto id = sources.identity_of(*ip)) principal = *id;
  } else if (auto slash = from.find('/'); slash != std::string::npos && slash > 0 &&
                                          slash + 1 < from.size() &&
                                          from.find('/', slash + 1) == std::string::npos) {
    principal = x509::workloadUri(trust_domain, from.substr(0, slash), from.substr(slash + 1));
    from_identity = true;
  } else {
    return {400,
            error("from '" + from + "' is neither NAMESPACE/SERVICEACCOUNT nor an IP address")};
  }
  auto slash = to.find('/');
  auto colon = to.rfind(':');
  unsigned long port = 0;
  if (slash == std::string::npos || colon == std::string::npos || colon < slash || slash == 0 ||
      colon == slash + 1 || colon + 1 == to.size() ||
      to.find_first_not_of("0123456789", colon + 1) != std::string::npos ||
      (port = std::stoul(to.substr(colon + 1))) == 0 || port > 65535)
    return {400, error("to '" + to + "' is not NAMESPACE/POD:PORT (port 1-65535)")};
  std::string ns = to.substr(0, slash), pod = to.substr(slash + 1, colon - slash - 1);

  auto view = authorizer.view();
  const authz::AuthzView::Entry* entry = view ? view->find(ns + "/" + pod, {}) : nullptr;
  if (!entry)
    return {400, error("pod " + ns + "/" + pod +
                       " is not a workload of this node in the control plane's view "
                       "(sluicectl workloads lists them; ask the agent of the pod's node)")};
  // The destination of the source's family (an IPv6 client reaches the
  // pod's IPv6 address; an identity reaches its IPv4 one, or on an
  // IPv6-only pod its IPv6 one).
  auto destinationFor = [&](const IpAddr& src) {
    return (src.isV6() || entry->workload.ip4 == 0) && !entry->workload.ip6.empty()
               ? entry->workload.ip6
               : IpAddr::v4(entry->workload.ip4);
  };
  // As its connections arrive: a meshed source with `principal` over mTLS,
  // an unmeshed one in plaintext (no principal).
  auto judge = [&](const IpAddr& src, bool meshed_source = true) {
    const std::string& who = meshed_source ? principal : std::string();
    auto q = authorizer.requestFor(*entry, src, who, destinationFor(src),
                                   static_cast<uint16_t>(port), !who.empty());
    return view->policies().evaluate(q);
  };
  IpAddr destination = destinationFor(source_ip);
  auto d = judge(source_ip);
  // NS/SA: from each of its pods' addresses, as their connections arrive.
  json by_source = nullptr;
  json note = nullptr;
  std::string mixed;  // "ALLOW from IP (POD), DENY from ..." when they differ
  if (from_identity && sources.pods_of) {
    // Each pod: address, NS/NAME, meshed.
    std::vector<std::tuple<IpAddr, std::string, bool>> pods;
    for (auto& [ip, name] : sources.pods_of(principal)) pods.emplace_back(ip, name, true);
    if (sources.unmeshed_of) {
      auto slash = from.find('/');
      for (auto& [ip, name] : sources.unmeshed_of(from.substr(0, slash), from.substr(slash + 1)))
        pods.emplace_back(ip, name, false);
    }
    // By pod, each pod's IPv4 address first: the answer shown on top is the
    // first pod's, from the address its connections usually come from.
    auto order = [](const auto& p) {
      return std::tuple(std::get<1>(p), std::get<0>(p).isV6(), std::get<0>(p).str());
    };
    std::sort(pods.begin(), pods.end(),
              [&](const auto& a, const auto& b) { return order(a) < order(b); });
    if (!pods.empty()) {
      by_source = json::array();
      size_t allowed = 0;
      for (size_t i = 0; i < pods.size(); ++i) {
        const auto& [ip, name, meshed_source] = pods[i];
        auto pd = judge(ip, meshed_source);
        if (i == 0) {
          d = pd;
          destination = destinationFor(ip);
        }
        allowed += pd.allow;
        by_source.push_back(
            {{"source_ip", ip.str()},
             {"pod", name},
             // Not meshed: it connects in plaintext, as no principal and no
             // namespace.
             {"meshed", meshed_source},
             // Of the source's family: an IPv6 row is judged
             // against the pod's IPv6 address.
             {"destination", SockAddr(destinationFor(ip), static_cast<uint16_t>(port)).str()},
             {"decision", pd.allow ? "ALLOW" : "DENY"},
             {"reason", policy::toString(pd.reason)},
             {"policy", refJson(pd.policy)}});
      }
      if (allowed != 0 && allowed != pods.size())
        for (const auto& b : by_source)
          mixed += (mixed.empty() ? "" : ", ") + b["decision"].get<std::string>() + " from " +
                   b["source_ip"].get<std::string>() + " (" + b["pod"].get<std::string>() + ")";
      if (std::none_of(pods.begin(), pods.end(), [](const auto& p) { return std::get<2>(p); }))
        note = "no pod of " + from +
               " is meshed: its connections arrive in plaintext, judged as such (no principal, "
               "no namespace)";
    } else {
      note = "no meshed pod of " + from +
             " in this node's view: judged from no source address (ipBlocks and source.ip "
             "rules match as for an address they do not name); ask with --from IP for one";
    }
  }
  policy::PolicyRef mtls_from;
  auto mtls = view->policies().mtlsMode(entry->view(), static_cast<uint16_t>(port), &mtls_from);
  json audits = json::array();
  for (size_t i = 0; i < d.audit_count && i < policy::Decision::kMaxAudits; ++i)
    audits.push_back(refJson(d.audits[i]));
  json decision = {{"decision", d.allow ? "ALLOW" : "DENY"},
                   {"reason", policy::toString(d.reason)},
                   {"policy", refJson(d.policy)},
                   {"audits", audits},
                   {"explanation", authz::PolicyAuthorizer::explain(d)}};
  if (!mixed.empty())
    decision = {{"decision", "DEPENDS"},
                {"reason", "source address"},
                {"policy", nullptr},
                {"audits", json::array()},
                {"explanation", "the policies decide by source address: " + mixed +
                                    " (sluicectl authz check --from IP asks about one)"}};
  const bool is_meshed = meshed.count(ns + "/" + pod) > 0;
  json out = {{"from", from},
              {"to", to},
              {"source_principal", principal.empty() ? json(nullptr) : json(principal)},
              {"source_ip", source_ip.empty() ? json(nullptr) : json(source_ip.str())},
              {"destination", SockAddr(destination, static_cast<uint16_t>(port)).str()},
              {"meshed", is_meshed},
              // The port's mutual TLS mode, and the PeerAuthentication that set it.
              {"mtls", {{"mode", policy::toString(mtls)}, {"policy", refJson(mtls_from)}}},
              {"by_source", by_source},
              {"note", note},
              {"if_meshed", nullptr}};
  if (is_meshed) {
    out.update(decision);
  } else {
    // The proxy never sees this pod's traffic: whatever the policies say,
    // nothing refuses a connection to it.
    std::string would = decision["decision"].get<std::string>();
    std::transform(would.begin(), would.end(), would.begin(), ::tolower);
    out.update({{"decision", "ALLOW"},
                {"reason", "not meshed"},
                {"policy", nullptr},
                {"audits", json::array()},
                {"explanation",
                 "pod " + ns + "/" + pod +
                     " is not meshed (its namespace is not labelled sluice.dev/mesh=enabled, "
                     "it opted out, or it started without sluice-cni): no policy is enforced "
                     "for it; if it were meshed: " +
                     would + ": " + decision["explanation"].get<std::string>()}});
    out["if_meshed"] = std::move(decision);
  }
  return {200, out};
}

}  // namespace sluice::agent::wiring
