#include "agent/telemetry/tcp_metrics.h"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "telemetry_scrape.h"

using namespace sluice;
using namespace sluice::agent::telemetry;
using namespace sluice::agent::telemetry::test_scrape;

// Istio's TCP metrics (agent/telemetry/tcp_metrics.cc).
TEST_SUITE("telemetry") {
  TEST_CASE("outbound over HBONE: reporter source, principals, mutual_tls, service FQDN") {
    TcpMetrics m({}, &meshIndex());
    m.opened(0, outboundHbone(1));
    auto all = scrape(m);
    auto s = find(all, "istio_tcp_connections_opened_total");
    REQUIRE(s.size() == 1);
    std::map<std::string, std::string> want = {
        {"reporter", "source"},
        {"source_workload", "client"},
        {"source_canonical_service", "web"},
        {"source_canonical_revision", "v1"},
        {"source_workload_namespace", "shop"},
        {"source_principal", kWeb},
        {"source_app", "web"},
        {"source_version", "v1"},
        {"source_cluster", "Kubernetes"},
        {"destination_service", "db.shop.svc.cluster.local"},
        {"destination_service_namespace", "shop"},
        {"destination_service_name", "db"},
        {"destination_workload", "db"},
        {"destination_canonical_service", "database"},
        {"destination_canonical_revision", "14"},
        {"destination_workload_namespace", "shop"},
        {"destination_principal", kApi},
        {"destination_app", "database"},
        {"destination_version", "14"},
        {"destination_cluster", "Kubernetes"},
        {"request_protocol", "tcp"},
        {"response_flags", "-"},
        {"connection_security_policy", "mutual_tls"},
    };
    CHECK(s[0].labels == want);
    CHECK(s[0].value == "1");
    // Labels in Istio's order.
    auto names = TcpMetrics::labelNames();
    CHECK(names.size() == want.size());
    CHECK(names.front() == "reporter");
    CHECK(names.back() == "connection_security_policy");
  }

  TEST_CASE("inbound: reporter destination - plaintext is unknown security, unknown principal") {
    TcpMetrics m({}, &meshIndex());
    m.opened(0, inboundHbone(1));
    ConnectionRecord plain = inboundHbone(2);
    plain.path = Path::kInbound;
    plain.mutual_tls = false;
    plain.source = "192.0.2.9:5555";  // outside the mesh, unknown
    plain.source_principal.clear();
    m.opened(0, plain);
    auto all = scrape(m);
    CHECK(value(all, "istio_tcp_connections_opened_total",
                {{"reporter", "destination"},
                 {"source_workload", "client"},
                 {"source_principal", kWeb},
                 {"destination_workload", "db"},
                 {"destination_principal", kApi},
                 {"destination_service", "unknown"},
                 {"connection_security_policy", "mutual_tls"}}) == 1);
    CHECK(value(all, "istio_tcp_connections_opened_total",
                {{"reporter", "destination"},
                 {"source_workload", "unknown"},
                 {"source_workload_namespace", "unknown"},
                 {"source_cluster", "unknown"},
                 {"source_principal", "unknown"},
                 {"destination_workload", "db"},
                 {"connection_security_policy", "unknown"}}) == 1);
    CHECK(find(all, "istio_tcp_connections_opened_total", {{"reporter", "source"}}).empty());
  }

  TEST_CASE("each reporter names the Service its record carries for it") {
    // The guess itself is the engine's (MeshDirectory::endpointService,
    // tested with the discovery view), made when the record opens.
    TcpMetrics m({}, &meshIndex());
    ConnectionRecord inbound = inboundHbone(1);
    inbound.destination_service = "shop/db-primary";
    m.opened(0, inbound);
    m.opened(0, inboundHbone(2));                 // no Service forwards to where it arrived
    ConnectionRecord via_vip = outboundHbone(3);  // the source side knows what was dialled
    via_vip.destination_service = "shop/db";
    m.opened(0, via_vip);
    // A same-node handoff dialled by address: one record, both reporters;
    // only the destination names the Service its endpoint is of.
    ConnectionRecord handoff = outboundHbone(4);
    handoff.path = Path::kLocalHandoff;
    handoff.destination_service.clear();  // dialled by address
    handoff.mutual_tls = false;
    handoff.inbound_service = "shop/db-replicas";
    m.opened(0, handoff);
    auto all = scrape(m);
    CHECK(value(all, "istio_tcp_connections_opened_total",
                {{"reporter", "destination"},
                 {"destination_service", "db-primary.shop.svc.cluster.local"},
                 {"destination_service_namespace", "shop"},
                 {"destination_service_name", "db-primary"},
                 {"destination_workload", "db"}}) == 1);
    CHECK(value(all, "istio_tcp_connections_opened_total",
                {{"reporter", "destination"},
                 {"destination_service", "unknown"},
                 {"destination_service_name", "unknown"}}) == 1);
    CHECK(value(all, "istio_tcp_connections_opened_total",
                {{"reporter", "source"}, {"destination_service_name", "db"}}) == 1);
    CHECK(value(all, "istio_tcp_connections_opened_total",
                {{"reporter", "destination"},
                 {"destination_service", "db-replicas.shop.svc.cluster.local"},
                 {"destination_service_namespace", "shop"},
                 {"destination_service_name", "db-replicas"},
                 {"connection_security_policy", "unknown"}}) == 1);
    CHECK(value(all, "istio_tcp_connections_opened_total",
                {{"reporter", "source"},
                 {"destination_service", "unknown"},
                 {"connection_security_policy", "unknown"}}) == 1);
  }

  TEST_CASE("a same-node handoff is reported by both ends - a pod absent from the view is named") {
    TcpMetrics m({.workers = 2}, nullptr);  // no view at all
    ConnectionRecord r;
    r.id = 7;
    r.direction = Direction::kOutbound;
    r.path = Path::kLocalHandoff;
    r.pod = "shop/client";
    r.source = "10.244.1.5:40000";
    r.destination = "10.244.1.6:8080";
    r.source_principal = kWeb;
    r.destination_principal = kApi;
    m.opened(1, r);
    m.transferred(1, r, 10, 20);
    auto all = scrape(m);
    for (const char* reporter : {"source", "destination"}) {
      std::map<std::string, std::string> want = {{"reporter", reporter},
                                                 {"source_workload", "client"},
                                                 {"source_workload_namespace", "shop"},
                                                 {"source_canonical_revision", "latest"},
                                                 {"source_principal", kWeb},
                                                 {"destination_principal", kApi},
                                                 {"destination_workload", "unknown"},
                                                 {"connection_security_policy", "unknown"}};
      CHECK(value(all, "istio_tcp_connections_opened_total", want) == 1);
      CHECK(value(all, "istio_tcp_received_bytes_total", want) == 10);
      CHECK(value(all, "istio_tcp_sent_bytes_total", want) == 20);
    }
  }

  TEST_CASE("bytes advance while the connection is open - request bytes are 'received'") {
    TcpMetrics m({.workers = 2}, &meshIndex());
    auto r = outboundHbone(1);
    m.opened(1, r);
    m.transferred(1, r, 100, 0);  // client -> server
    m.transferred(1, r, 0, 7000);
    auto all = scrape(m);
    CHECK(value(all, "istio_tcp_received_bytes_total") == 100);
    CHECK(value(all, "istio_tcp_sent_bytes_total") == 7000);
    CHECK(value(all, "istio_tcp_connections_closed_total") == 0);
    m.transferred(1, r, 1, 1);
    r.reason = CloseReason::kEof;
    m.closed(1, r);
    all = scrape(m);
    CHECK(value(all, "istio_tcp_received_bytes_total") == 101);
    CHECK(value(all, "istio_tcp_sent_bytes_total") == 7001);
    CHECK(value(all, "istio_tcp_connections_closed_total") == 1);
    CHECK(find(all, "istio_tcp_connections_failed_total").empty());
    // Unknown connections (opened before the observer, or on a bad worker) are ignored.
    m.transferred(0, outboundHbone(99), 5, 5);
    m.closed(5, outboundHbone(99));
  }

  TEST_CASE("one series per label set - workers merge at scrape time") {
    TcpMetrics m({.workers = 3}, &meshIndex());
    for (unsigned w = 0; w < 3; ++w) {
      auto r = outboundHbone(10 + w);
      m.opened(w, r);
      m.transferred(w, r, w + 1, 10 * (w + 1));
    }
    auto all = scrape(m);
    CHECK(value(all, "istio_tcp_connections_opened_total") == 3);
    CHECK(value(all, "istio_tcp_received_bytes_total") == 6);
    CHECK(value(all, "istio_tcp_sent_bytes_total") == 60);
    CHECK(m.seriesCount() == 1);
  }

  TEST_CASE("denied and failed connections: opened under '-', closed and failed under the flags") {
    TcpMetrics m({}, &meshIndex());
    auto denied = inboundHbone(1);
    m.opened(0, denied);
    denied.reason = CloseReason::kDenied;
    m.closed(0, denied);
    auto refused = outboundHbone(2);
    m.opened(0, refused);
    refused.reason = CloseReason::kConnectError;
    refused.reason_detail = "Connection refused";
    m.closed(0, refused);
    auto all = scrape(m);
    CHECK(value(all, "istio_tcp_connections_opened_total",
                {{"reporter", "destination"}, {"response_flags", "-"}}) == 1);
    CHECK(value(all, "istio_tcp_connections_closed_total",
                {{"reporter", "destination"}, {"response_flags", "DENY"}}) == 1);
    CHECK(value(all, "istio_tcp_connections_failed_total",
                {{"reporter", "destination"}, {"response_flags", "DENY"}}) == 1);
    CHECK(value(all, "istio_tcp_connections_failed_total",
                {{"reporter", "source"}, {"response_flags", "CONNECT"}}) == 1);
    CHECK(value(all, "istio_tcp_connections_closed_total",
                {{"reporter", "source"}, {"response_flags", "-"}}) == 0);

    ConnectionRecord r;
    r.reason = CloseReason::kRefused;
    r.reason_detail = "401";  // what a denying destination answers (hbone::Server)
    CHECK(std::string(responseFlags(r)) == "DENY");
    r.reason_detail = "403";
    CHECK(std::string(responseFlags(r)) == "DENY");
    r.reason_detail = "503";
    CHECK(std::string(responseFlags(r)) == "CONNECT");
    r.reason = CloseReason::kNoTunnel;
    r.reason_detail = "tls_handshake_failed";
    CHECK(std::string(responseFlags(r)) == "TLS_FAILURE");
    r.reason = CloseReason::kConnectTimeout;
    CHECK(std::string(responseFlags(r)) == "CONNECT");
    for (auto ok : {CloseReason::kEof, CloseReason::kReset, CloseReason::kPodRemoved,
                    CloseReason::kStreamReset}) {
      r.reason = ok;
      CHECK(std::string(responseFlags(r)) == "-");
    }
  }

  TEST_CASE("a connection handed over in an upgrade is opened once and closed once in all") {
    // The old agent opens it and hands it over (no close); the new one
    // adopts it (no open) and closes it. Summed over both processes' series
    // (Prometheus' increase across the restart), one open and one close.
    TcpMetrics old_agent({}, &meshIndex()), new_agent({}, &meshIndex());
    auto r = inboundHbone(1);
    old_agent.opened(0, r);
    r.reason = CloseReason::kHandedOver;
    old_agent.closed(0, r);
    auto adopted = inboundHbone(1);
    adopted.adopted = true;
    new_agent.opened(0, adopted);
    adopted.reason = CloseReason::kEof;
    new_agent.closed(0, adopted);
    auto count = [](TcpMetrics& m, const char* name) {
      return value(scrape(m), name, {{"reporter", "destination"}});
    };
    CHECK(count(old_agent, "istio_tcp_connections_opened_total") == 1);
    CHECK(count(old_agent, "istio_tcp_connections_closed_total") == 0);
    CHECK(count(new_agent, "istio_tcp_connections_opened_total") == 0);
    CHECK(count(new_agent, "istio_tcp_connections_closed_total") == 1);
  }

  TEST_CASE("idle series are dropped after the idle time, never while a connection is open") {
    FakeClock clock;
    TcpMetrics m({.workers = 1, .idle = std::chrono::minutes(10)}, &meshIndex(), clock.fn());
    auto open = outboundHbone(1);
    m.opened(0, open);
    auto done = inboundHbone(2);
    m.opened(0, done);
    done.reason = CloseReason::kEof;
    m.closed(0, done);
    CHECK(m.seriesCount() == 2);
    clock.t += std::chrono::minutes(9);
    m.evictIdle();
    CHECK(m.seriesCount() == 2);
    clock.t += std::chrono::minutes(2);
    auto all = scrape(m);  // a scrape evicts
    CHECK(m.seriesCount() == 1);
    CHECK(m.seriesEvicted() == 1);
    CHECK(value(all, "sluice_telemetry_series_evicted_total") == 1);
    CHECK(find(all, "istio_tcp_connections_opened_total", {{"reporter", "destination"}}).empty());
    // The long-lived connection keeps its series, and keeps counting.
    clock.t += std::chrono::hours(5);
    m.transferred(0, open, 3, 4);
    all = scrape(m);
    CHECK(value(all, "istio_tcp_received_bytes_total", {{"reporter", "source"}}) == 3);
    open.reason = CloseReason::kEof;
    m.closed(0, open);
    clock.t += std::chrono::minutes(10);
    m.evictIdle();
    CHECK(m.seriesCount() == 0);
  }

  TEST_CASE("series created between scrapes join the label order, evicted ones leave it") {
    FakeClock clock;
    TcpMetrics m({.workers = 1, .idle = std::chrono::minutes(10)}, &meshIndex(), clock.fn());
    auto opened = [&] {  // the istio_tcp_connections_opened_total lines, in page order
      TextWriter w;
      m.write(w);
      std::vector<std::string> lines;
      std::istringstream in(w.take());
      for (std::string line; std::getline(in, line);)
        if (line.starts_with("istio_tcp_connections_opened_total{")) lines.push_back(line);
      return lines;
    };
    uint64_t id = 1;
    auto connect = [&](const char* service) {
      auto r = outboundHbone(id++);
      r.destination_service = service;
      r.reason = CloseReason::kEof;
      m.opened(0, r);
      m.closed(0, r);
    };
    connect("shop/m");
    CHECK(opened().size() == 1);
    for (const char* s : {"shop/z", "shop/a", "shop/q"}) connect(s);
    clock.t += std::chrono::minutes(5);
    connect("shop/b");  // newer than the others: outlives them below
    auto lines = opened();
    REQUIRE(lines.size() == 5);
    CHECK(std::is_sorted(lines.begin(), lines.end()));
    clock.t += std::chrono::minutes(6);  // all but shop/b idle for 10 minutes
    connect("shop/c");
    lines = opened();
    REQUIRE(lines.size() == 2);
    CHECK(lines[0].find("destination_service_name=\"b\"") != std::string::npos);
    CHECK(lines[1].find("destination_service_name=\"c\"") != std::string::npos);
  }

  TEST_CASE("the series cap: new label sets are dropped and counted - idle ones make room") {
    FakeClock clock;
    TcpMetrics m({.workers = 1, .max_series = 2, .idle = std::chrono::minutes(10)}, &meshIndex(),
                 clock.fn());
    auto a = outboundHbone(1);
    auto b = inboundHbone(2);
    ConnectionRecord c = outboundHbone(3);
    c.destination_service = "shop/other";
    m.opened(0, a);
    m.opened(0, b);
    m.opened(0, c);  // a third label set
    m.transferred(0, c, 5, 5);
    CHECK(m.seriesCount() == 2);
    CHECK(m.seriesDropped() == 1);
    auto all = scrape(m);
    CHECK(value(all, "sluice_telemetry_series_dropped_total") == 1);
    CHECK(value(all, "sluice_telemetry_series") == 2);
    CHECK(find(all, "istio_tcp_connections_opened_total", {{"destination_service_name", "other"}})
              .empty());
    // Once `b` has been idle long enough, a new label set takes its place.
    b.reason = CloseReason::kEof;
    m.closed(0, b);
    m.closed(0, c);  // was never counted: ignored
    clock.t += std::chrono::minutes(11);
    ConnectionRecord d = outboundHbone(4);
    d.destination_service = "shop/other";
    m.opened(0, d);
    CHECK(m.seriesDropped() == 1);
    all = scrape(m);
    CHECK(value(all, "istio_tcp_connections_opened_total",
                {{"destination_service_name", "other"}}) == 1);
  }

  // The sum of `name` over every series whose labels include `want`.
  uint64_t sum(const std::vector<Sample>& all, const std::string& name,
               const std::map<std::string, std::string>& want = {}) {
    uint64_t total = 0;
    for (const auto& s : find(all, name, want)) total += std::stoull(s.value);
    return total;
  }

  // Worker `w`'s i-th connection: half on a label set all workers share, half
  // on the worker's own; every 10th inbound, every 7th failing.
  ConnectionRecord churn(unsigned w, uint64_t i) {
    ConnectionRecord r = i % 10 == 0 ? inboundHbone(0) : outboundHbone(0);
    r.id = (uint64_t{w} << 32) | i;
    if (i % 10 != 0) r.destination_service = i % 2 ? "shop/db" : "shop/t" + std::to_string(w);
    if (i % 7 == 0) r.reason = CloseReason::kConnectError;
    return r;
  }

  TEST_CASE("workers opening and closing on shared and own series while scraping: exact counts") {
    constexpr unsigned kWorkers = 4;
    constexpr uint64_t kConns = 4000;
    TcpMetrics m({.workers = kWorkers}, &meshIndex());
    std::atomic<bool> done{false};
    std::atomic<int> scrapes{0};
    std::thread scraper([&] {
      while (!done.load()) {
        TextWriter w;
        m.write(w);
        scrapes.fetch_add(1);
      }
    });
    std::vector<std::thread> workers;
    std::vector<uint64_t> conns(kWorkers);  // by worker: at least kConns, and past scrapes
    for (unsigned w = 0; w < kWorkers; ++w)
      workers.emplace_back([&, w] {
        uint64_t i = 0;
        for (; i < kConns || scrapes.load() < 2; ++i) {
          auto r = churn(w, i);
          m.opened(w, r);
          m.transferred(w, r, 1, 2);
          m.closed(w, r);
        }
        conns[w] = i;
      });
    for (auto& t : workers) t.join();
    done = true;
    scraper.join();
    uint64_t n = 0, failing = 0, shared = 0, own3 = 0;
    for (unsigned w = 0; w < kWorkers; ++w)
      for (uint64_t i = 0; i < conns[w]; ++i) {
        ++n;
        failing += i % 7 == 0;
        shared += i % 2 == 1;  // odd i: the label set all workers share
        own3 += w == 3 && i % 2 == 0 && i % 10 != 0;
      }
    auto all = scrape(m);
    CHECK(sum(all, "istio_tcp_connections_opened_total") == n);
    CHECK(sum(all, "istio_tcp_connections_closed_total") == n);
    CHECK(sum(all, "istio_tcp_connections_failed_total") == failing);
    CHECK(sum(all, "istio_tcp_received_bytes_total") == n);
    CHECK(sum(all, "istio_tcp_sent_bytes_total") == 2 * n);
    CHECK(sum(all, "istio_tcp_connections_opened_total", {{"destination_service_name", "db"}}) ==
          shared);
    CHECK(sum(all, "istio_tcp_connections_opened_total", {{"destination_service_name", "t3"}}) ==
          own3);
    // Label sets: shared and 4 own, by "-" and CONNECT; inbound, by "-" and CONNECT.
    CHECK(m.seriesCount() == 2 * (1 + kWorkers) + 2);
  }

  TEST_CASE("series evicted under the workers' feet: a held series keeps every count") {
    constexpr unsigned kWorkers = 3;
    constexpr uint64_t kConns = 3000;
    FakeClock clock;  // fixed: with idle 0 every unheld series is evictable at once
    TcpMetrics m({.workers = kWorkers, .idle = std::chrono::milliseconds(0)}, &meshIndex(),
                 clock.fn());
    std::vector<ConnectionRecord> longLived;
    for (unsigned w = 0; w < kWorkers; ++w) {
      longLived.push_back(outboundHbone((uint64_t{w} << 32) | 0xffffffff));
      m.opened(w, longLived.back());
    }
    std::atomic<bool> done{false};
    std::thread scraper([&] {
      while (!done.load()) {
        m.evictIdle();
        TextWriter w;
        m.write(w);
      }
    });
    std::vector<std::thread> workers;
    std::vector<uint64_t> conns(kWorkers);  // by worker: at least kConns, and past evictions
    for (unsigned w = 0; w < kWorkers; ++w)
      workers.emplace_back([&, w] {
        uint64_t i = 1;
        for (; i <= kConns || m.seriesEvicted() < 10; ++i) {
          auto r = churn(w, i);
          m.opened(w, r);
          m.closed(w, r);
          m.transferred(w, longLived[w], 1, 3);
        }
        conns[w] = i - 1;
      });
    for (auto& t : workers) t.join();
    done = true;
    scraper.join();
    // The series the long-lived connections hold was never evicted: exact.
    uint64_t n = 0, shared = 0;
    for (unsigned w = 0; w < kWorkers; ++w)
      for (uint64_t i = 1; i <= conns[w]; ++i) {
        ++n;
        shared += i % 2 == 1 && i % 10 != 0;
      }
    auto all = scrape(m);
    std::map<std::string, std::string> held = {
        {"reporter", "source"}, {"destination_service_name", "db"}, {"response_flags", "-"}};
    CHECK(value(all, "istio_tcp_connections_opened_total", held) == kWorkers + shared);
    CHECK(value(all, "istio_tcp_received_bytes_total", held) == n);
    CHECK(value(all, "istio_tcp_sent_bytes_total", held) == 3 * n);
    // Nothing else holds a series: once the long-lived ones close, all go.
    for (unsigned w = 0; w < kWorkers; ++w) {
      longLived[w].reason = CloseReason::kEof;
      m.closed(w, longLived[w]);
    }
    m.evictIdle();
    CHECK(m.seriesCount() == 0);
    // And a label set seen before comes back as a new series.
    auto again = outboundHbone(1);
    m.opened(1, again);
    CHECK(value(scrape(m), "istio_tcp_connections_opened_total") == 1);
  }
}
