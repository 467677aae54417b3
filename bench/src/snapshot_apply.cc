// Benchmark: how long a control plane snapshot of a large cluster takes to
// apply. Control plane: the Store recomputes workloads and Services (with
// endpoints from selectors) for WORKLOADS pods and SERVICES Services. Agent:
// decoding the WatchResponse off the wire, applying it to the view, and
// rebuilding the proxy's directory (workloads by IP, Services by VIP:port).
//   snapshot_apply [WORKLOADS] [SERVICES] [ROUNDS]   (default 10000 1000 5)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "agent/discovery/client.h"
#include "agent/discovery/mesh_directory.h"
#include "controlplane/model/store.h"

using namespace sluice;
using Clock = std::chrono::steady_clock;

namespace {
double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }
std::string ip(int i) {
  return fmt::format("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256);
}
}  // namespace

int main(int argc, char** argv) {
  int workloads = argc > 1 ? std::atoi(argv[1]) : 10000;
  int services = argc > 2 ? std::atoi(argv[2]) : 1000;
  int rounds = argc > 3 ? std::atoi(argv[3]) : 5;
  controlplane::model::Objects objs;
  for (int n = 0; n < 20; ++n)
    objs.namespaces.push_back({fmt::format("ns{}", n), {{"sluice.dev/mesh", "enabled"}}});
  for (int i = 0; i < workloads; ++i) {
    controlplane::model::Pod p;
    p.uid = fmt::format("uid-{}", i);
    p.name = fmt::format("pod-{}", i);
    p.ns = fmt::format("ns{}", i % 20);
    p.service_account = fmt::format("sa{}", i % 50);
    p.node = fmt::format("node{}", i % 100);
    p.ips = {ip(i)};
    p.labels = {{"app", fmt::format("app{}", i % services)}, {"tier", "backend"}};
    objs.pods.push_back(std::move(p));
  }
  for (int s = 0; s < services; ++s) {
    controlplane::model::Service svc;
    svc.ns = fmt::format("ns{}", s % 20);
    svc.name = fmt::format("svc{}", s);
    svc.vips = {fmt::format("10.96.{}.{}", s / 250, s % 250 + 1)};
    svc.ports = {{"http", 80, "TCP", 8080, "", ""}, {"grpc", 9090, "TCP", 9090, "", ""}};
    svc.has_selector = true;
    svc.selector = {{"app", fmt::format("app{}", s)}};
    objs.services.push_back(std::move(svc));
  }
  std::printf("snapshot: %d workloads, %d services (2 ports, ~%d endpoints each), %d rounds\n",
              workloads, services, services ? workloads / services : 0, rounds);
  double best_cp = 1e9, best_decode = 1e9, best_view = 1e9, best_dir = 1e9;
  size_t bytes = 0;
  for (int r = 0; r < rounds; ++r) {
    controlplane::model::Store store;
    auto t0 = Clock::now();
    if (!store.setSource("bench", objs)) return 1;
    auto snap = store.snapshot();
    auto t1 = Clock::now();
    api::v1::WatchResponse resp;
    resp.set_version(snap.version);
    resp.set_full(true);
    for (auto& w : snap.upserts) *resp.add_upserts() = w;
    for (auto& s : snap.services) *resp.add_services() = s;
    std::string wire = resp.SerializeAsString();
    bytes = wire.size();
    auto t2 = Clock::now();
    api::v1::WatchResponse decoded;
    if (!decoded.ParseFromString(wire)) return 1;
    auto t3 = Clock::now();
    agent::discovery::View view;
    view.apply(decoded);
    auto t4 = Clock::now();
    agent::discovery::MeshDirectory dir("cluster.local");
    dir.update(view);
    auto t5 = Clock::now();
    if (dir.serviceCount() != static_cast<size_t>(services) * 2) {
      std::fprintf(stderr, "expected %d service ports, got %zu\n", services * 2,
                   dir.serviceCount());
      return 1;
    }
    best_cp = std::min(best_cp, ms(t1 - t0));
    best_decode = std::min(best_decode, ms(t3 - t2));
    best_view = std::min(best_view, ms(t4 - t3));
    best_dir = std::min(best_dir, ms(t5 - t4));
  }
  double agent_total = best_decode + best_view + best_dir;
  std::printf("%-52s %10s\n", "step (best of rounds)", "ms");
  std::printf("%-52s %10.1f\n", "control plane: store recompute + snapshot", best_cp);
  std::printf("%-52s %10.1f   (%.1f MiB on the wire)\n", "agent: decode WatchResponse", best_decode,
              bytes / 1048576.0);
  std::printf("%-52s %10.1f\n", "agent: apply to the view", best_view);
  std::printf("%-52s %10.1f\n", "agent: rebuild proxy directory (IPs, VIP:ports)", best_dir);
  std::printf("%-52s %10.1f   target < 1000\n", "agent: total", agent_total);
  return 0;
}
