// sluice-cni: CNI 1.0.0 chained plugin. Tells the Sluice node agent about pod
// ADD/DEL/CHECK over its unix socket and passes prevResult through unchanged.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
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

#include "cni-plugin/config.h"
#include "cni-plugin/installer.h"
#include "sluice/common/cni_protocol.h"
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

As the node's installer (the CNI container of the sluice-agent DaemonSet):

)";

// Everything: the plugin and both installer subcommands.
std::string usage() {
  return kPluginUsage + installerUsage(Subcommand::kInstall) + "\n" +
         installerUsage(Subcommand::kUninstall);
}

void logLine(const PluginConfig* cfg, const std::string& msg) {
  if (!cfg || cfg->log_file.empty()) return;
  std::ofstream out(cfg->log_file, std::ios::app);
  std::time_t now = std::time(nullptr);
  char ts[32];
  std::strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  out << ts << " sluice-cni " << msg << "\n";
}

int emitError(const std::string& version, const PluginError& e) {
  std::fputs(errorJson(version, e).c_str(), stdout);
  return 1;
}

// One request/reply with the agent, bounded by timeout_ms overall.
tl::expected<CniReply, std::string> callAgent(const PluginConfig& cfg, const CniRequest& req) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return tl::unexpected(std::string("socket(AF_UNIX) failed: ") + std::strerror(errno));
  sockaddr_un addr{};
  if (cfg.agent_socket.size() >= sizeof(addr.sun_path))
    return tl::unexpected(std::string("agentSocket path too long"));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, cfg.agent_socket.c_str(), cfg.agent_socket.size());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(cfg.timeout_ms);
  auto left = [&] {
    return std::max<int>(0, static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                 deadline - std::chrono::steady_clock::now())
                                                 .count()));
  };
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 &&
      errno != EINPROGRESS && errno != EAGAIN)
    return tl::unexpected(std::string(std::strerror(errno)));
  std::string out = encode(req);
  size_t off = 0;
  while (off < out.size()) {
    pollfd p{fd.get(), POLLOUT, 0};
    if (::poll(&p, 1, left()) <= 0)
      return tl::unexpected(std::string("timed out sending to the agent"));
    ssize_t n = ::send(fd.get(), out.data() + off, out.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return tl::unexpected(std::string(std::strerror(errno)));
    }
    off += static_cast<size_t>(n);
  }
  std::string in;
  char buf[4096];
  while (in.find('\n') == std::string::npos) {
    pollfd p{fd.get(), POLLIN, 0};
    if (::poll(&p, 1, left()) <= 0)
      return tl::unexpected(fmt::format("no answer from the agent within {} ms", cfg.timeout_ms));
    ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) break;
    in.append(buf, static_cast<size_t>(n));
    if (in.size() > kMaxMessageBytes) return tl::unexpected(std::string("agent reply too large"));
  }
  auto reply = decodeReply(in.substr(0, in.find('\n')));
  if (!reply) return tl::unexpected("malformed agent reply: " + reply.error().describe());
  return *reply;
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
    if (argc > 1 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" ||
                     std::string(argv[1]) == "--version")) {
      std::fputs(usage().c_str(), stdout);
      return 0;
    }
    std::fputs(usage().c_str(), stderr);
    return emitError(
        "1.0.0",
        {kInvalidConfig, "CNI_COMMAND is not set: sluice-cni is run by a container runtime", ""});
  }
  auto environment = parseEnvironment(env);
  if (!environment) return emitError("1.0.0", environment.error());
  if (environment->command == "VERSION") {
    std::printf(
        "%s\n",
        json{{"cniVersion", "1.0.0"}, {"supportedVersions", kSupportedVersions}}.dump().c_str());
    return 0;
  }
  std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  auto cfg = parseConfig(input);
  if (!cfg) {
    // DEL must let a runtime clean up even with a config we cannot read.
    if (environment->command == "DEL" && cfg.error().code != kDecodingFailure) return 0;
    return emitError("1.0.0", cfg.error());
  }
  const std::string& cmd = environment->command;
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
  std::string pod = req.pod_namespace + "/" + req.pod_name;

  auto reply = callAgent(*cfg, req);
  if (!reply) {
    std::string msg = fmt::format(
        "the sluice agent at {} is unreachable ({}); check that sluice-agent is running on "
        "this node",
        cfg->agent_socket, reply.error());
    logLine(&*cfg, cmd + " " + pod + ": " + msg);
    if (cmd == "DEL") return 0;  // the runtime must always be able to clean up
    if (cmd == "ADD" && cfg->fail_open) {
      logLine(&*cfg, "ADD " + pod + ": failOpen is set; the pod starts WITHOUT the mesh");
      std::printf("%s\n", cfg->prev_result.dump().c_str());
      return 0;
    }
    return emitError(cfg->cni_version, {kTryAgainLater, msg, ""});
  }
  if (!reply->ok) {
    logLine(&*cfg, cmd + " " + pod + ": agent refused: " + reply->error);
    if (cmd == "DEL") return 0;
    return emitError(cfg->cni_version,
                     {kInternal, "sluice agent: " + reply->error, reply->details});
  }
  logLine(&*cfg, cmd + " " + pod + (reply->enrolled ? ": enrolled" : ": ok (not enrolled)"));
  if (cmd == "ADD") std::printf("%s\n", cfg->prev_result.dump().c_str());
  return 0;
}
