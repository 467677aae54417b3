#include "agent/wiring/admin_json.h"

#include <algorithm>
#include <charconv>

#include "agent/bpf/stat_names.h"
#include "sluice/common/fmt.h"

namespace sluice::agent::wiring {

nlohmann::json connectionsJson(const ztunnel::Engine& engine) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& c : engine.connections()) {
    auto& j = out.emplace_back(nlohmann::json{{"id", c.id},
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
    if (!c.inbound_service.empty()) j["inbound_service"] = c.inbound_service;
  }
  return {{"connections", out}};
}

Result<ResetTarget> parseResetTarget(const std::map<std::string, std::string>& query) {
  for (const auto& [key, value] : query)
    if (key != "id" && key != "pod")
      return fail("unknown parameter '" + key + "': expected id=N or pod=NAMESPACE/NAME");
  auto id = query.find("id");
  auto pod = query.find("pod");
  if ((id == query.end()) == (pod == query.end()))
    return fail("expected exactly one of id=N (as /connections shows it) and pod=NAMESPACE/NAME");
  ResetTarget t;
  if (id != query.end()) {
    const std::string& v = id->second;
    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), t.id);
    if (v.empty() || ec != std::errc() || end != v.data() + v.size() || t.id == 0)
      return fail("invalid connection id '" + v + "': expected a positive integer");
    return t;
  }
  const std::string& v = pod->second;
  auto slash = v.find('/');
  bool printable =
      std::all_of(v.begin(), v.end(), [](unsigned char c) { return c > 32 && c < 127; });
  if (v.size() > 317 || !printable || slash == 0 || slash == std::string::npos ||
      slash + 1 == v.size() || v.find('/', slash + 1) != std::string::npos)
    return fail("invalid pod '" + v.substr(0, 64) + "': expected NAMESPACE/NAME");
  t.pod = v;
  return t;
}

std::pair<int, nlohmann::json> resetConnectionsJson(
    ztunnel::Engine& engine, const std::map<std::string, std::string>& query) {
  auto target = parseResetTarget(query);
  if (!target) return {400, {{"error", target.error().message}}};
  size_t n = engine.resetConnections(target->id, target->pod);
  if (!target->pod.empty()) {
    // None reset: a pod this node does not proxy is a mistake to say so.
    bool known = n > 0;
    for (const auto& l : engine.listeners()) known = known || l.pod == target->pod;
    if (!known)
      return {404,
              {{"error", fmt::format("no enrolled pod {} on this node (sluicectl workloads lists "
                                     "them)",
                                     target->pod)}}};
    return {200, {{"reset", n}, {"pod", target->pod}}};
  }
  if (n > 0) return {200, {{"reset", n}, {"id", target->id}}};
  for (const auto& c : engine.connections())
    if (c.id == target->id)
      return {
          404,
          {{"error", fmt::format("connection {} is already closed ({})", c.id, c.reasonText())}}};
  return {404,
          {{"error", fmt::format("no open connection with id {} (sluicectl connections lists "
                                 "them)",
                                 target->id)}}};
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
