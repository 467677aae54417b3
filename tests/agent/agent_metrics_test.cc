#include "agent/telemetry/agent_metrics.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "agent/bpf/stat_names.h"
#include "agent/telemetry/node_health.h"
#include "sluice/common/bpf_abi.h"
#include "support/local_http.h"
#include "telemetry_scrape.h"

using namespace sluice;
using namespace sluice::agent::telemetry;
using namespace sluice::agent::telemetry::test_scrape;
using test::freePort;
using test::httpGet;

// Agent and node health metrics, promtool, and the /metrics endpoint.
TEST_SUITE("telemetry") {
  TEST_CASE("agent health: build info, process metrics, every engine counter from the table") {
    TcpMetrics tcp({}, nullptr);
    AgentSources src;
    src.version = "v1.2.3";
    src.pods_enrolled = [] { return size_t{4}; };
    src.engine_stats = [] {
      ztunnel::EngineStats s;
      for (size_t i = 0; i < s.values.size(); ++i) s.values[i] = i + 1;
      return s;
    };
    AgentMetrics metrics(tcp, src);
    std::string text = metrics.scrape();
    auto all = parse(text);
    CHECK(value(all, "sluice_build_info", {{"version", "v1.2.3"}}) == 1);
    CHECK(value(all, "sluice_pods_enrolled") == 4);
    CHECK(value(all, "process_resident_memory_bytes") > 0);
    CHECK(value(all, "process_open_fds") > 0);
    CHECK(find(all, "process_cpu_seconds_total").size() == 1);
    auto started = find(all, "process_start_time_seconds");
    REQUIRE(started.size() == 1);
    double now =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    CHECK(std::stod(started[0].value) > 1e9);  // read from /proc, not 0
    CHECK(std::stod(started[0].value) <= now + 1);
    CHECK(value(all, "sluice_proxy_accepted_total") == 1);
    CHECK(value(all, "sluice_proxy_active") == 2);  // a gauge: no _total
    CHECK(text.find("# TYPE sluice_proxy_active gauge\n") != std::string::npos);
    CHECK(text.find("# TYPE sluice_hbone_tunnels_opened_total counter\n") != std::string::npos);
    size_t engine = 0;
    for (const auto& s : all)
      if (s.name.starts_with("sluice_proxy_") || s.name.starts_with("sluice_hbone_") ||
          s.name.starts_with("sluice_lb_"))
        ++engine;
    CHECK(engine == static_cast<size_t>(ztunnel::Counter::kCount));
    // Every family once: HELP and TYPE once per name.
    std::map<std::string, int> types;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line))
      if (line.starts_with("# TYPE ")) ++types[line.substr(7, line.find(' ', 7) - 7)];
    for (const auto& [name, n] : types) CHECK_MESSAGE(n == 1, name);
  }

  TEST_CASE("node health: BPF capture and map fill, control-plane stream, certificate expiry") {
    TcpMetrics tcp({}, nullptr);
    AgentSources src;
    src.controlplane = [] { return ControlPlaneState{false, true, 42}; };
    src.bpf_stats = [] {
      std::vector<uint64_t> v(agent::bpf::kStats.size());
      v[SLUICE_STAT_CONNECT_REDIRECTED] = 17;
      v[SLUICE_STAT_TC_ASSIGNED] = 5;
      v[agent::bpf::kStat6Base + SLUICE_STAT6_TC_NO_LISTENER] = 3;
      return v;
    };
    src.bpf_maps = [] {
      return std::vector<agent::bpf::MapFill>{{"sluice_enrolled_v1", 3, 4096},
                                              {"sluice_orig_dst_v1", 0, 65536}};
    };
    auto expiry = std::chrono::system_clock::time_point(std::chrono::seconds(1900000000));
    src.cert_expiry = [&] {
      return std::map<std::string, std::chrono::system_clock::time_point>{
          {kWeb, expiry}, {kApi, expiry + std::chrono::hours(1)}};
    };
    AgentMetrics metrics(tcp, src);
    std::string text = metrics.scrape();
    auto all = parse(text);
    CHECK(value(all, "sluice_controlplane_connected") == 0);
    CHECK(value(all, "sluice_controlplane_synced") == 1);
    CHECK(value(all, "sluice_controlplane_view_version") == 42);
    CHECK(value(all, "sluice_bpf_connect_redirected_total") == 17);
    CHECK(value(all, "sluice_bpf_tc_assigned_total") == 5);
    CHECK(value(all, "sluice_bpf_connect_seen_total") == 0);
    size_t bpf_counters = 0;
    for (const auto& s : all)
      if (s.name.starts_with("sluice_bpf_") && s.name.ends_with("_total")) ++bpf_counters;
    CHECK(value(all, "sluice_bpf_ip6_tc_no_listener_dropped_total") == 3);
    // every counter of the table (sluice_stats_v1 and sluice_stats6_v1), each once
    CHECK(bpf_counters == agent::bpf::kStats.size());
    CHECK(value(all, "sluice_bpf_map_entries", {{"map", "sluice_enrolled_v1"}}) == 3);
    CHECK(value(all, "sluice_bpf_map_max_entries", {{"map", "sluice_enrolled_v1"}}) == 4096);
    CHECK(value(all, "sluice_bpf_map_entries", {{"map", "sluice_orig_dst_v1"}}) == 0);
    CHECK(value(all, "sluice_certificate_expiration_timestamp_seconds", {{"identity", kWeb}}) ==
          1900000000);
    CHECK(value(all, "sluice_certificate_expiration_timestamp_seconds", {{"identity", kApi}}) ==
          1900003600);
    CHECK(text.find("# TYPE sluice_bpf_map_entries gauge\n") != std::string::npos);
    CHECK(text.find("# TYPE sluice_bpf_connect_redirected_total counter\n") != std::string::npos);
  }

  TEST_CASE(
      "sockmap and splice counters: sluice_bpf_sockmap_/splice_<name>_total, and whether it runs") {
    TcpMetrics tcp({}, nullptr);
    AgentSources src;
    bool enabled = true;
    src.sockmap_enabled = [&] { return enabled; };
    src.sockmap_stats = [] {
      constexpr size_t splice = SLUICE_SOCKMAP_STAT_MAX;  // kSockmapStats, then kSpliceStats
      std::vector<uint64_t> v(splice + SLUICE_SPLICE_STAT_MAX);
      v[splice + SLUICE_SPLICE_BYTES] = 77;
      v[splice + SLUICE_SPLICE_SWITCHED] = 3;
      v[SLUICE_SOCKMAP_MSG_REDIRECTED] = 9;
      v[SLUICE_SOCKMAP_BYTES_REDIRECTED] = 123456789012;
      v[SLUICE_SOCKMAP_ADDED_OUT_APP] = 2;
      return v;
    };
    AgentMetrics metrics(tcp, src);
    std::string text = metrics.scrape();
    auto all = parse(text);
    CHECK(value(all, "sluice_bpf_sockmap_enabled") == 1);
    CHECK(value(all, "sluice_bpf_sockmap_msg_redirected_total") == 9);
    CHECK(value(all, "sluice_bpf_sockmap_bytes_redirected_total") == 123456789012ULL);
    CHECK(value(all, "sluice_bpf_sockmap_added_outbound_app_total") == 2);
    CHECK(value(all, "sluice_bpf_sockmap_msg_tcp_total") == 0);
    size_t counters = 0;
    for (const auto& s : all)
      if (s.name.starts_with("sluice_bpf_sockmap_") && s.name.ends_with("_total")) ++counters;
    CHECK(counters == SLUICE_SOCKMAP_STAT_MAX);  // every counter of the table, each once
    CHECK(value(all, "sluice_bpf_splice_bytes_total") == 77);
    CHECK(value(all, "sluice_bpf_splice_switched_total") == 3);
    CHECK(value(all, "sluice_bpf_splice_ends_total") == 0);
    CHECK(text.find("# TYPE sluice_bpf_sockmap_msg_redirected_total counter\n") !=
          std::string::npos);
    CHECK(text.find("# TYPE sluice_bpf_sockmap_enabled gauge\n") != std::string::npos);
    // Off (or refused by the kernel): the gauge says so, the counters stay, at 0.
    enabled = false;
    src.sockmap_stats = [] { return std::vector<uint64_t>{}; };
    AgentMetrics off(tcp, src);
    auto none = parse(off.scrape());
    CHECK(value(none, "sluice_bpf_sockmap_enabled") == 0);
    CHECK(value(none, "sluice_bpf_sockmap_msg_redirected_total") == 0);
  }

  TEST_CASE("promtool check metrics accepts a scrape (Debian's prometheus package)") {
    if (::access("/usr/bin/promtool", X_OK) != 0) {
      const char* ci = std::getenv("CI");
      REQUIRE_MESSAGE((ci == nullptr || std::string(ci) != "true"),
                      "promtool is not installed (tools/deps.sh installs prometheus)");
      MESSAGE("skipped: promtool is not installed (tools/deps.sh installs prometheus)");
      return;
    }
    TcpMetrics tcp({.workers = 2}, &meshIndex());
    auto r = outboundHbone(1);
    r.destination_service = "shop/say \"hi\"\\";  // escaping exercised
    tcp.opened(1, r);
    tcp.transferred(1, r, 5, 6);
    r.reason = CloseReason::kConnectTimeout;
    tcp.closed(1, r);
    tcp.opened(0, inboundHbone(2));
    AgentSources src;
    src.version = "test";
    src.pods_enrolled = [] { return size_t{1}; };
    src.controlplane = [] { return ControlPlaneState{true, true, 7}; };
    src.engine_stats = [] { return ztunnel::EngineStats{}; };
    src.bpf_stats = [] { return std::vector<uint64_t>{1, 2, 3}; };
    src.bpf_maps = [] {
      return std::vector<agent::bpf::MapFill>{{"sluice_orig_dst_v1", 3, 65536}};
    };
    src.sockmap_enabled = [] { return true; };
    src.sockmap_stats = [] { return std::vector<uint64_t>{4, 5}; };
    src.cert_expiry = [] {
      return std::map<std::string, std::chrono::system_clock::time_point>{
          {kWeb, std::chrono::system_clock::now()}};
    };
    AgentMetrics metrics(tcp, src);
    char path[] = "/tmp/sluice-telemetry-test-XXXXXX";
    int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    std::string text = metrics.scrape();
    REQUIRE(::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
    ::close(fd);
    std::string cmd = std::string("/usr/bin/promtool check metrics < ") + path + " 2>&1";
    FILE* p = ::popen(cmd.c_str(), "r");
    REQUIRE(p != nullptr);
    std::string out;
    char buf[512];
    while (size_t n = std::fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
    int status = ::pclose(p);
    ::unlink(path);
    CHECK_MESSAGE(status == 0, out);
  }

  TEST_CASE("served on /metrics and /stats/prometheus as text format 0.0.4") {
    TcpMetrics tcp({}, &meshIndex());
    tcp.opened(0, outboundHbone(1));
    AgentMetrics metrics(tcp, {});
    int port = freePort();
    auto server = agent::admin::Server::create("127.0.0.1:" + std::to_string(port),
                                               "metrics endpoint", metrics.routes());
    REQUIRE(server.has_value());
    for (const char* path : {"/metrics", "/stats/prometheus"}) {
      auto r = httpGet(port, path);
      CHECK(r.find("200 OK") != std::string::npos);
      CHECK(r.find("Content-Type: text/plain; version=0.0.4") != std::string::npos);
      CHECK(r.find("istio_tcp_connections_opened_total{reporter=\"source\"") != std::string::npos);
    }
    CHECK(httpGet(port, "/ready").find("404") != std::string::npos);
  }
}
