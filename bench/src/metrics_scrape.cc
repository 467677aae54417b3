// Benchmark: a Prometheus scrape of the agent's metrics endpoint while it
// holds SERIES label sets of the istio_tcp_* metrics (10,000 by default: the
// agent's cap). The real parts, in one process: TcpMetrics (its series
// created through the ConnectionObserver calls the engine makes: opened,
// transferred, closed), AgentMetrics' page (plus the process_* and build
// families) and the admin::Server that serves :15020, here on
// 127.0.0.1; each scrape is a GET over a TCP socket, timed from connect to
// the last byte, as Prometheus would see it. While scraping, a second thread
// keeps opening and closing connections on the TcpMetrics (a worker's view):
// its slowest opened() shows whether a scrape stalls the data path.
// Prints scrape latency p50/p99/max, the page's size and sample lines, and
// the process RSS with no series and with SERIES series.
//   metrics_scrape [SERIES] [SCRAPES]   (default 10000 200)
#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "agent/admin/server.h"
#include "agent/telemetry/agent_metrics.h"
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

constexpr int kPerSide = 100;  // SERIES = clients x kPerSide servers

double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

long rssKiB() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.starts_with("VmRSS:")) return std::atol(line.c_str() + 6);
  return -1;
}

uint16_t freePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    std::perror("bind");
    std::exit(1);
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

// One GET, read as Prometheus reads it (a chunk at a time, nothing kept):
// the status line, the response's bytes and lines.
struct Page {
  std::string status;
  size_t bytes = 0, lines = 0;
};
Page get(uint16_t port, const char* path, bool count_lines) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    std::perror("connect");
    std::exit(1);
  }
  std::string req =
      fmt::format("GET {} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n", path);
  if (::send(fd, req.data(), req.size(), 0) != ssize_t(req.size())) std::exit(1);
  Page page;
  static thread_local char buf[1 << 18];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) {
    if (page.status.empty()) page.status.assign(buf, std::min<size_t>(size_t(n), 15));
    page.bytes += size_t(n);
    if (count_lines) page.lines += size_t(std::count(buf, buf + n, '\n'));
  }
  ::close(fd);
  return page;
}

struct Figures {
  double p50, p99, max;
  size_t bytes, lines;
};

Figures summarize(std::vector<double> t, size_t bytes, size_t lines) {
  std::sort(t.begin(), t.end());
  return {t[t.size() / 2], t[std::min(t.size() - 1, t.size() * 99 / 100)], t.back(), bytes, lines};
}

Figures scrapes(uint16_t port, int n) {
  std::vector<double> t;
  Page page;
  for (int i = 0; i < n; ++i) {
    auto start = Clock::now();
    page = get(port, "/metrics", false);  // Prometheus parses as it reads; this only reads
    t.push_back(ms(Clock::now() - start));
    if (page.status != "HTTP/1.1 200 OK") {
      std::fprintf(stderr, "bad answer: %s\n", page.status.c_str());
      std::exit(1);
    }
  }
  page = get(port, "/metrics", true);  // untimed: the page's lines
  return summarize(std::move(t), page.bytes, page.lines);
}

// The page alone, without HTTP, into a buffer kept between renders (as the
// endpoint does): AgentMetrics::render() on this thread.
Figures renders(AgentMetrics& page, int n) {
  std::vector<double> t;
  size_t bytes = 0;
  std::string buffer;
  for (int i = 0; i < n; ++i) {
    auto start = Clock::now();
    buffer.clear();
    page.render(buffer);
    bytes = buffer.size();
    t.push_back(ms(Clock::now() - start));
  }
  return summarize(std::move(t), bytes, 0);
}

}  // namespace

int main(int argc, char** argv) {
  int series = argc > 1 ? std::atoi(argv[1]) : 10000;
  int n = argc > 2 ? std::atoi(argv[2]) : 200;
  if (series < kPerSide || n < 1) {
    std::fprintf(stderr, "usage: metrics_scrape [SERIES >= %d] [SCRAPES]\n", kPerSide);
    return 2;
  }
  int clients = series / kPerSide;
  WorkloadIndex index;
  index.update(cluster(clients, kPerSide));
  const unsigned workers = 2;
  TcpMetricsConfig config;
  config.workers = workers;
  config.max_series = size_t(series) + 16;
  TcpMetrics tcp(config, &index);
  AgentSources sources;
  sources.version = "bench";
  AgentMetrics page(tcp, std::move(sources));
  uint16_t port = freePort();
  auto server = agent::admin::Server::create(fmt::format("127.0.0.1:{}", port), "metrics endpoint",
                                             page.routes());
  if (!server) {
    std::fprintf(stderr, "%s\n", server.error().describe().c_str());
    return 1;
  }
  Figures empty = scrapes(port, n);
  Figures empty_render = renders(page, n);
  long rss_empty = rssKiB();

  uint64_t id = 1;
  for (int c = 0; c < clients; ++c)
    for (int s = 0; s < kPerSide; ++s) {
      auto r = record(id++, c, s);
      unsigned w = unsigned(id % workers);
      tcp.opened(w, r);
      tcp.transferred(w, r, 1000 + id, 20000 + id);
      tcp.closed(w, r);
    }
  long rss_series = rssKiB();

  // A worker opening and closing connections of existing series meanwhile.
  std::atomic<bool> stop{false};
  std::atomic<double> slowest_open{0};
  std::atomic<uint64_t> opens{0};
  std::thread worker([&] {
    uint64_t next = 1ull << 30;
    double worst = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      uint64_t id = next++;
      auto r = record(id, int(id % clients), int(id % kPerSide));
      auto start = Clock::now();
      tcp.opened(0, r);
      worst = std::max(worst, ms(Clock::now() - start));
      tcp.closed(0, r);
      opens.fetch_add(1, std::memory_order_relaxed);
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    slowest_open = worst;
  });
  Figures full = scrapes(port, n);
  long rss_after = rssKiB();  // + the endpoint's page buffer, kept between scrapes
  stop = true;
  worker.join();
  Figures full_render = renders(page, n);

  std::printf(
      "metrics scrape over HTTP (127.0.0.1, %d scrapes each; %d series = %d x %d workloads)\n", n,
      int(tcp.seriesCount()), clients, kPerSide);
  std::printf("%-28s %14s %14s\n", "", "no series",
              fmt::format("{} series", tcp.seriesCount()).c_str());
  std::printf("%-28s %14.2f %14.2f\n", "scrape p50 (ms)", empty.p50, full.p50);
  std::printf("%-28s %14.2f %14.2f\n", "scrape p99 (ms)", empty.p99, full.p99);
  std::printf("%-28s %14.2f %14.2f\n", "scrape max (ms)", empty.max, full.max);
  std::printf("%-28s %14.2f %14.2f\n", "render only p50 (ms)", empty_render.p50, full_render.p50);
  std::printf("%-28s %14.2f %14.2f\n", "render only p99 (ms)", empty_render.p99, full_render.p99);
  std::printf("%-28s %14zu %14zu\n", "page bytes", empty.bytes, full.bytes);
  std::printf("%-28s %14zu %14zu\n", "page lines", empty.lines, full.lines);
  std::printf("%-28s %14ld %14ld\n", "RSS, series held (KiB)", rss_empty, rss_series);
  std::printf("%-28s %14ld %14ld\n", "RSS after scrapes (KiB)", rss_empty, rss_after);
  std::printf("series cost %.0f bytes each; the endpoint's page buffer %.1f MB (RSS deltas)\n",
              (rss_series - rss_empty) * 1024.0 / double(tcp.seriesCount()),
              (rss_after - rss_series) / 1024.0);
  std::printf("a worker's opened() during scrapes: slowest %.3f ms over %llu opens\n",
              slowest_open.load(), (unsigned long long)opens.load());
  return 0;
}
