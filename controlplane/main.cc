// sluice-controlplane: workload discovery (and, later, the CA) for the mesh.
#include <signal.h>

#include <cstdio>
#include <string>

#include <grpcpp/grpcpp.h>

#include "controlplane/discovery/service.h"
#include "controlplane/local/source.h"
#include "controlplane/model/store.h"
#include "sluice/common/addr.h"
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
  std::fprintf(stderr, "sluice-controlplane: %s\nRun 'sluice-controlplane --help' for usage.\n", msg.c_str());
  std::exit(2);
}
}  // namespace

int main(int argc, char** argv) {
  std::string local_dir, listen = "127.0.0.1:15010", level = "info";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    std::string v;
    auto eq = a.find('=');
    if (a.rfind("--", 0) == 0 && eq != std::string::npos) {
      v = a.substr(eq + 1);
      a = a.substr(0, eq);
    } else if (a.rfind("--", 0) == 0) {
      if (i + 1 >= argc) usageError("flag " + a + " needs a value");
      v = argv[++i];
    } else {
      usageError("unexpected argument '" + a + "'");
    }
    if (a == "--local-config") local_dir = v;
    else if (a == "--listen") listen = v;
    else if (a == "--log-level") level = v;
    else usageError("unknown flag " + a);
  }
  if (local_dir.empty()) usageError("--local-config is required (the Kubernetes source comes in a later release)");
  if (!parseEndpoint(listen)) usageError("--listen must be IP:PORT, got '" + listen + "'");
  log::setup(level);
  auto logger = log::get("controlplane");

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

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
  int sig = 0;
  sigwait(&signals, &sig);
  logger->info("received {}, shutting down", strsignal(sig));
  discovery.stop();
  store.stop();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}
