#include "agent/wiring/admin_json.h"

#include "agent/bpf/stat_names.h"

namespace sluice::agent::wiring {

nlohmann::json connectionsJson(const ztunnel::Engine& engine) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& c : engine.connections()) {
    out.push_back({{"id", c.id},
                   {"direction", ztunnel::toString(c.direction)},
                   {"pod", c.pod},
                   {"source", c.source},
                   {"destination", c.destination},
                   {"destination_service", c.destination_service},
                   {"path", ztunnel::toString(c.path)},
                   {"source_principal", c.source_principal},
                   {"destination_principal", c.destination_principal},
                   {"mutual_tls", c.mutual_tls},
                   {"bytes_sent", c.bytes_sent},
                   {"bytes_received", c.bytes_received},
                   {"start_unix_ms", c.start_unix_ms},
                   {"duration_ms", c.duration_ms},
                   {"state", ztunnel::toString(c.state)},
                   {"reason", c.reasonText()},
                   {"adopted", c.adopted}});
  }
  return {{"connections", out}};
}

nlohmann::json statsJson(const ztunnel::EngineStats& engine, const std::vector<uint64_t>& b) {
  nlohmann::json j;
  for (size_t i = 0; i < engine.values.size(); ++i) {
    const auto& info = ztunnel::describe(static_cast<ztunnel::Counter>(i));
    j[info.group][info.name] = engine.values[i];
  }
  for (size_t i = 0; i < bpf::kStats.size(); ++i)
    j["bpf"][bpf::kStats[i].name] = i < b.size() ? b[i] : 0;
  return j;
}

nlohmann::json listenersJson(const ztunnel::Engine& engine) {
  nlohmann::json listeners = nlohmann::json::array();
  for (const auto& l : engine.listeners())
    listeners.push_back(
        {{"pod_uid", l.pod_uid}, {"pod", l.pod}, {"address", l.address}, {"kind", l.kind}});
  return listeners;
}

nlohmann::json bpfJson(const bpf::Loader& loader, const std::string& pin_dir,
                       const std::string& cgroup, const bpf::MapSpliceControl* splice,
                       const std::string& splice_detail) {
  nlohmann::json links = nlohmann::json::array();
  for (const auto& l : loader.links())
    links.push_back({{"program", l.program}, {"pin", l.pin}, {"link_id", l.link_id}});
  const auto& sm = loader.sockmap();
  nlohmann::json sockmap = {{"requested", sm.requested ? "on" : "off"},
                            {"mode", sm.active ? "on" : "off"},
                            {"fallback", sm.requested && !sm.active},
                            {"detail", sm.detail}};
  if (sm.active) {
    auto stats = loader.sockmapStats();
    for (size_t i = 0; i < bpf::kSockmapStats.size(); ++i)
      sockmap["stats"][bpf::kSockmapStats[i].name] = stats[i];
  }
  auto& sp = sockmap["splice"];
  sp["mode"] = splice ? "on" : "off";
  sp["detail"] = splice_detail;
  if (splice) {
    auto st = splice->stats();
    for (size_t i = 0; i < bpf::kSpliceStats.size(); ++i)
      sp["stats"][bpf::kSpliceStats[i].name] = st[i];
  }
  return {{"pin_dir", pin_dir}, {"cgroup", cgroup}, {"links", links}, {"sockmap", sockmap}};
}

std::vector<uint64_t> sockmapMetricStats(const bpf::Loader& loader,
                                         const bpf::MapSpliceControl* splice) {
  auto v = loader.sockmapStats();
  auto st = splice ? splice->stats() : std::vector<uint64_t>(SLUICE_SPLICE_STAT_MAX);
  v.insert(v.end(), st.begin(), st.end());  // kSockmapStats, then kSpliceStats
  return v;
}

}  // namespace sluice::agent::wiring
