#include "agent/telemetry/http_metrics.h"

#include <doctest/doctest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "telemetry_scrape.h"

using namespace sluice;
using namespace sluice::agent::telemetry;
using namespace sluice::agent::telemetry::test_scrape;

namespace {

ztunnel::RequestRecord httpRequest(int status, int64_t duration_us, uint64_t req_bytes = 0,
                                   uint64_t resp_bytes = 0) {
  ztunnel::RequestRecord r;
  r.protocol = ztunnel::AppProtocol::kHttp1;
  r.method = "GET";
  r.path = "/";
  r.status = status;
  r.duration_us = duration_us;
  r.request_bytes = req_bytes;
  r.response_bytes = resp_bytes;
  return r;
}

std::vector<Sample> scrapeHttp(HttpMetrics& m) {
  TextWriter w;
  m.write(w);
  return parse(w.take());
}

}  // namespace

// Istio's HTTP metrics (agent/telemetry/http_metrics.cc).
TEST_SUITE("telemetry/http") {
  TEST_CASE("histogram boundaries are Envoy's defaults, in Istio's le spelling") {
    CHECK(kEnvoyBuckets.size() == 19);
    CHECK(kEnvoyBuckets.front() == 0.5);
    CHECK(kEnvoyBuckets.back() == 3600000);
    CHECK(bucketOf(0) == 0);
    CHECK(bucketOf(0.5) == 0);
    CHECK(bucketOf(0.6) == 1);
    CHECK(bucketOf(1000) == 9);
    CHECK(bucketOf(3600000) == 18);
    CHECK(bucketOf(3600001) == 19);  // +Inf
    TextWriter w;
    std::vector<uint64_t> counts(kEnvoyBuckets.size() + 1, 0);
    counts[0] = 2;
    counts[17] = 1;
    counts[19] = 1;
    w.histogram("h", "{a=\"b\"}", kEnvoyBuckets, counts, 12.5);
    std::string text = w.take();
    CHECK(text.find("h_bucket{a=\"b\",le=\"0.5\"} 2\n") != std::string::npos);
    CHECK(text.find("h_bucket{a=\"b\",le=\"600000\"} 2\n") != std::string::npos);
    CHECK(text.find("h_bucket{a=\"b\",le=\"1.8e+06\"} 3\n") != std::string::npos);
    CHECK(text.find("h_bucket{a=\"b\",le=\"3.6e+06\"} 3\n") != std::string::npos);
    CHECK(text.find("h_bucket{a=\"b\",le=\"+Inf\"} 4\n") != std::string::npos);
    CHECK(text.find("h_sum{a=\"b\"} 12.5\n") != std::string::npos);
    CHECK(text.find("h_count{a=\"b\"} 4\n") != std::string::npos);
    TextWriter bare;
    bare.histogram("x", "", kEnvoyBuckets, counts, 0);
    CHECK(bare.take().starts_with("x_bucket{le=\"0.5\"} 2\n"));
  }

  TEST_CASE("requests by response code on both reporters, with the TCP labels") {
    TcpMetrics tcp({}, &meshIndex());
    HttpMetrics m({.workers = 2}, tcp);
    auto out = outboundHbone(1);
    auto in = inboundHbone(2);
    for (int i = 0; i < 5; ++i) m.request(i % 2, out, httpRequest(i < 3 ? 200 : 503, 2000, 10, 5));
    m.request(0, in, httpRequest(200, 700));
    auto all = scrapeHttp(m);
    CHECK(value(all, "istio_requests_total", {{"reporter", "source"}, {"response_code", "200"}}) ==
          3);
    CHECK(value(all, "istio_requests_total", {{"reporter", "source"}, {"response_code", "503"}}) ==
          2);
    CHECK(value(all, "istio_requests_total",
                {{"reporter", "destination"}, {"response_code", "200"}}) == 1);
    auto s = find(all, "istio_requests_total", {{"reporter", "source"}, {"response_code", "200"}});
    CHECK(s[0].labels["request_protocol"] == "http");
    CHECK(s[0].labels["grpc_response_status"] == "");
    CHECK(s[0].labels["source_workload"] == "client");
    CHECK(s[0].labels["destination_service"] == "db.shop.svc.cluster.local");
    CHECK(s[0].labels["connection_security_policy"] == "mutual_tls");
    CHECK(s[0].labels["response_flags"] == "-");
    // 2 ms falls in le=5 (not le=1); sums in milliseconds and bytes.
    std::map<std::string, std::string> src200 = {{"reporter", "source"}, {"response_code", "200"}};
    auto le = [&](const char* name, const char* bound) {
      auto want = src200;
      want["le"] = bound;
      return value(all, name, want);
    };
    CHECK(le("istio_request_duration_milliseconds_bucket", "1") == 0);
    CHECK(le("istio_request_duration_milliseconds_bucket", "5") == 3);
    CHECK(le("istio_request_duration_milliseconds_bucket", "+Inf") == 3);
    CHECK(find(all, "istio_request_duration_milliseconds_sum", src200)[0].value == "6");
    CHECK(value(all, "istio_request_duration_milliseconds_count", src200) == 3);
    CHECK(le("istio_request_bytes_bucket", "10") == 3);
    CHECK(le("istio_request_bytes_bucket", "5") == 0);
    CHECK(value(all, "istio_request_bytes_sum", src200) == 30);
    CHECK(value(all, "istio_response_bytes_sum", src200) == 15);
  }

  TEST_CASE("a request without a response carries how its connection failed") {
    TcpMetrics tcp({}, &meshIndex());
    HttpMetrics m({.workers = 1}, tcp);
    auto denied = outboundHbone(1);
    denied.reason = ztunnel::CloseReason::kRefused;  // the destination answered the CONNECT 403
    denied.reason_detail = "403";
    m.request(0, denied, httpRequest(0, 900));
    auto fine = outboundHbone(2);  // closed without a failure: no flag
    m.request(0, fine, httpRequest(0, 900));
    m.request(0, denied, httpRequest(200, 900));  // a response: never a flag
    auto all = scrapeHttp(m);
    CHECK(value(all, "istio_requests_total",
                {{"response_code", "0"}, {"response_flags", "DENY"}}) == 1);
    CHECK(value(all, "istio_requests_total", {{"response_code", "0"}, {"response_flags", "-"}}) ==
          1);
    CHECK(value(all, "istio_requests_total", {{"response_code", "200"}, {"response_flags", "-"}}) ==
          1);
  }

  TEST_CASE("HTTP/1.1 and HTTP/2 requests with the same labels count in one series") {
    // request_protocol is "http" for both: two series would print the same
    // label set twice, and Prometheus keeps only one of them.
    TcpMetrics tcp({}, &meshIndex());
    HttpMetrics m({.workers = 2}, tcp);
    auto h2 = httpRequest(200, 100);
    h2.protocol = ztunnel::AppProtocol::kHttp2;
    for (int i = 0; i < 4; ++i) m.request(0, outboundHbone(1), httpRequest(200, 100));
    for (int i = 0; i < 5; ++i) m.request(1, outboundHbone(2), h2);
    auto all = scrapeHttp(m);
    auto s = find(all, "istio_requests_total", {{"reporter", "source"}, {"response_code", "200"}});
    REQUIRE(s.size() == 1);
    CHECK(s[0].value == "9");
    CHECK(s[0].labels["request_protocol"] == "http");
    CHECK(find(all, "istio_request_duration_milliseconds_count").size() == 1);
  }

  TEST_CASE("gRPC: request_protocol grpc and grpc_response_status") {
    TcpMetrics tcp({}, &meshIndex());
    HttpMetrics m({}, tcp);
    auto r = httpRequest(200, 100);
    r.protocol = ztunnel::AppProtocol::kGrpc;
    r.grpc_status = 14;
    m.request(0, outboundHbone(1), r);
    auto all = scrapeHttp(m);
    auto s = find(all, "istio_requests_total");
    REQUIRE(s.size() == 1);
    CHECK(s[0].labels["request_protocol"] == "grpc");
    CHECK(s[0].labels["grpc_response_status"] == "14");
  }

  TEST_CASE(
      "a connection keeps 16 outcomes' series - requests with more are counted all the same") {
    // A long-lived connection meets many statuses over its life: its list of
    // series stays short (a search per request), and nothing goes uncounted.
    FakeClock clock;
    TcpMetrics tcp({}, &meshIndex());
    HttpMetrics m({.workers = 1, .idle = std::chrono::minutes(10)}, tcp, clock.fn());
    auto c = outboundHbone(1);
    const int kMax = static_cast<int>(HttpMetrics::kMaxOutcomesPerConnection);
    for (int i = 0; i < kMax + 10; ++i) m.request(0, c, httpRequest(200 + i, 10));
    m.request(0, c, httpRequest(200, 10));
    m.request(0, c, httpRequest(200 + kMax + 5, 10));  // beyond the kept ones, again
    auto all = scrapeHttp(m);
    CHECK(find(all, "istio_requests_total").size() == static_cast<size_t>(kMax + 10));
    CHECK(value(all, "istio_requests_total", {{"response_code", "200"}}) == 2);
    CHECK(value(all, "istio_requests_total", {{"response_code", std::to_string(200 + kMax + 5)}}) ==
          2);
    CHECK(m.seriesDropped() == 0);
    // The connection holds only the kept ones: the others go idle while it is open.
    clock.t += std::chrono::minutes(11);
    scrapeHttp(m);
    CHECK(m.seriesCount() == HttpMetrics::kMaxOutcomesPerConnection);
    m.closed(0, c);
    scrapeHttp(m);
    CHECK(m.seriesCount() == 0);
  }

  TEST_CASE("a series the cap refused is asked for again, once room is made") {
    FakeClock clock;
    TcpMetrics tcp({}, &meshIndex());
    HttpMetrics m({.workers = 1, .max_series = 1, .idle = std::chrono::minutes(10)}, tcp,
                  clock.fn());
    auto first = outboundHbone(1), second = outboundHbone(2);
    m.request(0, first, httpRequest(200, 10));
    m.request(0, second, httpRequest(503, 10));  // at the cap: dropped
    CHECK(m.seriesDropped() == 1);
    m.closed(0, first);
    clock.t += std::chrono::minutes(11);  // the 200 series idle and unheld
    m.request(0, second, httpRequest(503, 10));
    CHECK(m.seriesDropped() == 1);
    CHECK(value(scrapeHttp(m), "istio_requests_total", {{"response_code", "503"}}) == 1);
  }

  TEST_CASE("a same-node handoff reports both ends - closed connections let series go idle") {
    FakeClock clock;
    TcpMetrics tcp({}, &meshIndex());
    HttpMetrics m({.workers = 1, .max_series = 2, .idle = std::chrono::minutes(10)}, tcp,
                  clock.fn());
    ConnectionRecord h = outboundHbone(1);
    h.path = Path::kLocalHandoff;
    m.request(0, h, httpRequest(200, 10));
    CHECK(m.seriesCount() == 2);
    // At the cap: a new outcome is dropped (counted) while the others are held.
    m.request(0, h, httpRequest(404, 10));
    CHECK(m.seriesDropped() == 2);
    clock.t += std::chrono::minutes(11);
    CHECK(m.seriesCount() == 2);  // still held by the open connection
    scrapeHttp(m);
    CHECK(m.seriesCount() == 2);
    m.closed(0, h);
    scrapeHttp(m);
    CHECK(m.seriesCount() == 0);
  }

  TEST_CASE(
      "a series evicted while a worker caches it: the next connection counts into a new one") {
    FakeClock clock;
    TcpMetrics tcp({}, &meshIndex());
    HttpMetrics m({.workers = 1, .idle = std::chrono::minutes(10)}, tcp, clock.fn());
    auto first = outboundHbone(1);
    m.request(0, first, httpRequest(200, 10));
    m.closed(0, first);
    clock.t += std::chrono::minutes(11);
    scrapeHttp(m);  // evicts it; the worker's cache still points at it
    CHECK(m.seriesCount() == 0);
    auto second = outboundHbone(2);  // the same label set
    m.request(0, second, httpRequest(200, 10));
    m.request(0, second, httpRequest(200, 10));
    CHECK(m.seriesCount() == 1);
    CHECK(value(scrapeHttp(m), "istio_requests_total", {{"response_code", "200"}}) == 2);
    // Another outcome and the same one on a third connection: found again,
    // one series each.
    auto third = outboundHbone(3);
    m.request(0, third, httpRequest(200, 10));
    m.request(0, third, httpRequest(503, 10));
    auto all = scrapeHttp(m);
    CHECK(value(all, "istio_requests_total", {{"response_code", "200"}}) == 3);
    CHECK(value(all, "istio_requests_total", {{"response_code", "503"}}) == 1);
    CHECK(m.seriesCount() == 2);
  }

  TEST_CASE("HTTP series evicted under the workers' feet: a held series keeps every count") {
    constexpr unsigned kWorkers = 3;
    constexpr uint64_t kConns = 3000;
    FakeClock clock;  // fixed: with idle 0 every unheld series is evictable at once
    TcpMetrics tcp({.workers = kWorkers}, &meshIndex());
    HttpMetrics m({.workers = kWorkers, .idle = std::chrono::milliseconds(0)}, tcp, clock.fn());
    std::vector<ConnectionRecord> long_lived;
    for (unsigned w = 0; w < kWorkers; ++w) {
      long_lived.push_back(outboundHbone((uint64_t{w} << 32) | 0xffffffff));
      m.request(w, long_lived.back(), httpRequest(200, 10));
    }
    std::atomic<bool> done{false};
    std::atomic<uint64_t> scrapes{0};
    std::thread scraper([&] {
      while (!done.load()) {
        scrapeHttp(m);  // evicts every unheld series
        scrapes++;
      }
    });
    std::vector<std::thread> workers;
    std::vector<uint64_t> iterations(kWorkers), db_ok(kWorkers);
    for (unsigned w = 0; w < kWorkers; ++w)
      workers.emplace_back([&, w] {
        uint64_t i = 1;
        for (; i <= kConns || scrapes.load() < 20; ++i) {
          ConnectionRecord r = outboundHbone((uint64_t{w} << 32) | i);
          r.destination_service = i % 2 ? "shop/db" : "shop/t" + std::to_string(w);
          m.request(w, r, httpRequest(i % 3 ? 200 : 503, 10));
          m.closed(w, r);
          db_ok[w] += i % 2 == 1 && i % 3 != 0;
          m.request(w, long_lived[w], httpRequest(200, 10));
        }
        iterations[w] = i - 1;
      });
    for (auto& t : workers) t.join();
    done = true;
    scraper.join();
    // The long-lived connections' series (which the churn's "db" connections
    // answered 200 share) was held throughout: every count is there.
    uint64_t want = 0;
    for (unsigned w = 0; w < kWorkers; ++w) want += 1 + iterations[w] + db_ok[w];
    CHECK(value(scrapeHttp(m), "istio_requests_total",
                {{"destination_service_name", "db"}, {"response_code", "200"}}) == want);
    for (unsigned w = 0; w < kWorkers; ++w) m.closed(w, long_lived[w]);
    scrapeHttp(m);
    CHECK(m.seriesCount() == 0);
  }

  TEST_CASE("the fan-out hands every call to each observer") {
    TcpMetrics tcp({}, &meshIndex());
    HttpMetrics http({}, tcp);
    ObserverFanout both({&tcp, &http});
    auto r = outboundHbone(7);
    both.opened(0, r);
    both.request(0, r, httpRequest(200, 10));
    both.closed(0, r);
    CHECK(tcp.seriesCount() == 1);
    CHECK(http.seriesCount() == 1);
  }
}
