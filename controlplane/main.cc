// sluice-controlplane: workload discovery (and, later, the CA) for the mesh.
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <cstdio>
#include <string>

#include "controlplane/discovery/service.h"
#include "controlplane/local/source.h"
#include "controlplane/model/store.h"
#include "sluice/common/addr.h"
#include "sluice/common/flags.h"
#include "sluice/common/log.h"

using namespace sluice;

namespace {
constexpr const char* kUsage = R"(Usage: sluice-controlplane --local-config DIR [flags]

Serves Discovery.Watch (gRPC) to the node agents from a source of truth.

Flags:
  --local-config DIR   directory of Kubernetes-shaped YAML (Namespace, Pod), re-read on change
  --listen IP:PORT     gRPC address (default 127.0.0.1:15010)
  --log-level LEVEL    trace|debug|info|warn|error (default info)
  -h, --help           this text
)";

[[noreturn]] void usageError(const std::string& msg) {
  std::fprintf(stderr, "sluice-controlplane: %s\nRun 'sluice-controlplane --help' for usage.\n",
               msg.c_str());
  std::exit(2);
}
}  // namespace

int main(int argc, char** argv) {
  std::string local_dir, listen = "127.0.0.1:15010", level = "info";
  auto args = splitFlags(argc, argv, 1, {"--local-config", "--listen", "--log-level"});
  if (!args) usageError(args.error().message);
  for (const auto& [a, v] : *args) {
    if (a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (a == "--local-config")
      local_dir = v;
    else if (a == "--listen")
      listen = v;
    else if (a == "--log-level")
      level = v;
    else
      usageError("unknown flag " + a);
  }
  if (local_dir.empty())
    usageError("--local-config is required (the Kubernetes source comes in a later release)");
  if (!parseEndpoint(listen)) usageError("--listen must be IP:PORT, got '" + listen + "'");
  log::setup(level);
  auto logger = log::get("controlplane");

  blockTerminationSignals();

  controlplane::model::Store store;
  auto source = controlplane::local::DirectorySource::create(local_dir, store);
  if (!source) {
    logger->critical("{}", source.error().describe());
    return 1;
  }
  controlplane::discovery::Service discovery(store);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&discovery);
  auto server = builder.BuildAndStart();
  if (!server || port == 0) {
    logger->critical("cannot listen on {} (address in use?)", listen);
    return 1;
  }
  logger->info("serving discovery on {} from {} (version {})", listen, local_dir, store.version());
  logger->info("received {}, shutting down", waitForTermination());
  discovery.stop();
  store.stop();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}
