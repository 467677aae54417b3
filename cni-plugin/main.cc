// sluice-cni: CNI 1.0.0 chained plugin. Tells the Sluice node agent about pod
// ADD/DEL/CHECK over its unix socket and passes prevResult through (under the
// configuration's cniVersion).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <optional>
#include <string>

#include "cni-plugin/agent_client.h"
#include "cni-plugin/config.h"
#include "cni-plugin/installer.h"
#include "sluice/common/cni_protocol.h"
#include "sluice/common/json_text.h"
#include "sluice/common/unique_fd.h"

extern char** environ;

using namespace sluice;
using namespace sluice::cni;
using nlohmann::json;

namespace {

constexpr const char* kPluginUsage =
    R"(sluice-cni — Sluice's CNI plugin (CNI spec 1.0.0; 0.3.x and 0.4.0 configs accepted) and its installer

As a CNI plugin (no arguments) it is run by the container runtime, chained
after the cluster's primary CNI, with CNI_COMMAND=ADD|DEL|CHECK|VERSION in the
environment and the network configuration on stdin. Configuration fields:
  agentSocket   the node agent's socket (default /var/run/sluice/cni.sock)
  failOpen      on agent unreachable, let ADD succeed unmeshed (default false)
  timeoutMs     bound on every call to the agent (default 5000)
  logFile       append a line per call here (optional)
A container whose CNI_ARGS has no K8S_POD_NAMESPACE or K8S_POD_NAME (not a pod
of a Kubernetes runtime: podman passes only K8S_POD_NAME) is passed through
without the mesh; a line on stderr (the runtime's log) and in logFile says so.
An agent that is up but busy or not answering gets CNI code 11 (the runtime
retries), on ADD whatever failOpen says, and on DEL too; DEL always tells the
agent the container, also with a configuration it cannot fully use.
`sluice-cni --version` names the CNI protocol versions it speaks.

As the node's installer (the CNI container of the sluice-agent DaemonSet):

)";

// Everything: the plugin and both installer subcommands.
std::string usage() {
  return kPluginUsage + installerUsage(Subcommand::kInstall) + "\n" +
         installerUsage(Subcommand::kUninstall);
}

// What a runtime passes (CNI_ARGS, container ids) is anyone's text: control
// characters are escaped, so that one log line stays one line and no value
// can forge another.
std::string printable(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (c == '\\')
      out += "\\\\";
    else if (c < 0x20 || c == 0x7f)
      out += fmt::format("\\x{:02x}", c);
    else
      out += static_cast<char>(c);
  }
  return out;
}

void logLine(const PluginConfig* cfg, const std::string& msg) {
  if (!cfg || cfg->log_file.empty()) return;
  std::ofstream out(cfg->log_file, std::ios::app);
  std::time_t now = std::time(nullptr);
  char ts[32];
  std::strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  out << ts << " sluice-cni " << printable(msg) << "\n";
}

// A line in the runtime's log (stderr) and in logFile.
void warnLine(const PluginConfig& cfg, const std::string& msg) {
  logLine(&cfg, msg);
  std::fprintf(stderr, "sluice-cni: %s\n", printable(msg).c_str());
}

// ADD's result: prevResult, under the cniVersion of this call's configuration
// (spec: a result has the version the plugin was called with; the runtime
// hands prevResult over already converted to it).
void printAddResult(const PluginConfig& cfg) {
  json result = cfg.prev_result;
  if (result.is_object()) result["cniVersion"] = cfg.cni_version;
  std::printf("%s\n", jsonText(result).c_str());
}

// VERSION: the cniVersion asked for on stdin when sluice-cni speaks it.
void printVersion(const std::string& input) {
  std::string version = "1.0.0";
  json j = json::parse(input, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("cniVersion") && j["cniVersion"].is_string() &&
      supportedVersion(j["cniVersion"].get<std::string>()))
    version = j["cniVersion"].get<std::string>();
  std::printf(
      "%s\n",
      jsonText(json{{"cniVersion", version}, {"supportedVersions", kSupportedVersions}}).c_str());
}

int emitError(const std::string& version, const PluginError& e) {
  std::fputs(errorJson(version, e).c_str(), stdout);
  return 1;
}

// A runtime that is not a kubelet's (podman's CNI backend passes only K8S_POD_NAME)
// runs a container that is no Kubernetes pod: it has no namespace, so no service
// account, identity or policy. It is left out of the mesh, visibly: ADD does not
// tell the agent (it would keep a pod it can never enroll), passes prevResult
// through, and a line says so in the runtime's log (stderr) and in logFile. (Its
// DEL still goes to the agent, as every DEL does: CNI_ARGS may have been lost since
// the ADD, and the agent ignores a container it does not know.)
int notAPod(const PluginConfig& cfg, const std::string& cmd, const CniRequest& req,
            const std::string& cni_args) {
  if (cmd == "ADD") {
    warnLine(cfg, fmt::format(
                      "ADD container {}: CNI_ARGS has no {} (CNI_ARGS {}): not a pod sandbox of a "
                      "Kubernetes runtime (podman passes only K8S_POD_NAME), so it runs WITHOUT "
                      "the mesh. Sluice meshes the pods a kubelet's runtime (containerd, CRI-O) "
                      "starts",
                      req.container_id,
                      req.pod_namespace.empty() ? "K8S_POD_NAMESPACE" : "K8S_POD_NAME", cni_args));
    printAddResult(cfg);
  }
  return 0;  // CHECK: nothing of it is in the mesh
}

// "sluice-cni install|uninstall ...": the installer; returns nullopt otherwise.
std::optional<int> runInstallerCommand(int argc, char** argv) {
  if (argc < 2) return std::nullopt;
  std::string sub = argv[1];
  if (sub != "install" && sub != "uninstall") return std::nullopt;
  auto cmd = sub == "install" ? Subcommand::kInstall : Subcommand::kUninstall;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      // Only this subcommand's flags: each one listed is one it accepts.
      std::printf("Usage: %s\nRun 'sluice-cni --help' for the CNI plugin itself.\n",
                  installerUsage(cmd).c_str());
      return 0;
    }
  }
  auto options = parseInstallerFlags(cmd, argc, argv);
  if (!options) {
    std::fprintf(stderr, "sluice-cni %s: %s (see sluice-cni --help)\n", sub.c_str(),
                 options.error().describe().c_str());
    return 2;
  }
  return cmd == Subcommand::kInstall ? runInstall(*options) : runUninstall(*options);
}

}  // namespace

int main(int argc, char** argv) {
  if (auto rc = runInstallerCommand(argc, argv)) return *rc;
  std::map<std::string, std::string> env;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    auto eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  if (!env.count("CNI_COMMAND")) {
    if (argc > 1 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
      std::fputs(usage().c_str(), stdout);
      return 0;
    }
    if (argc > 1 && std::string(argv[1]) == "--version") {  // as the reference plugins answer it
      fmt::print("CNI sluice-cni plugin\nCNI protocol versions supported: {}\n",
                 fmt::join(kSupportedVersions, ", "));
      return 0;
    }
    if (argc > 1) {
      // A person at a shell, not a runtime (which passes no arguments).
      std::fprintf(stderr,
                   "sluice-cni: unknown command '%s': the commands are install and uninstall "
                   "(sluice-cni --help)\n",
                   argv[1]);
      return 2;
    }
    std::fputs(usage().c_str(), stderr);
    return emitError(
        "1.0.0",
        {kInvalidConfig, "CNI_COMMAND is not set: sluice-cni is run by a container runtime", ""});
  }
  auto environment = parseEnvironment(env);
  if (!environment) return emitError("1.0.0", environment.error());
  std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  if (environment->command == "VERSION") {
    printVersion(input);
    return 0;
  }
  const std::string& cmd = environment->command;
  auto cfg = parseConfig(input, environment->ifname);
  if (!cfg) {
    if (cmd != "DEL") return emitError("1.0.0", cfg.error());
    // DEL must reach the agent whatever the configuration (else the pod
    // stays enrolled with a dead netns, and the next pod given its address
    // is black-holed): what is usable of it, defaults for the rest.
    PluginConfig lenient = lenientConfig(input);
    warnLine(lenient,
             fmt::format("DEL container {}: the network configuration is not usable ({}{}{}); "
                         "telling the agent at {} anyway. Fix the sluice-cni entry of the "
                         "node's CNI conflist (sluice-cni install writes a valid one)",
                         environment->container_id, cfg.error().msg,
                         cfg.error().details.empty() ? "" : ": ", cfg.error().details,
                         lenient.agent_socket));
    cfg = std::move(lenient);
  }
  if (cmd == "ADD" && !cfg->has_prev_result)
    return emitError(cfg->cni_version, {kInvalidConfig,
                                        "sluice-cni is a chained plugin: ADD needs a prevResult "
                                        "from the primary CNI plugin before it in the conflist",
                                        ""});

  if (cmd == "CHECK" && !versionHasCheck(cfg->cni_version))
    return emitError(cfg->cni_version,
                     {kIncompatibleVersion,
                      fmt::format("CHECK is not defined for cniVersion {}; it exists from 0.4.0 on",
                                  cfg->cni_version),
                      ""});

  CniRequest req;
  req.command = cmd;
  req.container_id = environment->container_id;
  req.netns = environment->netns;
  req.ifname = environment->ifname;
  req.pod_namespace = environment->args["K8S_POD_NAMESPACE"];
  req.pod_name = environment->args["K8S_POD_NAME"];
  req.pod_uid = environment->args["K8S_POD_UID"];
  req.ips = cfg->ips;
  bool is_pod = !req.pod_namespace.empty() && !req.pod_name.empty();
  if (!is_pod && cmd != "DEL") return notAPod(*cfg, cmd, req, env["CNI_ARGS"]);
  // The log names the pod as its runtime passed it: every CNI_ARGS key
  // (logLine escapes control characters).
  std::string pod = is_pod ? fmt::format("{}/{} (container {}; CNI_ARGS {})", req.pod_namespace,
                                         req.pod_name, req.container_id, env["CNI_ARGS"])
                           : fmt::format("container {} (no pod in CNI_ARGS {})", req.container_id,
                                         env["CNI_ARGS"]);

  if (!environment->args_error.empty())
    warnLine(*cfg, fmt::format("DEL {}: {}; telling the agent anyway (the container id is enough)",
                               pod, environment->args_error));

  auto reply = callAgent(*cfg, req);
  if (!reply) {
    const AgentError& e = reply.error();
    if (e.kind == AgentFailure::kUnreachable) {
      std::string msg = fmt::format(
          "the sluice agent at {} is unreachable ({}); check that sluice-agent is running on "
          "this node",
          cfg->agent_socket, e.message);
      logLine(&*cfg, cmd + " " + pod + ": " + msg);
      // The runtime must always be able to clean up; an agent that starts
      // later drops the pods whose netns is gone (PodManager::restore).
      if (cmd == "DEL") return 0;
      if (cmd == "ADD" && cfg->fail_open) {
        logLine(&*cfg, "ADD " + pod + ": failOpen is set; the pod starts WITHOUT the mesh");
        printAddResult(*cfg);
        return 0;
      }
      return emitError(cfg->cni_version, {kTryAgainLater, msg, ""});
    }
    // The agent is up: a pod never starts past it (failOpen or not), and a
    // DEL is retried rather than lost.
    std::string msg =
        e.kind == AgentFailure::kBusy
            ? fmt::format("the sluice agent at {} is busy ({}); the runtime retries",
                          cfg->agent_socket, e.message)
            : fmt::format(
                  "the sluice agent at {} did not answer ({}); the runtime retries. If this "
                  "repeats, check sluice-agent's log on this node",
                  cfg->agent_socket, e.message);
    logLine(&*cfg, cmd + " " + pod + ": " + msg);
    return emitError(cfg->cni_version, {kTryAgainLater, msg, ""});
  }
  if (!reply->ok) {
    logLine(&*cfg, cmd + " " + pod + ": agent refused: " + reply->error);
    if (reply->code == kReplyTryAgainLater)  // busy: DEL too, or it would be lost
      return emitError(cfg->cni_version,
                       {kTryAgainLater, "sluice agent: " + reply->error, reply->details});
    if (cmd == "DEL") return 0;
    int code = reply->code == kReplyUnknownContainer ? kUnknownContainer : kInternal;
    return emitError(cfg->cni_version, {code, "sluice agent: " + reply->error, reply->details});
  }
  logLine(&*cfg, cmd + " " + pod + (reply->enrolled ? ": enrolled" : ": ok (not enrolled)"));
  if (cmd == "ADD") printAddResult(*cfg);
  return 0;
}
