// cri_client: a minimal CRI client (tests/cri/cri.proto) that drives a container
// runtime's pod sandboxes the way the kubelet does, for the end-to-end test of
// sluice-cni under containerd (tests/e2e/test_cri.py). Prints JSON.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cri.grpc.pb.h"
#include "sluice/common/flags.h"

namespace {

namespace rt = runtime::v1;
using nlohmann::json;

constexpr const char* kUsage =
    R"(Usage: cri_client --endpoint unix:///PATH [flags] COMMAND [SANDBOX_ID]

Commands (CRI v1 RuntimeService, as the kubelet calls them):
  version           Version
  run               RunPodSandbox with metadata {--name, --namespace, --uid, attempt 0}
                    and the kubelet's labels and namespace options;
                    prints {"id": SANDBOX_ID}
  status ID         PodSandboxStatus (verbose): id, state, ip, metadata and the
                    runtime's info (containerd: its "info" JSON, with the netns path)
  stop ID           StopPodSandbox
  remove ID         RemovePodSandbox

Flags:
)";

struct Options {
  std::string endpoint;
  std::string name, ns, uid, log_dir, cgroup_parent;
  unsigned timeout_s = 60;
  std::vector<std::string> args;
};

int fail(const std::string& what, const grpc::Status& s) {
  std::fprintf(stderr, "cri_client: %s failed: %s (gRPC code %d)\n", what.c_str(),
               s.error_message().c_str(), static_cast<int>(s.error_code()));
  return 1;
}

std::unique_ptr<grpc::ClientContext> context(const Options& o) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(o.timeout_s));
  return ctx;
}

int run(const Options& o, rt::RuntimeService::Stub& stub) {
  const std::string& cmd = o.args[0];
  std::string id = o.args.size() > 1 ? o.args[1] : "";
  if (cmd == "version") {
    rt::VersionRequest req;
    req.set_version("v1");
    rt::VersionResponse resp;
    if (auto s = stub.Version(context(o).get(), req, &resp); !s.ok()) return fail(cmd, s);
    std::printf("%s\n", json{{"version", resp.version()},
                             {"runtime_name", resp.runtime_name()},
                             {"runtime_version", resp.runtime_version()},
                             {"runtime_api_version", resp.runtime_api_version()}}
                            .dump()
                            .c_str());
  } else if (cmd == "run") {
    rt::RunPodSandboxRequest req;
    auto* config = req.mutable_config();
    auto* meta = config->mutable_metadata();
    meta->set_name(o.name);
    meta->set_namespace_(o.ns);
    meta->set_uid(o.uid);
    meta->set_attempt(0);
    config->set_hostname(o.name);
    config->set_log_directory(o.log_dir);
    (*config->mutable_labels())["io.kubernetes.pod.name"] = o.name;
    (*config->mutable_labels())["io.kubernetes.pod.namespace"] = o.ns;
    (*config->mutable_labels())["io.kubernetes.pod.uid"] = o.uid;
    // The kubelet's defaults: pod network, pid and ipc namespaces.
    config->mutable_linux()->set_cgroup_parent(o.cgroup_parent);
    auto* ns = config->mutable_linux()->mutable_security_context()->mutable_namespace_options();
    ns->set_network(rt::POD);
    ns->set_pid(rt::CONTAINER);
    ns->set_ipc(rt::POD);
    rt::RunPodSandboxResponse resp;
    if (auto s = stub.RunPodSandbox(context(o).get(), req, &resp); !s.ok()) return fail(cmd, s);
    std::printf("%s\n", json{{"id", resp.pod_sandbox_id()}}.dump().c_str());
  } else if (cmd == "status") {
    rt::PodSandboxStatusRequest req;
    req.set_pod_sandbox_id(id);
    req.set_verbose(true);
    rt::PodSandboxStatusResponse resp;
    if (auto s = stub.PodSandboxStatus(context(o).get(), req, &resp); !s.ok()) return fail(cmd, s);
    const auto& st = resp.status();
    json info = json::object();
    for (const auto& [k, v] : resp.info()) {
      json parsed = json::parse(v, nullptr, false);
      info[k] = parsed.is_discarded() ? json(v) : parsed;
    }
    std::printf("%s\n", json{{"id", st.id()},
                             {"state", st.state() == rt::SANDBOX_READY ? "SANDBOX_READY"
                                                                       : "SANDBOX_NOTREADY"},
                             {"ip", st.network().ip()},
                             {"name", st.metadata().name()},
                             {"namespace", st.metadata().namespace_()},
                             {"uid", st.metadata().uid()},
                             {"info", info}}
                            .dump()
                            .c_str());
  } else if (cmd == "stop") {
    rt::StopPodSandboxRequest req;
    req.set_pod_sandbox_id(id);
    rt::StopPodSandboxResponse resp;
    if (auto s = stub.StopPodSandbox(context(o).get(), req, &resp); !s.ok()) return fail(cmd, s);
  } else if (cmd == "remove") {
    rt::RemovePodSandboxRequest req;
    req.set_pod_sandbox_id(id);
    rt::RemovePodSandboxResponse resp;
    if (auto s = stub.RemovePodSandbox(context(o).get(), req, &resp); !s.ok()) return fail(cmd, s);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  sluice::FlagTable flags;
  flags
      .value("--endpoint", "unix:///PATH", "the runtime's CRI socket",
             sluice::FlagTable::into(&o.endpoint))
      .value("--name", "NAME", "run: the pod's name (metadata.name)",
             sluice::FlagTable::into(&o.name))
      .value("--namespace", "NS", "run: the pod's namespace", sluice::FlagTable::into(&o.ns))
      .value("--uid", "UID", "run: the pod's uid", sluice::FlagTable::into(&o.uid))
      .value("--log-dir", "DIR", "run: the sandbox's log directory",
             sluice::FlagTable::into(&o.log_dir))
      .value("--cgroup-parent", "PATH", "run: the sandbox's cgroup parent (cgroupfs path)",
             sluice::FlagTable::into(&o.cgroup_parent))
      .value("--timeout", "SECONDS", "deadline of each call (default 60)",
             sluice::FlagTable::number(&o.timeout_s, 1, 600))
      .positional([&](const std::string& a) {
        o.args.push_back(a);
        return std::string();
      });
  auto parsed = flags.parse(argc, argv);
  if (!parsed) {
    std::fprintf(stderr, "cri_client: %s (see cri_client --help)\n",
                 parsed.error().describe().c_str());
    return 2;
  }
  if (*parsed) {
    std::printf("%s%s", kUsage, flags.help().c_str());
    return 0;
  }
  static const std::vector<std::pair<std::string, size_t>> kCommands = {
      {"version", 1}, {"run", 1}, {"status", 2}, {"stop", 2}, {"remove", 2}};
  bool known = false;
  for (const auto& [name, nargs] : kCommands)
    if (!o.args.empty() && o.args[0] == name && o.args.size() == nargs) known = true;
  if (o.endpoint.empty() || !known) {
    std::fprintf(stderr, "%s%s", kUsage, flags.help().c_str());
    return 2;
  }
  if (o.args[0] == "run" && (o.name.empty() || o.uid.empty())) {
    std::fprintf(stderr, "cri_client run: --name and --uid are required\n");
    return 2;
  }
  auto stub = runtime::v1::RuntimeService::NewStub(
      grpc::CreateChannel(o.endpoint, grpc::InsecureChannelCredentials()));
  return run(o, *stub);
}
