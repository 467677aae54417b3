#include "tools/sluicectl/commands.h"

#include <netinet/in.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "agent/bpf/map.h"
#include "sluice/common/addr.h"
#include "sluice/common/bpf_abi.h"
#include "sluice/common/flags.h"
#include "sluice/common/ip6.h"
#include "sluice/common/json_text.h"
#include "tools/sluicectl/admin_client.h"
#include "tools/sluicectl/check.h"
#include "tools/sluicectl/connections_args.h"
#include "tools/sluicectl/install.h"
#include "tools/sluicectl/table.h"

using nlohmann::json;

namespace sluice::ctl {

void die(const std::string& msg, int code) {
  std::fprintf(stderr, "sluicectl: %s\n", msg.c_str());
  std::exit(code);
}

namespace {

std::string humanBytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char out[32];
  std::snprintf(out, sizeof(out), u == 0 ? "%.0f%s" : "%.1f%s", v, units[u]);
  return out;
}

int cmdWorkloads(const Options& opts) {
  const std::string& admin = opts.admin;
  bool as_json = opts.as_json;
  json dump = adminGet(admin, "/config_dump");
  if (as_json) {
    std::printf(
        "%s\n",
        jsonText(json{{"workloads", dump["workloads"]}, {"pods", dump["pods"]}}, 2).c_str());
    return 0;
  }
  // Local pods carry enrollment state and netns cookies; remote ones come from the view.
  std::map<std::string, json> local;
  for (const auto& p : dump["pods"]) local[str(p, "namespace") + "/" + str(p, "name")] = p;
  ctl::Table t({"NAMESPACE", "NAME", "NODE", "IP", "SERVICE-ACCOUNT", "MESHED", "LOCAL", "CAPTURED",
                "NETNS-COOKIE"});
  for (const auto& w : dump["workloads"]) {
    std::string key = str(w, "namespace") + "/" + str(w, "name");
    std::string ips;
    for (const auto& ip : w["ips"]) ips += (ips.empty() ? "" : ",") + ip.get<std::string>();
    auto it = local.find(key);
    bool is_local = it != local.end();
    t.add({str(w, "namespace"), str(w, "name"), str(w, "node"), ips.empty() ? "<none>" : ips,
           str(w, "service_account"), w.value("enrolled", false) ? "yes" : "no",
           is_local ? "yes" : "no",
           is_local ? (it->second.value("enrolled", false) ? "yes" : "no") : "-",
           is_local ? std::to_string(it->second.value("netns_cookie", 0ULL)) : "-"});
  }
  std::fputs(t.render().c_str(), stdout);
  return 0;
}

// `connections reset`: POST /connections/reset; its answer, or its error (exit 1).
int resetConnections(const Options& opts, const std::string& path) {
  auto r = adminFetch(opts.admin, path, /*post=*/true);
  if (!r) die(r.error().describe());
  json j = json::parse(r->body, nullptr, false);
  if (r->status != 200) {
    std::string msg = !j.is_discarded() && j.contains("error") ? str(j, "error") : r->body;
    if (r->status == 404 && (j.is_discarded() || !j.contains("error")))
      msg = "the agent at " + opts.admin + " cannot reset connections: upgrade the agent";
    die(msg);
  }
  if (opts.as_json) {
    std::printf("%s\n", jsonText(j, 2).c_str());
    return 0;
  }
  uint64_t n = j.value("reset", 0ULL);
  if (j.contains("pod"))
    std::printf("reset %llu connection%s of pod %s\n", static_cast<unsigned long long>(n),
                n == 1 ? "" : "s", str(j, "pod").c_str());
  else
    std::printf("connection %s reset\n", str(j, "id").c_str());
  return 0;
}

int cmdConnections(const Options& opts) {
  auto req = connectionsRequest(opts.args, opts.pod);
  if (!req.error.empty()) die(req.error, 2);
  if (req.reset) return resetConnections(opts, req.path);
  const std::string& admin = opts.admin;
  bool as_json = opts.as_json;
  json j = adminGet(admin, req.path);
  if (as_json) {
    std::printf("%s\n", jsonText(j, 2).c_str());
    return 0;
  }
  ctl::Table t({"ID", "DIRECTION", "POD", "SOURCE", "DESTINATION", "PATH", "SENT", "RECEIVED",
                "DURATION", "STATE", "REASON"});
  for (const auto& c : j["connections"]) {
    t.add({str(c, "id"), str(c, "direction"), str(c, "pod"), str(c, "source"),
           str(c, "destination"), str(c, "path"), humanBytes(c.value("bytes_sent", 0ULL)),
           humanBytes(c.value("bytes_received", 0ULL)),
           std::to_string(c.value("duration_ms", 0LL)) + "ms", str(c, "state"), str(c, "reason")});
  }
  std::fputs(t.render().c_str(), stdout);
  return 0;
}

std::string humanSeconds(long long s) {
  if (s < 0) return "now";
  if (s < 120) return std::to_string(s) + "s";
  if (s < 7200) return std::to_string(s / 60) + "m";
  return std::to_string(s / 3600) + "h" + std::to_string((s % 3600) / 60) + "m";
}

int cmdCerts(const Options& opts) {
  const std::string& admin = opts.admin;
  bool as_json = opts.as_json;
  json j = adminGet(admin, "/certs");
  if (as_json) {
    std::printf("%s\n", jsonText(j, 2).c_str());
    return 0;
  }
  ctl::Table t({"IDENTITY", "SERIAL", "NOT-BEFORE", "NOT-AFTER", "RENEWS-IN", "STATE"});
  for (const auto& c : j["certificates"]) {
    std::string state = str(c, "state");
    if (!str(c, "error").empty()) state += " (" + str(c, "error") + ")";
    t.add({str(c, "identity"), str(c, "serial"), str(c, "not_before"), str(c, "not_after"),
           humanSeconds(c.value("renews_in_seconds", 0LL)), state});
  }
  std::fputs(t.render().c_str(), stdout);
  return 0;
}

int cmdServices(const Options& opts) {
  const std::string& admin = opts.admin;
  bool as_json = opts.as_json;
  json services = adminGet(admin, "/config_dump")["services"];
  if (as_json) {
    std::printf("%s\n", jsonText(json{{"services", services}}, 2).c_str());
    return 0;
  }
  ctl::Table t({"NAMESPACE", "NAME", "VIPS", "PORTS", "ENDPOINTS"});
  for (const auto& s : services) {
    std::string vips, ports, eps;
    for (const auto& v : s["vips"]) vips += (vips.empty() ? "" : ",") + v.get<std::string>();
    if (s.value("headless", false)) vips = "None";  // as kubectl shows clusterIP
    for (const auto& p : s["ports"])
      ports += (ports.empty() ? "" : ",") + std::to_string(p.value("port", 0)) +
               (str(p, "name").empty() ? "" : "/" + str(p, "name"));
    // As `kubectl get endpoints` shows them: each address with each of its
    // target ports, once (several Service ports may forward to one).
    for (const auto& e : s["endpoints"]) {
      const std::string ip = str(e, "ip");
      const std::string host = ip.find(':') != std::string::npos ? "[" + ip + "]" : ip;
      std::set<uint64_t> targets;
      if (e.contains("ports"))
        for (const auto& [name, port] : e["ports"].items()) targets.insert(port.get<uint64_t>());
      if (targets.empty()) eps += (eps.empty() ? "" : ",") + ip;
      for (uint64_t port : targets)
        eps += (eps.empty() ? "" : ",") + host + ":" + std::to_string(port);
    }
    t.add({str(s, "namespace"), str(s, "name"), vips, ports, eps.empty() ? "<none>" : eps});
  }
  std::fputs(t.render().c_str(), stdout);
  return 0;
}

int cmdStats(const Options& opts) {
  const std::string& admin = opts.admin;
  bool as_json = opts.as_json;
  json j = adminGet(admin, "/stats");
  if (as_json) {
    std::printf("%s\n", jsonText(j, 2).c_str());
    return 0;
  }
  ctl::Table t({"COUNTER", "VALUE"});
  // Groups of counters as the agent sends them (its table defines them
  // once), nested ones by their dotted path: policy.denied.no_policy_match.
  std::function<void(const std::string&, const json&)> add = [&](const std::string& name,
                                                                 const json& v) {
    if (!v.is_object()) {
      t.add({name, jsonText(v)});
      return;
    }
    for (const auto& [k, sub] : v.items()) add(name.empty() ? k : name + "." + k, sub);
  };
  add("", j);
  std::fputs(t.render().c_str(), stdout);
  return 0;
}

int cmdBpf(const Options& opts) {
  const std::string& pin_dir = opts.pin_dir;
  bool as_json = opts.as_json;
  using agent::bpf::BpfMap;
  auto enrolled = BpfMap<__u64, sluice_enrolled>::openPinned(pin_dir + "/sluice_enrolled_v1");
  if (!enrolled)
    die(enrolled.error().describe() + " — is the agent installed with --bpf-pin-dir " + pin_dir +
        "?");
  auto orig = BpfMap<sluice_pair_key, sluice_orig_dst>::openPinned(pin_dir + "/sluice_orig_dst_v1");
  auto pending = BpfMap<__u64, sluice_orig_dst>::openPinned(pin_dir + "/sluice_cookie_dst_v1");
  auto excluded = BpfMap<__u16, __u8>::openPinned(pin_dir + "/sluice_excluded_ports_v1");
  // Absent under the pins of an agent from before IPv6 capture.
  auto enrolled6 = BpfMap<__u64, sluice_enrolled6>::openPinned(pin_dir + "/sluice_enrolled6_v1");
  auto pending6 = BpfMap<__u64, sluice_orig_dst6>::openPinned(pin_dir + "/sluice_cookie_dst6_v1");
  auto orig6 =
      BpfMap<sluice_pair_key6, sluice_orig_dst6>::openPinned(pin_dir + "/sluice_orig_dst6_v1");
  auto endpoint6 = [](const __u32* ip6, __u16 port_net) {
    in6_addr a{};
    std::memcpy(&a, ip6, sizeof(a));
    return fmt::format("[{}]:{}", formatIp6(a), ntohs(port_net));
  };

  json out;
  out["pin_dir"] = pin_dir;
  out["enrolled"] = json::array();
  for (const auto& [cookie, v] : enrolled->entries()) {
    std::string ip6;
    if (auto v6 = enrolled6 ? enrolled6->lookup(cookie) : std::nullopt) {
      in6_addr a{};
      std::memcpy(&a, v6->pod_ip6, sizeof(a));
      ip6 = formatIp6(a);
    }
    out["enrolled"].push_back({{"netns_cookie", cookie},
                               {"pod_ip", formatIp4(v.pod_ip4)},
                               {"pod_ip6", ip6},
                               {"flags", v.flags}});
  }
  out["orig_dst"] = json::array();
  if (orig)
    for (const auto& [k, v] : orig->entries())
      out["orig_dst"].push_back(
          {{"netns_cookie", k.netns_cookie},
           {"client", formatEndpoint(makeSockaddr(k.src_ip4, ntohs(k.src_port)))},
           {"listener", formatEndpoint(makeSockaddr(k.dst_ip4, ntohs(k.dst_port)))},
           {"original_dst", formatEndpoint(makeSockaddr(v.ip4, ntohs(v.port)))}});
  if (orig6)
    for (const auto& [k, v] : orig6->entries())
      out["orig_dst"].push_back({{"netns_cookie", k.netns_cookie},
                                 {"client", endpoint6(k.src_ip6, k.src_port)},
                                 {"listener", endpoint6(k.dst_ip6, k.dst_port)},
                                 {"original_dst", endpoint6(v.ip6, v.port)}});
  out["pending_connects"] =
      (pending ? pending->entries().size() : 0) + (pending6 ? pending6->entries().size() : 0);
  out["excluded_ports"] = json::array();
  if (excluded)
    for (const auto& [port, v] : excluded->entries()) out["excluded_ports"].push_back(ntohs(port));
  if (as_json) {
    std::printf("%s\n", jsonText(out, 2).c_str());
    return 0;
  }
  std::printf("MAP sluice_enrolled_v1 (%zu entries)\n", out["enrolled"].size());
  ctl::Table e({"NETNS-COOKIE", "POD-IP", "POD-IP6", "FLAGS"});
  for (const auto& r : out["enrolled"])
    e.add({jsonText(r["netns_cookie"]), str(r, "pod_ip"), str(r, "pod_ip6"), jsonText(r["flags"])});
  std::fputs(e.render().c_str(), stdout);
  std::printf("\nMAP sluice_orig_dst_v1 + sluice_orig_dst6_v1 (%zu entries awaiting accept)\n",
              out["orig_dst"].size());
  ctl::Table o({"NETNS-COOKIE", "CLIENT", "LISTENER", "ORIGINAL-DST"});
  for (const auto& r : out["orig_dst"])
    o.add({jsonText(r["netns_cookie"]), str(r, "client"), str(r, "listener"),
           str(r, "original_dst")});
  std::fputs(o.render().c_str(), stdout);
  std::printf(
      "\nMAP sluice_cookie_dst_v1 + sluice_cookie_dst6_v1: %s connects awaiting establishment\n",
      jsonText(out["pending_connects"]).c_str());
  std::printf("MAP sluice_excluded_ports_v1: %s\n", jsonText(out["excluded_ports"]).c_str());
  return 0;
}

int cmdCheck(const Options& opts) {
  if (opts.pre && (!opts.kubeconfig.empty() || opts.sluice_namespace != "sluice-system"))
    die("--pre checks this node before Sluice is installed; --kubeconfig and "
        "--sluice-namespace check an installed cluster: run them without --pre",
        2);
  const check::NodePaths paths{opts.admin, opts.pin_dir, opts.cni_conf_dir, opts.cni_bin_dir};
  auto checks = opts.pre ? check::preInstallChecks(paths) : check::installChecks(paths);
  if (!opts.pre)
    if (auto cluster = check::findCluster(opts.kubeconfig)) {
      auto more = check::clusterChecks(std::move(*cluster), opts.sluice_namespace);
      checks.insert(checks.end(), more.begin(), more.end());
    }
  auto results = check::runAll(checks);
  if (opts.as_json)
    std::printf("%s\n", jsonText(check::toJson(results), 2).c_str());
  else
    std::fputs(check::render(results).c_str(), stdout);
  return check::exitStatus(results);
}

void declareCheck(FlagTable& flags, Options& opts) {
  flags
      .toggle("--pre", "can this node run Sluice (before installing it)?",
              [&opts] { opts.pre = true; })
      .value("--cni-conf-dir", "DIR",
             "the container runtime's CNI config dir (default /etc/cni/net.d)",
             FlagTable::into(&opts.cni_conf_dir))
      .value("--cni-bin-dir", "DIR", "the CNI plugin dir (default /opt/cni/bin)",
             FlagTable::into(&opts.cni_bin_dir))
      .value("--kubeconfig", "PATH",
             "also check the cluster through this kubeconfig: the agent\n"
             "DaemonSet on every node, the control-plane Deployment (default:\n"
             "$KUBECONFIG, else the pod's service account in a cluster)",
             FlagTable::into(&opts.kubeconfig))
      .value("--sluice-namespace", "NS", "where Sluice is installed (default sluice-system)",
             FlagTable::into(&opts.sluice_namespace));
}

void declareInstall(FlagTable& flags, Options& opts) {
  flags.value("--ca-dir", "DIR",
              "embed this mesh CA (root-cert.pem, ca-cert.pem, ca-key.pem, as\n"
              "tools/gen-ca.sh writes them) as the Secret sluice-ca",
              FlagTable::into(&opts.ca_dir));
}

void declareConnections(FlagTable& flags, Options& opts) {
  flags.value("--pod", "NS/NAME", "with reset: every open connection of this pod (either end)",
              FlagTable::into(&opts.pod));
}

int cmdInstall(const Options& opts) {
  if (opts.as_json)
    die("install prints YAML manifests for kubectl apply; -o json does not apply", 2);
  auto m = installManifests(opts.ca_dir);
  if (!m) die(m.error().describe(), 2);
  std::fputs(m->c_str(), stdout);
  return 0;
}

int cmdUninstall(const Options& opts) {
  if (opts.as_json)
    die("uninstall prints YAML manifests for kubectl delete; -o json does not apply", 2);
  std::fputs(uninstallManifests().c_str(), stdout);
  return 0;
}

}  // namespace

const std::vector<Command>& commands() {
  static const std::vector<Command> table = {
      {"workloads", "workloads known to this node's agent, and which local pods are enrolled",
       cmdWorkloads},
      {"connections",
       "proxied connections (open and recently closed); 'connections reset' resets one, or "
       "all of a pod (both apps see a reset)",
       cmdConnections, declareConnections, "[reset ID | reset --pod NAMESPACE/NAME] [flags]", 2},
      {"bpf", "Sluice's pinned BPF maps and links on this node, decoded", cmdBpf},
      {"stats", "proxy and BPF counters", cmdStats},
      {"certs", "workload certificates of this node: identity, serial, validity, renewal, state",
       cmdCerts},
      {"services", "Services in this node's view: VIPs, ports, ready endpoints", cmdServices},
      {"check",
       "is Sluice on this node healthy, or (pre-install) can this node run it? Exit 1 on failure",
       cmdCheck, declareCheck, "[--pre] [--kubeconfig PATH] [flags]"},
      {"install", "print the manifests that install Sluice, to pipe into kubectl apply", cmdInstall,
       declareInstall, "[--ca-dir DIR]"},
      {"uninstall",
       "print what un-chains sluice-cni from every node, and the steps to remove Sluice",
       cmdUninstall},
      {"stat",
       "per workload, pod or namespace over the last minute: MESHED, SUCCESS, RPS, "
       "latency percentiles, TCP_CONN",
       cmdStat, declareStat, "[deploy|pod|ns] [flags]", 1},
      {"top", "live table of the busiest (source, destination, method, path)", cmdTop, declareTop,
       "[flags]"},
      {"tap", "a live stream of this node's HTTP requests", cmdTap, declareTap, "[flags]"},
      {"policies",
       "authorization and peer authentication policies in force on this node, and the local "
       "workloads each applies to",
       cmdPolicies},
      {"authz", "the decision for a connection, by the agent's own policy code", cmdAuthz,
       declareAuthz, "check --from NS/SA|IP --to NS/POD:PORT", 1},
  };
  return table;
}

}  // namespace sluice::ctl
