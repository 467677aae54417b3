#include "agent/telemetry/node_health.h"

#include "agent/bpf/stat_names.h"

namespace sluice::agent::telemetry {

void writeBpfMetrics(TextWriter& out, const std::vector<uint64_t>& stats,
                     const std::vector<bpf::MapFill>& maps) {
  for (size_t i = 0; i < bpf::kStats.size(); ++i) {
    std::string name = std::string("sluice_bpf_") + bpf::kStats[i].name + "_total";
    out.family(name, MetricType::kCounter, bpf::kStats[i].help);
    out.sample(name, "", i < stats.size() ? stats[i] : uint64_t{0});
  }
  out.family("sluice_bpf_map_entries", MetricType::kGauge,
             "Entries in a BPF hash map now (a full map fails captures or enrollments)");
  for (const auto& m : maps)
    out.sample("sluice_bpf_map_entries", renderLabels({{"map", m.name}}), m.entries);
  out.family("sluice_bpf_map_max_entries", MetricType::kGauge,
             "Capacity of a BPF hash map (max_entries)");
  for (const auto& m : maps)
    out.sample("sluice_bpf_map_max_entries", renderLabels({{"map", m.name}}), m.max_entries);
}

void writeSockmapMetrics(TextWriter& out, bool enabled, const std::vector<uint64_t>& stats) {
  out.family("sluice_bpf_sockmap_enabled", MetricType::kGauge,
             "1 while same-node acceleration runs (--sockmap=on and the kernel took the programs)");
  out.sample("sluice_bpf_sockmap_enabled", "", uint64_t{enabled ? 1u : 0u});
  for (size_t i = 0; i < bpf::kSockmapStats.size(); ++i) {
    std::string name = std::string("sluice_bpf_sockmap_") + bpf::kSockmapStats[i].name + "_total";
    out.family(name, MetricType::kCounter, bpf::kSockmapStats[i].help);
    out.sample(name, "", i < stats.size() ? stats[i] : uint64_t{0});
  }
  for (size_t i = 0; i < bpf::kSpliceStats.size(); ++i) {
    std::string name = std::string("sluice_bpf_splice_") + bpf::kSpliceStats[i].name + "_total";
    out.family(name, MetricType::kCounter, bpf::kSpliceStats[i].help);
    size_t at = bpf::kSockmapStats.size() + i;
    out.sample(name, "", at < stats.size() ? stats[at] : uint64_t{0});
  }
}

void writeControlPlane(TextWriter& out, const ControlPlaneState& state) {
  out.family("sluice_controlplane_connected", MetricType::kGauge,
             "1 while the discovery stream to the control plane is up");
  out.sample("sluice_controlplane_connected", "", uint64_t{state.connected ? 1u : 0u});
  out.family("sluice_controlplane_synced", MetricType::kGauge,
             "1 once this agent process has applied a view from the control plane");
  out.sample("sluice_controlplane_synced", "", uint64_t{state.synced ? 1u : 0u});
  out.family("sluice_controlplane_view_version", MetricType::kGauge,
             "Version of the discovery view applied last (counts from 1 at each control plane "
             "start)");
  out.sample("sluice_controlplane_view_version", "", state.version);
}

void writeCertificateExpiry(
    TextWriter& out,
    const std::map<std::string, std::chrono::system_clock::time_point>& not_after) {
  out.family("sluice_certificate_expiration_timestamp_seconds", MetricType::kGauge,
             "When the certificate an identity serves now expires (Unix seconds)");
  for (const auto& [identity, t] : not_after) {
    auto secs = std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
    out.sample("sluice_certificate_expiration_timestamp_seconds",
               renderLabels({{"identity", identity}}), static_cast<uint64_t>(secs < 0 ? 0 : secs));
  }
}

}  // namespace sluice::agent::telemetry
