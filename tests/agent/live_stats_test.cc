#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "agent/telemetry/live_stats.h"

#include <doctest/doctest.h>

#include <string>
#include <thread>
#include <vector>

#include "agent/admin/server.h"
#include "agent/telemetry/latency_histogram.h"
#include "agent/telemetry/stat_table.h"
#include "sluice/common/addr.h"
#include "support/local_http.h"
#include "support/workload_index.h"

using namespace sluice;
using namespace sluice::agent::telemetry;
using ztunnel::ConnectionRecord;
using ztunnel::Direction;
using ztunnel::Path;
using ztunnel::RequestRecord;

namespace {

struct FakeClock {
  LiveStats::Clock::time_point t{std::chrono::hours(1)};
  std::function<LiveStats::Clock::time_point()> fn() {
    return [this] { return t; };
  }
  void advance(std::chrono::milliseconds d) { t += d; }
};

// web (Deployment, two pods) and db (StatefulSet) in shop, all on this node.
WorkloadIndex& index() {
  static WorkloadIndex idx;
  static bool once = [] {
    idx.update(test::workloadSnapshot("shop", {{"web-5d4f-aaaaa",
                                                "10.244.1.5",
                                                {{"pod-template-hash", "5d4f"}},
                                                {"ReplicaSet", "web-5d4f"}},
                                               {"web-5d4f-bbbbb",
                                                "10.244.1.6",
                                                {{"pod-template-hash", "5d4f"}},
                                                {"ReplicaSet", "web-5d4f"}},
                                               {"db-0",
                                                "10.244.1.9",
                                                {{"statefulset.kubernetes.io/pod-name", "db-0"}},
                                                {"StatefulSet", "db"}}}));
    return true;
  }();
  (void)once;
  return idx;
}

// An inbound connection to `pod` (ns/name), from a client on another node.
ConnectionRecord inbound(uint64_t id, const char* pod, const char* dst) {
  ConnectionRecord r;
  r.id = id;
  r.direction = Direction::kInbound;
  r.path = Path::kHbone;
  r.pod = pod;
  r.source = "10.244.2.3:41000";
  r.destination = dst;
  return r;
}

RequestRecord req(int status, int64_t duration_us, int grpc_status = -1) {
  RequestRecord r;
  r.method = "GET";
  r.path = "/";
  r.status = status;
  r.grpc_status = grpc_status;
  r.duration_us = duration_us;
  return r;
}

const PodTraffic* find(const LiveSnapshot& s, const std::string& pod) {
  for (const auto& p : s.pods)
    if (p.pod == pod) return &p;
  return nullptr;
}

}  // namespace

TEST_SUITE("latency_histogram") {
  TEST_CASE("buckets are contiguous, at most 25% wide, and bound the range") {
    for (uint64_t v :
         {0ull, 1ull, 3ull, 4ull, 5ull, 7ull, 8ull, 100ull, 1000ull, 123456ull, 60'000'000ull}) {
      size_t b = LatencyHistogram::bucketOf(v);
      CHECK(LatencyHistogram::lowerBound(b) <= v);
      CHECK(v < LatencyHistogram::lowerBound(b + 1));
      if (v >= 4)
        CHECK(LatencyHistogram::lowerBound(b + 1) - LatencyHistogram::lowerBound(b) <= v / 4 + 1);
    }
    for (size_t b = 0; b + 1 < LatencyHistogram::kBuckets; ++b)
      CHECK(LatencyHistogram::lowerBound(b) < LatencyHistogram::lowerBound(b + 1));
    // Far beyond the range: the last bucket, never out of bounds.
    CHECK(LatencyHistogram::bucketOf(UINT64_MAX) == LatencyHistogram::kBuckets - 1);
    LatencyHistogram h;
    h.add(-5);  // a clock going backwards counts as 0
    h.add(INT64_MAX);
    CHECK(h.count() == 2);
  }

  TEST_CASE("quantiles of known distributions, within a bucket's width") {
    LatencyHistogram h;
    CHECK(h.quantile(0.5) == 0);
    // 1..1000 ms, one each: p50 ~ 500 ms, p95 ~ 950 ms, p99 ~ 990 ms.
    for (int ms = 1; ms <= 1000; ++ms) h.add(ms * 1000);
    CHECK(h.count() == 1000);
    CHECK(h.quantile(0.5) == doctest::Approx(500'000).epsilon(0.13));
    CHECK(h.quantile(0.95) == doctest::Approx(950'000).epsilon(0.13));
    CHECK(h.quantile(0.99) == doctest::Approx(990'000).epsilon(0.13));
    // 90 fast, 10 slow: p50 is fast, p95 and p99 are slow.
    LatencyHistogram m;
    for (int i = 0; i < 90; ++i) m.add(2'000);
    for (int i = 0; i < 10; ++i) m.add(300'000);
    CHECK(m.quantile(0.5) == doctest::Approx(2'000).epsilon(0.25));
    CHECK(m.quantile(0.95) == doctest::Approx(300'000).epsilon(0.25));
    LatencyHistogram both = h;
    both.merge(m);
    CHECK(both.count() == 1100);
  }
}

TEST_SUITE("live_stats") {
  TEST_CASE("success is not 5xx and gRPC status 0 - no response is a failure") {
    CHECK(requestSucceeded(req(200, 1)));
    CHECK(requestSucceeded(req(404, 1)));
    CHECK_FALSE(requestSucceeded(req(503, 1)));
    CHECK_FALSE(requestSucceeded(req(0, 1)));
    CHECK(requestSucceeded(req(200, 1, 0)));
    CHECK_FALSE(requestSucceeded(req(200, 1, 14)));
  }

  TEST_CASE("requests, success, latency and connections of a pod over the window") {
    FakeClock clock;
    LiveStats live({.workers = 2}, &index(), clock.fn());
    live.opened(0, inbound(1, "shop/web-5d4f-aaaaa", "10.244.1.5:8080"));
    live.opened(1, inbound(2, "shop/web-5d4f-aaaaa", "10.244.1.5:8080"));
    for (int i = 0; i < 8; ++i) live.request(i % 2, inbound(1 + i % 2, "", ""), req(200, 4'000));
    live.request(0, inbound(1, "", ""), req(503, 40'000));
    live.request(1, inbound(2, "", ""), req(503, 40'000));
    live.closed(1, inbound(2, "shop/web-5d4f-aaaaa", "10.244.1.5:8080"));
    clock.advance(std::chrono::seconds(30));
    auto s = live.snapshot();
    CHECK(s.window == std::chrono::seconds(60));
    CHECK(s.covered == std::chrono::seconds(30));  // just started: only 30 s to average over
    const PodTraffic* web = find(s, "web-5d4f-aaaaa");
    REQUIRE(web);
    CHECK(web->workload == "web");
    CHECK(web->namespace_ == "shop");
    CHECK(web->inbound.requests == 10);
    CHECK(web->inbound.successes == 8);
    CHECK(web->inbound.tcp_opened == 2);
    CHECK(web->inbound.tcp_open == 1);
    CHECK(web->inbound.latency.quantile(0.5) == doctest::Approx(4'000).epsilon(0.25));
    CHECK(web->inbound.latency.quantile(0.99) == doctest::Approx(40'000).epsilon(0.25));
    CHECK(web->outbound.requests == 0);
  }

  TEST_CASE("slots leave the window one by one - an idle pod without connections is dropped") {
    FakeClock clock;
    LiveStats live({.workers = 1}, &index(), clock.fn());
    clock.advance(std::chrono::seconds(301));  // long after start: a full window
    auto conn = inbound(1, "shop/db-0", "10.244.1.9:5432");
    live.opened(0, conn);
    live.request(0, conn, req(200, 1'000));
    clock.advance(std::chrono::seconds(30));
    live.request(0, conn, req(200, 1'000));
    live.closed(0, conn);
    auto at = [&](std::chrono::seconds later) {
      clock.advance(later);
      return live.snapshot();
    };
    auto s = at(std::chrono::seconds(0));
    CHECK(s.covered > std::chrono::seconds(54));
    CHECK(s.covered <= std::chrono::seconds(60));
    REQUIRE(find(s, "db-0"));
    CHECK(find(s, "db-0")->inbound.requests == 2);
    CHECK(find(s, "db-0")->inbound.tcp_open == 0);
    s = at(std::chrono::seconds(36));  // the first request is more than a minute old
    REQUIRE(find(s, "db-0"));
    CHECK(find(s, "db-0")->inbound.requests == 1);
    CHECK(find(s, "db-0")->inbound.tcp_opened == 0);
    s = at(std::chrono::seconds(30));  // nothing left: the entry goes
    CHECK(find(s, "db-0") == nullptr);
  }

  TEST_CASE("an open connection keeps its pod however long it is idle") {
    FakeClock clock;
    LiveStats live({.workers = 1}, &index(), clock.fn());
    auto conn = inbound(7, "shop/db-0", "10.244.1.9:5432");
    live.opened(0, conn);
    clock.advance(std::chrono::minutes(10));
    auto s = live.snapshot();
    REQUIRE(find(s, "db-0"));
    CHECK(find(s, "db-0")->inbound.tcp_open == 1);
    CHECK(find(s, "db-0")->inbound.tcp_opened == 0);  // opened long ago
    live.request(0, conn, req(200, 10));              // still attributed
    CHECK(find(live.snapshot(), "db-0")->inbound.requests == 1);
  }

  TEST_CASE("a same-node handoff counts for both pods: outbound and inbound") {
    FakeClock clock;
    LiveStats live({.workers = 1}, &index(), clock.fn());
    ConnectionRecord r;
    r.id = 3;
    r.direction = Direction::kOutbound;
    r.path = Path::kLocalHandoff;
    r.pod = "shop/web-5d4f-bbbbb";
    r.source = "10.244.1.6:50000";
    r.destination = "10.244.1.9:5432";
    live.opened(0, r);
    live.request(0, r, req(200, 100));
    auto s = live.snapshot();
    REQUIRE(find(s, "web-5d4f-bbbbb"));
    REQUIRE(find(s, "db-0"));
    CHECK(find(s, "web-5d4f-bbbbb")->outbound.requests == 1);
    CHECK(find(s, "web-5d4f-bbbbb")->inbound.requests == 0);
    CHECK(find(s, "db-0")->inbound.requests == 1);
    CHECK(find(s, "db-0")->inbound.tcp_open == 1);
  }

  TEST_CASE("beyond the pod cap new pods are not counted, and counted as dropped") {
    FakeClock clock;
    LiveStats live({.workers = 1, .max_pods = 1}, &index(), clock.fn());
    live.opened(0, inbound(1, "shop/db-0", "10.244.1.9:5432"));
    live.opened(0, inbound(2, "shop/web-5d4f-aaaaa", "10.244.1.5:8080"));
    CHECK(live.podsDropped() == 1);
    live.request(0, inbound(2, "", ""), req(200, 1));  // no entry: ignored, no crash
    live.closed(0, inbound(2, "", ""));
    CHECK(live.snapshot().pods.size() == 1);
  }

  TEST_CASE("workers record concurrently while a reader merges") {
    LiveStats live({.workers = 4}, &index());
    std::vector<std::thread> threads;
    for (unsigned w = 0; w < 4; ++w)
      threads.emplace_back([&live, w] {
        for (uint64_t i = 0; i < 2000; ++i) {
          auto c = inbound(w * 100000 + i, "shop/web-5d4f-aaaaa", "10.244.1.5:8080");
          live.opened(w, c);
          live.request(w, c, req(i % 4 == 0 ? 500 : 200, 1000));
          live.closed(w, c);
        }
      });
    for (int i = 0; i < 50; ++i) (void)live.snapshot();
    for (auto& t : threads) t.join();
    auto s = live.snapshot();
    REQUIRE(find(s, "web-5d4f-aaaaa"));
    CHECK(find(s, "web-5d4f-aaaaa")->inbound.requests == 8000);
    CHECK(find(s, "web-5d4f-aaaaa")->inbound.successes == 6000);
    CHECK(find(s, "web-5d4f-aaaaa")->inbound.tcp_opened == 8000);
    CHECK(find(s, "web-5d4f-aaaaa")->inbound.tcp_open == 0);
  }
}

TEST_SUITE("stat_table") {
  TEST_CASE("rows per workload, pod and namespace - MESHED counts this node's pods") {
    FakeClock clock;
    LiveStats live({.workers = 1}, &index(), clock.fn());
    live.opened(0, inbound(1, "shop/web-5d4f-aaaaa", "10.244.1.5:8080"));
    live.opened(0, inbound(2, "shop/web-5d4f-bbbbb", "10.244.1.6:8080"));
    for (int i = 0; i < 3; ++i) live.request(0, inbound(1, "", ""), req(200, 2000));
    live.request(0, inbound(2, "", ""), req(500, 2000));
    clock.advance(std::chrono::seconds(30));
    std::vector<LocalPod> pods = {{"shop", "web-5d4f-aaaaa", "web", true},
                                  {"shop", "web-5d4f-bbbbb", "web", true},
                                  {"shop", "db-0", "db", false},
                                  {"other", "tool", "tool", true}};
    auto snap = live.snapshot();

    auto deploy = statRows(snap, pods, Granularity::kWorkload);
    REQUIRE(deploy.size() == 3);  // other/tool, shop/db, shop/web
    CHECK(deploy[2].name == "web");
    CHECK(deploy[2].pods_enrolled == 2);
    CHECK(deploy[2].pods_known == 2);
    CHECK(deploy[2].inbound.requests == 4);
    CHECK(deploy[2].inbound.successes == 3);
    CHECK(deploy[2].inbound.tcp_open == 2);
    CHECK(deploy[1].name == "db");
    CHECK(deploy[1].pods_enrolled == 0);
    CHECK(deploy[1].pods_known == 1);

    auto byPod = statRows(snap, pods, Granularity::kPod);
    CHECK(byPod.size() == 4);
    auto ns = statRows(snap, pods, Granularity::kNamespace);
    REQUIRE(ns.size() == 2);
    CHECK(ns[1].name == "shop");
    CHECK(ns[1].namespace_.empty());
    CHECK(ns[1].pods_enrolled == 2);
    CHECK(ns[1].pods_known == 3);

    auto j = statJson(snap, pods);
    CHECK(j["window_seconds"] == 60.0);
    auto web = j["deploy"][2];
    CHECK(web["name"] == "web");
    CHECK(web["inbound"]["requests"] == 4);
    CHECK(web["inbound"]["success_rate"].get<double>() == doctest::Approx(0.75));
    CHECK(web["inbound"]["rps"].get<double>() == doctest::Approx(4.0 / 30));
    CHECK(web["inbound"]["latency_ms_p50"].get<double>() == doctest::Approx(2.0).epsilon(0.25));
    CHECK(web["outbound"]["success_rate"].is_null());  // no requests: no rate, not 0%
    CHECK(web["outbound"]["latency_ms_p99"].is_null());
    CHECK(j["ns"][0]["name"] == "other");
    CHECK_FALSE(j["ns"][0].contains("namespace"));
  }
}

TEST_SUITE("live_stat_endpoint") {
  TEST_CASE("the admin API serves /live/stat next to its own documents") {
    LiveStats live({.workers = 1}, &index());
    live.opened(0, inbound(1, "shop/db-0", "10.244.1.9:5432"));
    live.request(0, inbound(1, "", ""), req(200, 3000));
    agent::admin::Sources src;
    src.config_dump = [] { return nlohmann::json::object(); };
    src.connections = src.stats = src.certs = src.config_dump;
    src.not_ready_reason = [] { return std::string(); };
    src.routes["/live/stat"] = [&] {
      return agent::admin::Response{
          200, "application/json",
          statJson(live.snapshot(), {{"shop", "db-0", "db", true}}).dump()};
    };
    int port = test::freePort();
    auto server = agent::admin::Server::create("127.0.0.1:" + std::to_string(port), src);
    REQUIRE(server.has_value());
    std::string r = test::httpGet(port, "/live/stat?ignored=1");
    CHECK(r.find("200 OK") != std::string::npos);
    auto body = nlohmann::json::parse(r.substr(r.find("\r\n\r\n") + 4));
    REQUIRE(body["deploy"].size() == 1);
    CHECK(body["deploy"][0]["name"] == "db");
    CHECK(body["deploy"][0]["pods_enrolled"] == 1);
    CHECK(body["deploy"][0]["inbound"]["requests"] == 1);
    CHECK(test::httpGet(port, "/healthz").find("200 OK") != std::string::npos);
    CHECK(test::httpGet(port, "/live/tap").find("404") != std::string::npos);  // not wired here
  }
}
