// Benchmark: the TCP metrics' share of a new connection. What a worker calls
// for each proxied connection (TcpMetrics::opened, transferred, closed), in
// a loop on pre-built records as the engine hands them over, with a scrape
// every 100 ms as Prometheus would, for: one worker on one label set; two
// workers on the same label set; two workers each cycling through 1,000
// label sets (100 clients x 10 servers, a view of 110 pods). Prints
// connections/s over all workers and the nanoseconds one connection costs a
// worker (wall time x workers / connections).
//   metrics_conns [CONNECTIONS per worker]   (default 300000)
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "agent/telemetry/tcp_metrics.h"
#include "agent/telemetry/workloads.h"
#include "mesh_cluster.h"
#include "sluice/common/addr.h"

using namespace sluice;
using namespace sluice::agent::telemetry;
using sluice::bench::cluster;
using sluice::bench::record;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kClients = 100, kServers = 10;

struct Result {
  double per_second, ns_per_conn;
};

Result run(const WorkloadIndex& index, unsigned workers, int label_sets, uint64_t conns) {
  TcpMetrics tcp({.workers = workers}, &index);
  std::vector<std::vector<ztunnel::ConnectionRecord>> records(workers);
  for (unsigned w = 0; w < workers; ++w)
    for (int i = 0; i < label_sets; ++i)
      records[w].push_back(record(0, i / kServers, i % kServers));
  std::atomic<bool> done{false};
  std::thread scraper([&] {
    while (!done.load()) {
      TextWriter out;
      tcp.write(out);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  auto start = Clock::now();
  std::vector<std::thread> threads;
  for (unsigned w = 0; w < workers; ++w)
    threads.emplace_back([&, w] {
      auto& mine = records[w];
      for (uint64_t i = 0; i < conns; ++i) {
        auto& r = mine[i % mine.size()];
        r.id = i + 1;
        tcp.opened(w, r);
        tcp.transferred(w, r, 100, 1000);
        tcp.closed(w, r);
      }
    });
  for (auto& t : threads) t.join();
  double s = std::chrono::duration<double>(Clock::now() - start).count();
  done = true;
  scraper.join();
  double total = double(conns) * workers;
  return {total / s, s * 1e9 * workers / total};
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t conns = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 300000;
  if (conns == 0) {
    std::fprintf(stderr, "usage: metrics_conns [CONNECTIONS per worker > 0]\n");
    return 2;
  }
  WorkloadIndex index;
  index.update(cluster(kClients, kServers));
  std::printf("TcpMetrics per connection (opened + transferred + closed), %llu per worker\n",
              static_cast<unsigned long long>(conns));
  std::printf("%-34s %16s %16s\n", "", "connections/s", "ns/connection");
  struct Case {
    const char* name;
    unsigned workers;
    int label_sets;
  } cases[] = {{"1 worker, 1 label set", 1, 1},
               {"2 workers, the same label set", 2, 1},
               {"2 workers, 1000 label sets each", 2, kClients * kServers}};
  for (const auto& c : cases) {
    auto r = run(index, c.workers, c.label_sets, conns);
    std::printf("%-34s %16.0f %16.0f\n", c.name, r.per_second, r.ns_per_conn);
  }
}
