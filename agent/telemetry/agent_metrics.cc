#include "agent/telemetry/agent_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>

namespace sluice::agent::telemetry {

namespace {

uint64_t residentBytes() {
  // statm: size resident shared text lib data dt, in pages.
  FILE* f = std::fopen("/proc/self/statm", "re");
  if (!f) return 0;
  unsigned long size = 0, resident = 0;
  int n = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  return n == 2 ? uint64_t(resident) * uint64_t(sysconf(_SC_PAGESIZE)) : 0;
}

uint64_t openFds() {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return 0;
  uint64_t n = 0;
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.') ++n;
  closedir(d);
  return n > 0 ? n - 1 : 0;  // not the directory's own descriptor
}

}  // namespace

void writeBuildInfo(TextWriter& out, const std::string& version) {
  out.family("sluice_build_info", MetricType::kGauge,
             "Always 1; the labels say which build of the agent is running");
  out.sample("sluice_build_info",
             renderLabels({{"version", version.empty() ? "unknown" : version}}), uint64_t{1});
}

void writeProcessMetrics(TextWriter& out) {
  out.family("process_resident_memory_bytes", MetricType::kGauge, "Resident memory size in bytes.");
  out.sample("process_resident_memory_bytes", "", residentBytes());
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  double cpu = double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
               double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  out.family("process_cpu_seconds_total", MetricType::kCounter,
             "Total user and system CPU time spent in seconds.");
  out.sample("process_cpu_seconds_total", "", cpu);
  out.family("process_open_fds", MetricType::kGauge, "Number of open file descriptors.");
  out.sample("process_open_fds", "", openFds());
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
    out.family("process_max_fds", MetricType::kGauge, "Maximum number of open file descriptors.");
    out.sample("process_max_fds", "", static_cast<uint64_t>(nofile.rlim_cur));
  }
}

void writeEngineCounters(TextWriter& out, const ztunnel::EngineStats& stats) {
  for (size_t i = 0; i < stats.values.size(); ++i) {
    const auto& info = ztunnel::describe(static_cast<ztunnel::Counter>(i));
    bool counter = info.kind == ztunnel::CounterKind::kCounter;
    std::string name = std::string("sluice_") + info.group + "_" + info.name;
    if (counter) name += "_total";
    out.family(name, counter ? MetricType::kCounter : MetricType::kGauge, info.help);
    out.sample(name, "", stats.values[i]);
  }
}

std::string AgentMetrics::scrape() {
  TextWriter out;
  tcp_.write(out);
  writeBuildInfo(out, sources_.version);
  writeProcessMetrics(out);
  if (sources_.pods_enrolled) {
    out.family("sluice_pods_enrolled", MetricType::kGauge,
               "Pods of this node whose traffic the mesh carries");
    out.sample("sluice_pods_enrolled", "", static_cast<uint64_t>(sources_.pods_enrolled()));
  }
  if (sources_.controlplane_connected) {
    out.family("sluice_controlplane_connected", MetricType::kGauge,
               "1 while the discovery stream to the control plane is up");
    out.sample("sluice_controlplane_connected", "",
               uint64_t{sources_.controlplane_connected() ? 1u : 0u});
  }
  if (sources_.engine_stats) writeEngineCounters(out, sources_.engine_stats());
  if (sources_.more) sources_.more(out);
  return out.take();
}

admin::Routes AgentMetrics::routes() {
  auto serve = [this] { return admin::Response{200, kContentType, scrape()}; };
  return {{"/metrics", serve}, {"/stats/prometheus", serve}};
}

}  // namespace sluice::agent::telemetry
