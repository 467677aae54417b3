// The node agent's own health on the metrics endpoint, beyond the process:
// what the BPF programs capture and how full their maps are, the
// control-plane stream, and when each workload certificate expires. Pure
// writers: the values come from AgentSources at each scrape.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "agent/bpf/map_fill.h"
#include "agent/telemetry/exposition.h"

namespace sluice::agent::telemetry {

struct ControlPlaneState {
  bool connected = false;  // the discovery stream is up
  bool synced = false;     // this process has applied a view from it
  uint64_t version = 0;    // the view's version (0: none yet)
};

// sluice_bpf_<stat>_total for every counter of bpf::kStats (`stats` in enum
// sluice_stat order; missing values are 0), then sluice_bpf_map_entries and
// sluice_bpf_map_max_entries with a `map` label.
void writeBpfMetrics(TextWriter& out, const std::vector<uint64_t>& stats,
                     const std::vector<bpf::MapFill>& maps);

// Same-node acceleration (--sockmap): sluice_bpf_sockmap_enabled (1 while the
// sockmap programs run) and sluice_bpf_sockmap_<stat>_total for every counter
// of bpf::kSockmapStats, then sluice_bpf_splice_<stat>_total for every one of
// bpf::kSpliceStats (`stats`: enum sluice_sockmap_stat order, then enum
// sluice_splice_stat; missing values are 0: all zeros while it is off).
void writeSockmapMetrics(TextWriter& out, bool enabled, const std::vector<uint64_t>& stats);

// sluice_controlplane_{connected,synced,view_version}.
void writeControlPlane(TextWriter& out, const ControlPlaneState& state);

// sluice_certificate_expiration_timestamp_seconds{identity="spiffe://..."}:
// the Unix time at which each identity's current certificate expires.
void writeCertificateExpiry(
    TextWriter& out, const std::map<std::string, std::chrono::system_clock::time_point>& not_after);

}  // namespace sluice::agent::telemetry
