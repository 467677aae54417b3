#include "agent/telemetry/agent_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

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

// Seconds since the epoch at which this process started: its start in clock
// ticks after boot (/proc/self/stat field 22) plus the boot time (/proc/stat
// btime). 0 when either cannot be read.
double startTimeSeconds() {
  FILE* f = std::fopen("/proc/self/stat", "re");
  if (!f) return 0;
  char buf[1024];
  size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  // The command name (field 2) may hold spaces and parentheses: count
  // fields from the last ')'.
  const char* p = std::strrchr(buf, ')');
  if (!p) return 0;
  unsigned long long start_ticks = 0;
  // After ")": state is field 3, starttime field 22, so skip 19 fields.
  if (std::sscanf(
          p + 1,
          " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
          &start_ticks) != 1)
    return 0;
  FILE* st = std::fopen("/proc/stat", "re");
  if (!st) return 0;
  unsigned long long btime = 0;
  char line[256];
  while (std::fgets(line, sizeof(line), st))
    if (std::sscanf(line, "btime %llu", &btime) == 1) break;
  std::fclose(st);
  long hz = sysconf(_SC_CLK_TCK);
  if (btime == 0 || hz <= 0) return 0;
  return double(btime) + double(start_ticks) / double(hz);
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
  out.family("process_start_time_seconds", MetricType::kGauge,
             "Start time of the process since unix epoch in seconds.");
  out.sample("process_start_time_seconds", "", startTimeSeconds());
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
  std::string page;
  render(page);
  return page;
}

void AgentMetrics::render(std::string& into) {
  if (sources_.before_scrape) sources_.before_scrape();
  TextWriter out(into);
  tcp_.write(out);
  if (sources_.http) sources_.http(out);
  writeBuildInfo(out, sources_.version);
  writeProcessMetrics(out);
  if (sources_.pods_enrolled) {
    out.family("sluice_pods_enrolled", MetricType::kGauge,
               "Pods of this node whose traffic the mesh carries");
    out.sample("sluice_pods_enrolled", "", static_cast<uint64_t>(sources_.pods_enrolled()));
  }
  if (sources_.controlplane) writeControlPlane(out, sources_.controlplane());
  if (sources_.bpf_stats || sources_.bpf_maps)
    writeBpfMetrics(out, sources_.bpf_stats ? sources_.bpf_stats() : std::vector<uint64_t>{},
                    sources_.bpf_maps ? sources_.bpf_maps() : std::vector<bpf::MapFill>{});
  if (sources_.sockmap_enabled || sources_.sockmap_stats)
    writeSockmapMetrics(
        out, sources_.sockmap_enabled && sources_.sockmap_enabled(),
        sources_.sockmap_stats ? sources_.sockmap_stats() : std::vector<uint64_t>{});
  if (sources_.cert_expiry) writeCertificateExpiry(out, sources_.cert_expiry());
  if (sources_.engine_stats) writeEngineCounters(out, sources_.engine_stats());
  if (sources_.more) sources_.more(out);
}

admin::Routes AgentMetrics::routes() {
  auto serve = [this] {
    // Still being sent (a scrape that has not finished reading): a new one.
    if (!page_ || page_.use_count() > 1) {
      size_t expect = page_ ? page_->size() + page_->size() / 8 : 0;
      page_ = std::make_shared<std::string>();
      page_->reserve(expect);
    }
    size_t expect = page_->size() + page_->size() / 8;  // this page may have grown
    page_->clear();
    if (page_->capacity() < expect) page_->reserve(expect);
    render(*page_);
    return admin::Response{200, kContentType, "", page_};
  };
  return {{"/metrics", serve}, {"/stats/prometheus", serve}};
}

}  // namespace sluice::agent::telemetry
