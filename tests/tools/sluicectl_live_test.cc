#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <string>
#include <tuple>
#include <vector>

#include "tools/sluicectl/connections_args.h"
#include "tools/sluicectl/live_format.h"

using namespace sluice::ctl;
using nlohmann::json;

namespace {

// A /live/stat document as the agent serves it (agent/telemetry/stat_table.h).
json statDoc() {
  json busy = {
      {"requests", 120},       {"successes", 90},        {"success_rate", 0.75},    {"rps", 2.0},
      {"latency_ms_p50", 3.2}, {"latency_ms_p95", 48.6}, {"latency_ms_p99", 120.4}, {"tcp_open", 4},
      {"tcp_opened", 12}};
  json idle = {{"requests", 0},
               {"successes", 0},
               {"success_rate", nullptr},
               {"rps", 0.0},
               {"latency_ms_p50", nullptr},
               {"latency_ms_p95", nullptr},
               {"latency_ms_p99", nullptr},
               {"tcp_open", 0},
               {"tcp_opened", 0}};
  return {{"window_seconds", 60},
          {"covered_seconds", 60},
          {"deploy",
           {{{"namespace", "shop"},
             {"name", "web"},
             {"pods_enrolled", 2},
             {"pods_known", 3},
             {"inbound", busy},
             {"outbound", idle}},
            {{"namespace", "tools"},
             {"name", "curl"},
             {"pods_enrolled", 1},
             {"pods_known", 1},
             {"inbound", idle},
             {"outbound", busy}}}},
          {"pod", json::array()},
          {"ns",
           {{{"name", "shop"},
             {"pods_enrolled", 2},
             {"pods_known", 3},
             {"inbound", busy},
             {"outbound", idle}}}}};
}

json event(const char* src_pod, const char* path, int status, int64_t us, int grpc = -1) {
  return {{"direction", "inbound"},
          {"method", "GET"},
          {"authority", "web.shop:8080"},
          {"path", path},
          {"status", status},
          {"grpc_status", grpc},
          {"duration_us", us},
          {"mutual_tls", true},
          {"source",
           {{"address", "10.244.1.5:40000"},
            {"namespace", "shop"},
            {"workload", "client"},
            {"pod", src_pod},
            {"identity", "spiffe://cluster.local/ns/shop/sa/client"}}},
          {"destination",
           {{"address", "10.244.2.7:8080"},
            {"namespace", "shop"},
            {"workload", "web"},
            {"pod", "web-1"},
            {"identity", "spiffe://cluster.local/ns/shop/sa/web"}}}};
}

}  // namespace

TEST_SUITE("sluicectl_live") {
  TEST_CASE("stat: Linkerd's columns and formats, '-' without requests") {
    CHECK(statKind("deployments") == "deploy");
    CHECK(statKind("po") == "pod");
    CHECK(statKind("namespace") == "ns");
    CHECK(statKind("svc").empty());

    std::string all = statTable(statDoc(), "deploy", "", "inbound").render();
    CHECK(all ==
          "NAMESPACE   NAME   MESHED   SUCCESS   RPS      LATENCY_P50   LATENCY_P95   "
          "LATENCY_P99   TCP_CONN\n"
          "shop        web    2/3      75.00%    2.0rps   3.2ms         49ms          120ms        "
          " 4\n"
          "tools       curl   1/1      -         -        -             -             -            "
          " 0\n");
    // -n: that namespace only, without the NAMESPACE column.
    std::string shop = statTable(statDoc(), "deploy", "shop", "inbound").render();
    CHECK(shop.rfind("NAME ", 0) == 0);
    CHECK(shop.find("curl") == std::string::npos);
    // --outbound: the other direction.
    std::string out = statTable(statDoc(), "deploy", "tools", "outbound").render();
    CHECK(out.find("curl   1/1      75.00%") != std::string::npos);
    std::string ns = statTable(statDoc(), "ns", "", "inbound").render();
    CHECK(ns.rfind("NAME   MESHED", 0) == 0);
    CHECK(ns.find("shop   2/3") != std::string::npos);
    CHECK(statTable(statDoc(), "pod", "", "inbound").empty());
  }

  TEST_CASE("tap: one line per request, both identities, gRPC status only when present") {
    std::string line = tapLine(event("client-1", "/api", 503, 1500));
    CHECK(line ==
          "req proxy=in src=10.244.1.5:40000 dst=10.244.2.7:8080 tls=true :method=GET "
          ":authority=web.shop:8080 :path=/api :status=503 latency=1.5ms src_workload=shop/client "
          "dst_workload=shop/web src_id=spiffe://cluster.local/ns/shop/sa/client "
          "dst_id=spiffe://cluster.local/ns/shop/sa/web");
    CHECK(tapLine(event("c", "/", 200, 10, 0)).find(" grpc-status=0 latency=10µs") !=
          std::string::npos);
    CHECK(humanMicros(2'500'000) == "2.5s");
  }

  TEST_CASE("top: busiest first, best, worst, last and success rate per route") {
    TopTable top;
    for (int i = 0; i < 3; ++i) top.add(event("client-1", "/a", 200, 1000 * (i + 1)));
    top.add(event("client-1", "/a", 503, 500));
    top.add(event("client-2", "/b", 200, 700));
    CHECK(top.requests() == 5);
    std::string t = top.render(10).render();
    CHECK(t.rfind("SOURCE     DESTINATION   METHOD   PATH   COUNT   BEST    WORST   LAST    "
                  "SUCCESS_RATE\n",
                  0) == 0);
    CHECK(t.find("client-1   web-1         GET      /a     4       500µs   3.0ms   500µs   "
                 "75.00%\n") != std::string::npos);
    CHECK(t.find("client-2") > t.find("client-1"));
    auto j = top.toJson(1);
    REQUIRE(j.size() == 1);
    CHECK(j[0]["path"] == "/a");
    CHECK(j[0]["count"] == 4);
    CHECK(j[0]["successes"] == 3);
  }
}

TEST_CASE("connections: no arguments lists - reset ID and reset --pod make the POST path") {
  auto list = connectionsRequest({}, "");
  CHECK(list.error.empty());
  CHECK_FALSE(list.reset);
  CHECK(list.path == "/connections");

  auto one = connectionsRequest({"reset", "42"}, "");
  CHECK(one.error.empty());
  CHECK(one.reset);
  CHECK(one.path == "/connections/reset?id=42");

  auto pod = connectionsRequest({"reset"}, "default/client-7d9f");
  CHECK(pod.error.empty());
  CHECK(pod.path == "/connections/reset?pod=default/client-7d9f");

  // Usage errors, each saying what is wrong.
  for (const auto& [args, p, says] :
       std::vector<std::tuple<std::vector<std::string>, std::string, std::string>>{
           {{"reset"}, "", "needs a connection ID"},
           {{"reset", "0"}, "", "invalid connection id '0'"},
           {{"reset", "-3"}, "", "invalid connection id"},
           {{"reset", "12abc"}, "", "invalid connection id"},
           {{"reset", "123456789012345678901"}, "", "invalid connection id"},
           {{"reset", "7"}, "a/b", "not both"},
           {{"reset"}, "nopod", "invalid --pod 'nopod'"},
           {{"reset"}, "a/b/c", "invalid --pod"},
           {{"reset"}, "a/b&id=1", "invalid --pod"},
           {{"kill", "7"}, "", "unknown connections action 'kill'"},
           {{}, "a/b", "--pod is for"},
       }) {
    auto r = connectionsRequest(args, p);
    CHECK_MESSAGE(r.error.find(says) != std::string::npos, r.error);
    CHECK(r.path.empty() == !r.error.empty());
  }
}
