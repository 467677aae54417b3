#include "tools/sluicectl/live_format.h"

#include <algorithm>
#include <cstdio>

namespace sluice::ctl {

namespace {

std::string fmt(const char* format, double v) {
  char out[64];
  std::snprintf(out, sizeof(out), format, v);
  return out;
}

std::string latency(const nlohmann::json& v) {
  if (!v.is_number()) return "-";
  double ms = v.get<double>();
  return ms < 10 ? fmt("%.1fms", ms) : fmt("%.0fms", ms);
}

std::string str(const nlohmann::json& j, const char* key) {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : "";
}

// A tap end as top names it: its pod, else its address.
std::string endName(const nlohmann::json& end) {
  std::string pod = str(end, "pod");
  if (!pod.empty()) return pod;
  std::string address = str(end, "address");
  return address.empty() ? "-" : address;
}

bool succeeded(const nlohmann::json& e) {
  int status = e.value("status", 0);
  int grpc = e.value("grpc_status", -1);
  return status != 0 && status < 500 && grpc <= 0;
}

}  // namespace

std::string statKind(const std::string& w) {
  if (w == "deploy" || w == "deployment" || w == "deployments" || w == "workload" ||
      w == "workloads")
    return "deploy";
  if (w == "pod" || w == "pods" || w == "po") return "pod";
  if (w == "ns" || w == "namespace" || w == "namespaces") return "ns";
  return "";
}

Table statTable(const nlohmann::json& stat, const std::string& kind, const std::string& ns,
                const std::string& direction) {
  bool ns_column = kind != "ns" && ns.empty();
  std::vector<std::string> headers = {"NAME",        "MESHED",      "SUCCESS",     "RPS",
                                      "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TCP_CONN"};
  if (ns_column) headers.insert(headers.begin(), "NAMESPACE");
  Table t(headers);
  for (const auto& r : stat.value(kind, nlohmann::json::array())) {
    std::string row_ns = kind == "ns" ? str(r, "name") : str(r, "namespace");
    if (!ns.empty() && row_ns != ns) continue;
    const auto& d = r[direction];
    std::vector<std::string> row = {
        str(r, "name"),
        std::to_string(r.value("pods_enrolled", 0)) + "/" +
            std::to_string(r.value("pods_known", 0)),
        d["success_rate"].is_number() ? fmt("%.2f%%", d["success_rate"].get<double>() * 100) : "-",
        d.value("requests", 0) ? fmt("%.1frps", d.value("rps", 0.0)) : "-",
        latency(d["latency_ms_p50"]),
        latency(d["latency_ms_p95"]),
        latency(d["latency_ms_p99"]),
        std::to_string(d.value("tcp_open", 0))};
    if (ns_column) row.insert(row.begin(), row_ns);
    t.add(std::move(row));
  }
  return t;
}

std::string humanMicros(int64_t us) {
  if (us < 1000) return std::to_string(us) + "µs";
  if (us < 1000000) return fmt("%.1fms", double(us) / 1000);
  return fmt("%.1fs", double(us) / 1e6);
}

std::string tapLine(const nlohmann::json& e) {
  const auto& src = e["source"];
  const auto& dst = e["destination"];
  auto who = [](const nlohmann::json& end) {
    std::string ns = str(end, "namespace"), w = str(end, "workload");
    return ns.empty() ? std::string("-") : ns + "/" + w;
  };
  auto id = [](const nlohmann::json& end) {
    std::string s = str(end, "identity");
    return s.empty() ? std::string("-") : s;
  };
  std::string line = "req proxy=" + std::string(str(e, "direction") == "inbound" ? "in" : "out") +
                     " src=" + str(src, "address") + " dst=" + str(dst, "address") +
                     " tls=" + (e.value("mutual_tls", false) ? "true" : "false") +
                     " :method=" + str(e, "method") + " :authority=" + str(e, "authority") +
                     " :path=" + str(e, "path") +
                     " :status=" + std::to_string(e.value("status", 0));
  if (int g = e.value("grpc_status", -1); g >= 0) line += " grpc-status=" + std::to_string(g);
  line += " latency=" + humanMicros(e.value("duration_us", int64_t{0}));
  line += " src_workload=" + who(src) + " dst_workload=" + who(dst);
  line += " src_id=" + id(src) + " dst_id=" + id(dst);
  return line;
}

void TopTable::add(const nlohmann::json& e) {
  Key k{endName(e["source"]), endName(e["destination"]), str(e, "method"), str(e, "path")};
  Row& r = rows_[k];
  int64_t us = e.value("duration_us", int64_t{0});
  r.best_us = r.count ? std::min(r.best_us, us) : us;
  r.worst_us = r.count ? std::max(r.worst_us, us) : us;
  r.last_us = us;
  r.count += 1;
  r.successes += succeeded(e) ? 1 : 0;
  requests_ += 1;
}

std::vector<std::pair<TopTable::Key, TopTable::Row>> TopTable::sorted(size_t limit) const {
  std::vector<std::pair<Key, Row>> rows(rows_.begin(), rows_.end());
  std::stable_sort(rows.begin(), rows.end(),
                   [](const auto& a, const auto& b) { return a.second.count > b.second.count; });
  if (rows.size() > limit) rows.resize(limit);
  return rows;
}

Table TopTable::render(size_t limit) const {
  Table t({"SOURCE", "DESTINATION", "METHOD", "PATH", "COUNT", "BEST", "WORST", "LAST",
           "SUCCESS_RATE"});
  for (const auto& [k, r] : sorted(limit))
    t.add({std::get<0>(k), std::get<1>(k), std::get<2>(k), std::get<3>(k), std::to_string(r.count),
           humanMicros(r.best_us), humanMicros(r.worst_us), humanMicros(r.last_us),
           fmt("%.2f%%", 100.0 * double(r.successes) / double(r.count))});
  return t;
}

nlohmann::json TopTable::toJson(size_t limit) const {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [k, r] : sorted(limit))
    out.push_back({{"source", std::get<0>(k)},
                   {"destination", std::get<1>(k)},
                   {"method", std::get<2>(k)},
                   {"path", std::get<3>(k)},
                   {"count", r.count},
                   {"successes", r.successes},
                   {"best_us", r.best_us},
                   {"worst_us", r.worst_us},
                   {"last_us", r.last_us}});
  return out;
}

}  // namespace sluice::ctl
