// `sluicectl policies` and `sluicectl authz check`: the agent's /policies and
// /authz documents (agent/wiring/policy_json.h).
#include <cctype>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "sluice/common/json_text.h"
#include "tools/sluicectl/admin_client.h"
#include "tools/sluicectl/commands.h"
#include "tools/sluicectl/table.h"

using nlohmann::json;

namespace sluice::ctl {

namespace {

std::string joined(const json& list) {
  std::string out;
  for (const auto& v : list) out += (out.empty() ? "" : ",") + v.get<std::string>();
  return out.empty() ? "<none>" : out;
}

// The meshed workloads a policy is enforced for, then the unmeshed ones it
// selects but cannot be (agents before unmeshed_workloads: none).
std::string workloadsText(const json& p) {
  json all = p["workloads"];
  if (p.contains("unmeshed_workloads"))
    for (const auto& v : p["unmeshed_workloads"])
      all.push_back(v.get<std::string>() + " (not meshed)");
  return joined(all);
}

}  // namespace

int cmdPolicies(const Options& opts) {
  json j = adminGet(opts.admin, "/policies");
  if (opts.as_json) {
    std::printf("%s\n", jsonText(j, 2).c_str());
    return 0;
  }
  Table t({"NAMESPACE", "NAME", "ACTION", "SCOPE", "WORKLOADS"});
  for (const auto& p : j["authorization_policies"]) {
    std::string action = str(p, "action");
    if (p.value("dry_run", false)) action += " (dry-run)";
    t.add({str(p, "namespace"), str(p, "name"), action, str(p, "scope"), workloadsText(p)});
  }
  for (const auto& p : j["peer_authentications"])
    t.add({str(p, "namespace"), str(p, "name"), "mTLS " + str(p, "mode"), str(p, "scope"),
           workloadsText(p)});
  std::fputs(t.render().c_str(), stdout);
  if (j.contains("note")) std::printf("note: %s\n", str(j, "note").c_str());
  if (j.contains("rejected_update") && j["rejected_update"].is_string())
    std::printf(
        "warning: the control plane's last policy set was rejected (the set above stays in "
        "force): %s\n",
        str(j, "rejected_update").c_str());
  return 0;
}

int cmdAuthz(const Options& opts) {
  if (opts.args.size() != 1 || opts.args[0] != "check")
    die("usage: sluicectl authz check --from NS/SA|IP --to NS/POD:PORT", 2);
  if (opts.from.empty() || opts.to.empty())
    die("authz check needs --from NS/SA|IP and --to NS/POD:PORT", 2);
  // The shape here, before asking the agent (which checks names and port).
  auto slash = opts.to.find('/'), colon = opts.to.rfind(':');
  if (slash == std::string::npos || slash == 0 || colon == std::string::npos || colon < slash + 2 ||
      colon + 1 == opts.to.size())
    die("--to '" + opts.to + "' is not NS/POD:PORT", 2);
  json j =
      adminGet(opts.admin, "/authz?from=" + urlEncode(opts.from) + "&to=" + urlEncode(opts.to));
  if (opts.as_json) {
    std::printf("%s\n", jsonText(j, 2).c_str());
    return 0;
  }
  Table t({"FROM", "TO", "DECISION", "REASON", "POLICY"});
  t.add({str(j, "from"), str(j, "to") + " (" + str(j, "destination") + ")", str(j, "decision"),
         str(j, "reason"), j["policy"].is_string() ? str(j, "policy") : "-"});
  std::fputs(t.render().c_str(), stdout);
  if (j.contains("by_source") && j["by_source"].is_array()) {
    // NS/SA: judged from each of its pods' addresses.
    std::printf("from each pod of %s:\n", str(j, "from").c_str());
    Table pods({"  POD", "SOURCE", "DESTINATION", "DECISION", "REASON", "POLICY"});
    for (const auto& b : j["by_source"])
      pods.add({"  " + str(b, "pod") + (b.value("meshed", true) ? "" : " (not meshed)"),
                str(b, "source_ip"), str(b, "destination"), str(b, "decision"), str(b, "reason"),
                b["policy"].is_string() ? str(b, "policy") : "-"});
    std::fputs(pods.render().c_str(), stdout);
  }
  if (j["decision"] == "DEPENDS") std::printf("note: %s\n", str(j, "explanation").c_str());
  if (j.contains("note") && j["note"].is_string())
    std::printf("note: %s\n", str(j, "note").c_str());
  if (!j["audits"].empty()) std::printf("audited by: %s\n", joined(j["audits"]).c_str());
  if (j["source_ip"].is_string() && j["source_principal"].is_string())
    std::printf(
        "note: %s is a meshed pod's address: judged as its connections arrive once its "
        "node's agent has enrolled it, over mutual TLS as %s\n",
        str(j, "source_ip").c_str(), str(j, "source_principal").c_str());
  if (j.contains("mtls") && j["mtls"].is_object())
    std::printf("mTLS on this port: %s%s\n", str(j["mtls"], "mode").c_str(),
                j["mtls"]["policy"].is_string()
                    ? (" (PeerAuthentication " + str(j["mtls"], "policy") + ")").c_str()
                    : " (no PeerAuthentication decides it)");
  if (j.contains("if_meshed") && j["if_meshed"].is_object())
    std::printf("note: %s\n", str(j, "explanation").c_str());
  return 0;
}

void declareAuthz(FlagTable& flags, Options& opts) {
  flags
      .value("--from", "NS/SA|IP",
             "the client: a service account's identity, or a plaintext source\n"
             "address",
             FlagTable::into(&opts.from))
      .value("--to", "NS/POD:PORT", "a pod of this node and a port", FlagTable::into(&opts.to));
}

}  // namespace sluice::ctl
