// `sluicectl check`: is Sluice on this node healthy? Reads the agent's admin
// API, the pinned BPF state and the CNI configuration, as an operator would.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <chrono>
#include <set>

#include "agent/bpf/loader.h"
#include "agent/bpf/map.h"
#include "cni-plugin/installer.h"
#include "sluice/common/bpf_abi.h"
#include "sluice/common/fmt.h"
#include "sluice/common/x509.h"
#include "tools/sluicectl/admin_client.h"
#include "tools/sluicectl/check.h"

using nlohmann::json;

namespace sluice::ctl::check {
namespace {

constexpr int64_t kCaWarnSeconds = 30LL * 86400;

int64_t nowUnix() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string days(int64_t seconds) {
  if (seconds < 0) return "expired " + days(-seconds) + " ago";
  if (seconds < 2 * 86400) return fmt::format("{}h", seconds / 3600);
  return fmt::format("{} days", seconds / 86400);
}

// What the agent said, fetched once and shared by the checks that need it.
struct AgentState {
  std::string admin;
  bool fetched = false;
  std::string unreachable;  // why the admin API could not be read
  json dump, certs;

  bool load() {
    if (fetched) return unreachable.empty();
    fetched = true;
    auto d = adminJson(admin, "/config_dump");
    auto c = d ? adminJson(admin, "/certs") : d;
    if (!d || !c) {
      unreachable = (!d ? d : c).error().describe();
      return false;
    }
    dump = std::move(*d);
    certs = std::move(*c);
    return true;
  }
  Outcome notChecked() const {
    return Outcome::warn("not checked: the agent's admin API could not be read",
                         "fix the sluice-agent checks above first");
  }
};

Outcome adminAnswers(const std::string& admin) {
  auto r = adminFetch(admin, "/healthz");
  if (!r || r->status != 200)
    return Outcome::failed(r ? "answered " + std::to_string(r->status) : r.error().describe(),
                           "start sluice-agent on this node (Kubernetes: kubectl -n "
                           "sluice-system get pods -o wide -l app.kubernetes.io/name=sluice-agent; "
                           "its logs say why it is not running); --admin selects another address");
  return Outcome::ok(admin);
}

Outcome agentReady(const std::string& admin) {
  auto r = adminFetch(admin, "/ready");
  if (!r)
    return Outcome::warn("not checked: the agent's admin API could not be read",
                         "fix the check above first");
  std::string body = r->body;
  while (!body.empty() && body.back() == '\n') body.pop_back();
  if (r->status != 200)
    return Outcome::failed(body,
                           "the agent serves pods only once it has a view from the control "
                           "plane: see the control plane checks below");
  return Outcome::ok();
}

Outcome connected(AgentState& s) {
  if (!s.load()) return s.notChecked();
  const auto& cp = s.dump["controlplane"];
  const std::string address = cp.value("address", "");
  if (!cp.value("connected", false))
    return Outcome::failed(
        fmt::format("not connected to {}: {}", address, cp.value("last_error", "")),
        fmt::format("check that sluice-controlplane is running and reachable from this node at "
                    "{} (kubectl -n sluice-system get pods -l "
                    "app.kubernetes.io/name=sluice-controlplane); meanwhile the agent serves "
                    "its last view",
                    address));
  return Outcome::ok(address);
}

Outcome viewLive(AgentState& s) {
  if (!s.load()) return s.notChecked();
  const auto& cp = s.dump["controlplane"];
  const std::string source = cp.value("view_source", "");
  const auto version = cp.value("version", 0ULL);
  if (!cp.value("synced", false))
    return Outcome::failed(
        fmt::format("no snapshot received (view: {})", source.empty() ? "none" : source),
        "the agent refuses to route without a view: connect it to the control plane");
  if (!cp.value("connected", false))
    return Outcome::warn(
        fmt::format("serving the last view received (version {}); cluster changes are not seen",
                    version),
        "reconnect the agent to the control plane (see above)");
  return Outcome::ok(fmt::format("version {}", version));
}

Outcome podCertificates(AgentState& s) {
  if (!s.load()) return s.notChecked();
  const std::string td = s.dump.value("trust_domain", "cluster.local");
  std::map<std::string, json> by_identity;
  for (const auto& c : s.certs["certificates"]) by_identity[c.value("identity", "")] = c;
  const int64_t now = nowUnix();
  std::vector<std::string> bad, renewing;
  int pods = 0;
  std::set<std::string> identities;
  for (const auto& p : s.dump["pods"]) {
    if (!p.value("enrolled", false)) continue;
    ++pods;
    const std::string pod = p.value("namespace", "") + "/" + p.value("name", "");
    const std::string uri =
        x509::workloadUri(td, p.value("namespace", ""), p.value("service_account", ""));
    identities.insert(uri);
    auto it = by_identity.find(uri);
    if (it == by_identity.end()) {
      bad.push_back(fmt::format("{}: no certificate for {}", pod, uri));
      continue;
    }
    const auto& c = it->second;
    const int64_t not_after = c.value("not_after_unix", 0LL);
    const std::string error = c.value("error", "");
    const std::string why = error.empty() ? "" : " (" + error + ")";
    if (not_after == 0)
      bad.push_back(fmt::format("{}: {} is {}{}", pod, uri, c.value("state", "?"), why));
    else if (not_after <= now)
      bad.push_back(fmt::format("{}: the certificate of {} expired {} ago (at {}){}", pod, uri,
                                days(now - not_after), c.value("not_after", ""), why));
    else if (c.value("state", "") != "valid")
      renewing.push_back(
          fmt::format("{}: renewing {} fails{}; the current certificate expires in {}", pod, uri,
                      why, days(not_after - now)));
  }
  const std::string hint =
      "the agent renews certificates from the control plane: make it reachable (see above); "
      "`sluicectl certs` shows each identity's state";
  auto lines = [](const std::vector<std::string>& v) {
    std::string out;
    for (const auto& b : v) out += (out.empty() ? "" : "\n    ") + b;
    return out;
  };
  if (!bad.empty()) return Outcome::failed(lines(bad), hint);
  if (!renewing.empty()) return Outcome::warn(lines(renewing), hint);
  return Outcome::ok(fmt::format("{} pods, {} identities", pods, identities.size()));
}

// The earliest expiry among `certs` (each {subject, not_after_unix}).
Outcome expiry(const json& certs, const char* what, const char* hint) {
  int64_t earliest = 0;
  std::string subject;
  for (const auto& c : certs) {
    const int64_t t = c.value("not_after_unix", 0LL);
    if (t != 0 && (earliest == 0 || t < earliest)) {
      earliest = t;
      subject = c.value("subject", "");
    }
  }
  if (earliest == 0) return Outcome::ok(fmt::format("no {} to check yet", what));
  const int64_t left = earliest - nowUnix();
  const std::string detail = fmt::format("{} ({}): {}", what, subject, days(left));
  if (left <= 0) return Outcome::failed(detail, hint);
  if (left < kCaWarnSeconds) return Outcome::warn(detail, hint);
  return Outcome::ok(days(left));
}

Outcome issuingCa(AgentState& s) {
  if (!s.load()) return s.notChecked();
  json issuers = json::array();
  for (const auto& c : s.certs["certificates"])
    for (const auto& i : c.value("chain", json::array())) issuers.push_back(i);
  return expiry(issuers, "issuing CA",
                "rotate the mesh CA before it expires (tools/gen-ca.sh, docs/install.md)");
}

Outcome trustAnchor(AgentState& s) {
  if (!s.load()) return s.notChecked();
  return expiry(s.certs.value("trust_anchors", json::array()), "trust anchor",
                "roll a new trust anchor out to every agent before this one expires "
                "(docs/install.md)");
}

// Every program of agent::bpf::kCgroupPrograms, through its pinned link (the
// agent's own list could lack one that an older agent does not attach).
Outcome bpfLinks(AgentState& s) {
  if (!s.load()) return s.notChecked();
  const std::string pin_dir = s.dump["bpf"].value("pin_dir", "");
  const std::string hint =
      "restart sluice-agent on this node: it loads and attaches its programs again, and capture "
      "continues across the restart";
  if (pin_dir.empty()) return Outcome::failed("the agent reports no BPF pin directory", hint);
  std::vector<std::string> bad;
  for (const auto& p : agent::bpf::kCgroupPrograms) {
    const std::string program = p.program;
    const std::string pin = agent::bpf::linkPin(pin_dir, program);
    int fd = bpf_obj_get(pin.c_str());
    if (fd < 0) {
      bad.push_back(
          fmt::format("{}: pinned link {} is missing ({})", program, pin, std::strerror(errno)));
      continue;
    }
    bpf_link_info info{};
    uint32_t len = sizeof(info);
    int rc = bpf_obj_get_info_by_fd(fd, &info, &len);
    ::close(fd);
    if (rc != 0 || info.prog_id == 0)
      bad.push_back(fmt::format("{}: link {} has no program attached", program, pin));
    else if (info.type == BPF_LINK_TYPE_CGROUP && info.cgroup.cgroup_id == 0)
      bad.push_back(fmt::format("{}: link {} is detached from its cgroup", program, pin));
    else if (info.type == BPF_LINK_TYPE_CGROUP && info.cgroup.attach_type != p.type) {
      const char* hook =
          libbpf_bpf_attach_type_str(static_cast<bpf_attach_type>(info.cgroup.attach_type));
      bad.push_back(fmt::format("{}: link {} is attached at another hook ({})", program, pin,
                                hook ? hook : std::to_string(info.cgroup.attach_type)));
    }
  }
  if (!bad.empty()) {
    std::string detail;
    for (const auto& b : bad) detail += (detail.empty() ? "" : "\n    ") + b;
    return Outcome::failed(detail, hint);
  }
  return Outcome::ok(
      fmt::format("{} links under {}", std::size(agent::bpf::kCgroupPrograms), pin_dir));
}

// The pod netns's sk_lookup link is pinned there and attached.
bool lookupAttached(const std::string& pin) {
  int fd = bpf_obj_get(pin.c_str());
  if (fd < 0) return false;
  bpf_link_info info{};
  uint32_t len = sizeof(info);
  int rc = bpf_obj_get_info_by_fd(fd, &info, &len);
  ::close(fd);
  return rc == 0 && info.prog_id != 0 && info.type == BPF_LINK_TYPE_NETNS &&
         info.netns.netns_ino != 0;
}

Outcome podsCaptured(AgentState& s) {
  if (!s.load()) return s.notChecked();
  const std::string pin_dir = s.dump["bpf"].value("pin_dir", "");
  auto enrolled =
      agent::bpf::BpfMap<__u64, sluice_enrolled>::openPinned(pin_dir + "/sluice_enrolled_v1");
  if (!enrolled)
    return Outcome::failed(enrolled.error().describe(),
                           "restart sluice-agent on this node: it re-creates its pinned maps");
  std::set<uint64_t> cookies;
  for (const auto& [cookie, v] : enrolled->entries()) cookies.insert(cookie);
  std::vector<std::string> missing, unsteered;
  int pods = 0;
  for (const auto& p : s.dump["pods"]) {
    if (!p.value("enrolled", false)) continue;
    ++pods;
    const uint64_t cookie = p.value("netns_cookie", 0ULL);
    const std::string name = p.value("namespace", "") + "/" + p.value("name", "");
    if (!cookies.count(cookie)) missing.push_back(name);
    if (!lookupAttached(agent::bpf::lookupLinkPin(pin_dir, cookie))) unsteered.push_back(name);
  }
  if (!missing.empty())
    return Outcome::failed(
        fmt::format("enrolled but not in the capture map: {}", fmt::join(missing, ", ")),
        "their traffic bypasses the mesh: restart sluice-agent (it reconciles the map) or "
        "delete the pods so that they are re-created");
  if (!unsteered.empty())
    return Outcome::failed(
        fmt::format("enrolled without their sk_lookup link ({}): {}",
                    agent::bpf::linkPin(pin_dir, "lookup_<netns cookie>"),
                    fmt::join(unsteered, ", ")),
        "a client reusing a port whose earlier connection waits in TIME_WAIT there reaches the "
        "app around the proxy: restart sluice-agent (it attaches the link again on enrolling "
        "its pods)");
  return Outcome::ok(fmt::format("{} pods", pods));
}

// A pod the control plane says is meshed, running on this node (it has an
// address, so its sandbox is up), that the agent did not enroll: its traffic
// bypasses the mesh and meshed clients cannot reach it.
Outcome podsMeshed(AgentState& s) {
  if (!s.load()) return s.notChecked();
  const std::string node = s.dump.value("node", "");
  std::vector<std::string> problems;
  int meshed = 0;
  for (const auto& w : s.dump["workloads"]) {
    if (w.value("node", "") != node || !w.value("enrolled", false) ||
        w.value("ips", json::array()).empty())
      continue;
    ++meshed;
    const std::string uid = w.value("uid", ""), ns = w.value("namespace", ""),
                      name = w.value("name", "");
    // The agent's entries for this pod: by uid, or by name where the runtime
    // gave no uid (as the agent matches them); an enrolled one if any (an
    // old sandbox's entry may linger beside it).
    const json* pod = nullptr;
    for (const auto& p : s.dump["pods"]) {
      const std::string p_uid = p.value("uid", "");
      bool same = p_uid.empty() ? p.value("namespace", "") == ns && p.value("name", "") == name
                                : p_uid == uid;
      if (same && (!pod || p.value("enrolled", false))) pod = &p;
    }
    if (!pod)
      problems.push_back(ns + "/" + name +
                         " (the agent does not know it: no CNI ADD reached the agent, as for a pod "
                         "started before sluice-cni was chained or while the agent was "
                         "unreachable with failOpen, or the agent lost its state file)");
    else if (!pod->value("enrolled", false))
      problems.push_back(ns + "/" + name + " (enrolling it failed: " +
                         (pod->value("error", "").empty() ? std::string("see the agent's log")
                                                          : pod->value("error", "")) +
                         ")");
  }
  if (!problems.empty())
    return Outcome::failed(
        fmt::format("pods of meshed namespaces running WITHOUT the mesh: {}",
                    fmt::join(problems, "; ")),
        "their traffic is neither encrypted nor authorized, and meshed clients' connections to "
        "them are reset: delete each pod so that it is re-created through sluice-cni (kubectl "
        "delete pod -n NAMESPACE NAME)");
  return Outcome::ok(fmt::format("{} pods", meshed));
}

Outcome cniChained(const NodePaths& paths) {
  cni::InstallerOptions options;
  options.conf_dir = paths.cni_conf_dir;
  options.bin_dir = paths.cni_bin_dir;
  auto plan = cni::Installer(options).plan();
  const std::string hint =
      "pods that start now are NOT meshed: the sluice-cni installer (the agent DaemonSet's "
      "install-cni container) chains it again; check its logs. --cni-conf-dir selects the "
      "runtime's config dir";
  if (!plan) return Outcome::failed(plan.error().describe(), hint);
  if (plan->status.state != cni::ChainState::kChained)
    return Outcome::failed(plan->status.detail, hint);
  if (!plan->already_chained)
    return Outcome::failed(fmt::format("{} does not chain sluice-cni (exactly once, last)",
                                       plan->status.file.string()),
                           hint);
  return Outcome::ok(plan->status.file.string());
}

Outcome cniBinary(const NodePaths& paths) {
  const std::string bin = paths.cni_bin_dir + "/" + cni::kPluginType;
  if (::access(bin.c_str(), X_OK) != 0)
    return Outcome::failed(fmt::format("{}: {}", bin, std::strerror(errno)),
                           "the sluice-cni installer copies it there; check its logs "
                           "(--cni-bin-dir selects the runtime's plugin dir)");
  return Outcome::ok(bin);
}

}  // namespace

std::vector<Check> installChecks(const NodePaths& paths) {
  auto s = std::make_shared<AgentState>();
  s->admin = paths.admin;
  const std::string admin = paths.admin;
  return {
      {"sluice-agent", "the agent's admin API answers", [admin] { return adminAnswers(admin); }},
      {"sluice-agent", "the agent is ready", [admin] { return agentReady(admin); }},
      {"control plane", "the agent is connected to the control plane",
       [s] { return connected(*s); }},
      {"control plane", "the agent's view is live", [s] { return viewLive(*s); }},
      {"identity", "every enrolled pod has a valid certificate",
       [s] { return podCertificates(*s); }},
      {"identity", "the issuing CA is valid for 30 days or more", [s] { return issuingCa(*s); }},
      {"identity", "the trust anchor is valid for 30 days or more",
       [s] { return trustAnchor(*s); }},
      {"data plane", "BPF programs are pinned and attached", [s] { return bpfLinks(*s); }},
      {"data plane", "every enrolled pod is in the capture map", [s] { return podsCaptured(*s); }},
      {"data plane", "every pod of a meshed namespace on this node is enrolled",
       [s] { return podsMeshed(*s); }},
      {"cni", "sluice-cni is chained in the CNI configuration",
       [paths] { return cniChained(paths); }},
      {"cni", "the sluice-cni binary is installed", [paths] { return cniBinary(paths); }},
  };
}

}  // namespace sluice::ctl::check
