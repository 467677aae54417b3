#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "agent/telemetry/agent_metrics.h"
#include "agent/telemetry/exposition.h"
#include "agent/telemetry/http_metrics.h"
#include "agent/telemetry/node_health.h"
#include "agent/telemetry/tcp_metrics.h"
#include "agent/telemetry/workloads.h"
#include "sluice/common/addr.h"
#include "sluice/common/bpf_abi.h"
#include "support/local_http.h"

using namespace sluice;
using namespace sluice::agent::telemetry;
using ztunnel::CloseReason;
using ztunnel::ConnectionRecord;
using ztunnel::Direction;
using ztunnel::Path;

namespace {

constexpr const char* kWeb = "spiffe://cluster.local/ns/shop/sa/web";
constexpr const char* kApi = "spiffe://cluster.local/ns/shop/sa/api";

// A scrape, parsed back: every sample line as (name, labels, value).
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  std::string value;
};

std::vector<Sample> parse(const std::string& text) {
  std::vector<Sample> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    Sample s;
    size_t brace = line.find('{');
    size_t space = line.rfind(' ');
    REQUIRE(space != std::string::npos);
    s.value = line.substr(space + 1);
    if (brace == std::string::npos || brace > space) {
      s.name = line.substr(0, space);
      out.push_back(s);
      continue;
    }
    s.name = line.substr(0, brace);
    size_t i = brace + 1;
    while (line[i] != '}') {
      size_t eq = line.find("=\"", i);
      std::string key = line.substr(i, eq - i);
      std::string value;
      for (i = eq + 2; line[i] != '"'; ++i) {
        if (line[i] == '\\') {
          ++i;
          value += line[i] == 'n' ? '\n' : line[i];
        } else {
          value += line[i];
        }
      }
      s.labels[key] = value;
      ++i;
      if (line[i] == ',') ++i;
    }
    out.push_back(s);
  }
  return out;
}

// Samples of `name` whose labels include every one of `want`.
std::vector<Sample> find(const std::vector<Sample>& all, const std::string& name,
                         const std::map<std::string, std::string>& want = {}) {
  std::vector<Sample> out;
  for (const auto& s : all) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : want) {
      auto it = s.labels.find(k);
      match = match && it != s.labels.end() && it->second == v;
    }
    if (match) out.push_back(s);
  }
  return out;
}

uint64_t value(const std::vector<Sample>& all, const std::string& name,
               const std::map<std::string, std::string>& want = {}) {
  auto found = find(all, name, want);
  REQUIRE_MESSAGE(found.size() == 1, name << ": " << found.size() << " matching samples");
  return std::stoull(found[0].value);
}

std::vector<Sample> scrape(TcpMetrics& m) {
  TextWriter w;
  m.write(w);
  return parse(w.take());
}

uint32_t ip(const char* text) { return *parseIp4(text); }

// client (shop, node1, Deployment "client") -> server (shop, node2, StatefulSet "db").
WorkloadIndex& meshIndex() {
  static WorkloadIndex idx;
  static bool once = [] {
    auto snap = std::make_shared<WorkloadSnapshot>();
    auto client = std::make_shared<const WorkloadInfo>(describeWorkload(
        "client-7d9f8b6c5-x2x4z", "shop", "client-7d9f8b6c5-", {"ReplicaSet", "client-7d9f8b6c5"},
        {{"pod-template-hash", "7d9f8b6c5"}, {"app", "web"}, {"version", "v1"}}, "Kubernetes"));
    auto server = std::make_shared<const WorkloadInfo>(
        describeWorkload("db-0", "shop", "db-", {"StatefulSet", "db"},
                         {{"statefulset.kubernetes.io/pod-name", "db-0"},
                          {"service.istio.io/canonical-name", "database"},
                          {"app.kubernetes.io/version", "14"}},
                         "Kubernetes"));
    snap->by_ip[ip("10.244.1.5")] = client;
    snap->by_pod["shop/client-7d9f8b6c5-x2x4z"] = client;
    snap->by_ip[ip("10.244.2.7")] = server;
    snap->by_pod["shop/db-0"] = server;
    idx.update(snap);
    return true;
  }();
  (void)once;
  return idx;
}

ConnectionRecord outboundHbone(uint64_t id) {
  ConnectionRecord r;
  r.id = id;
  r.direction = Direction::kOutbound;
  r.path = Path::kHbone;
  r.pod = "shop/client-7d9f8b6c5-x2x4z";
  r.source = "10.244.1.5:40000";
  r.destination = "10.244.2.7:5432";
  r.destination_service = "shop/db";
  r.source_principal = kWeb;
  r.destination_principal = kApi;
  r.mutual_tls = true;
  return r;
}

ConnectionRecord inboundHbone(uint64_t id) {
  ConnectionRecord r = outboundHbone(id);
  r.direction = Direction::kInbound;
  r.pod = "shop/db-0";
  r.destination_service.clear();  // the server side does not know the Service
  return r;
}

struct FakeClock {
  TcpMetrics::Clock::time_point t{std::chrono::hours(1)};
  std::function<TcpMetrics::Clock::time_point()> fn() {
    return [this] { return t; };
  }
};

using test::freePort;

using test::httpGet;

}  // namespace

TEST_SUITE("telemetry") {
  TEST_CASE("exposition: escaping, HELP and TYPE lines, samples") {
    CHECK(escapeLabelValue("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
    CHECK(renderLabels({}) == "");
    CHECK(renderLabels({{"a", "x"}, {"b", "say \"hi\"\n"}}) == "{a=\"x\",b=\"say \\\"hi\\\"\\n\"}");
    TextWriter w;
    w.family("x_total", MetricType::kCounter, "Help with \\ and\nnewline");
    w.sample("x_total", renderLabels({{"k", "v"}}), uint64_t{42});
    w.family("y", MetricType::kGauge, "A gauge");
    w.sample("y", "", 1.5);
    CHECK(w.take() ==
          "# HELP x_total Help with \\\\ and\\nnewline\n# TYPE x_total counter\n"
          "x_total{k=\"v\"} 42\n# HELP y A gauge\n# TYPE y gauge\ny 1.5\n");
  }

  TEST_CASE("workload names from the pod's controller as Istio derives them") {
    const PodLabels hash = {{"pod-template-hash", "7d9f8b6c5"}};
    struct Case {
      const char* pod;
      Owner owner;
      PodLabels labels;
      const char* kind;
      const char* name;
    } cases[] = {
        // A Deployment's pods are owned by its ReplicaSet "<deployment>-<hash>".
        {"web-7d9f8b6c5-x2x4z", {"ReplicaSet", "web-7d9f8b6c5"}, hash, "Deployment", "web"},
        {"a-b-c-7d9f8b6c5-q", {"ReplicaSet", "a-b-c-7d9f8b6c5"}, hash, "Deployment", "a-b-c"},
        // A bare ReplicaSet (no hash label, or a name without the hash).
        {"rs-x2x4z", {"ReplicaSet", "rs"}, {}, "ReplicaSet", "rs"},
        {"rs-x2x4z", {"ReplicaSet", "rs"}, hash, "ReplicaSet", "rs"},
        // Istio's letter: the hash without its dash still means a Deployment.
        {"rs7d9f8b6c5-q", {"ReplicaSet", "rs7d9f8b6c5"}, hash, "Deployment", "rs7d9f8b6c5"},
        {"db-12", {"StatefulSet", "db"}, {}, "StatefulSet", "db"},
        {"agent-x7k2p", {"DaemonSet", "agent"}, {}, "DaemonSet", "agent"},
        {"migrate-abcde", {"Job", "migrate"}, {}, "Job", "migrate"},
        // A CronJob's Jobs are "<cronjob>-<scheduled minute, 8 to 10 digits>".
        {"backup-28391040-zk2", {"Job", "backup-28391040"}, {}, "CronJob", "backup"},
        {"r-1-2839104012-a", {"Job", "r-1-2839104012"}, {}, "CronJob", "r-1"},
        {"j-1234567-a", {"Job", "j-1234567"}, {}, "Job", "j-1234567"},              // 7 digits
        {"j-12345678901-a", {"Job", "j-12345678901"}, {}, "Job", "j-12345678901"},  // 11
        {"j-1234x678-a", {"Job", "j-1234x678"}, {}, "Job", "j-1234x678"},
        {"dc-1-x",
         {"ReplicationController", "dc-1"},
         {{"deploymentconfig", "dc"}},
         "DeploymentConfig",
         "dc"},
        {"rc-x", {"ReplicationController", "rc"}, {}, "ReplicationController", "rc"},
        {"node-agent-x", {"Node", "n1"}, {}, "Node", "n1"},
        // No controller: the pod is its own workload, whatever its labels say.
        {"client", {}, {}, "Pod", "client"},
        {"client-7d9f8b6c5-x2x4z", {}, hash, "Pod", "client-7d9f8b6c5-x2x4z"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.pod);
      // Controllers give their pods a generateName "<controller>-".
      std::string generate_name = c.owner.name.empty() ? "" : c.owner.name + "-";
      auto w = workloadOf(c.pod, generate_name, c.owner, c.labels);
      CHECK(w.kind == std::string(c.kind));
      CHECK(w.name == std::string(c.name));
    }
  }

  TEST_CASE("only a pod with a generateName is named after its controller (Istio)") {
    const PodLabels hash = {{"pod-template-hash", "7d9f8b6c5"}};
    struct Case {
      const char* pod;
      const char* generate_name;
      Owner owner;
      PodLabels labels;
      const char* kind;
      const char* name;
    } cases[] = {
        {"web-7d9f8b6c5-x2x4z",
         "web-7d9f8b6c5-",
         {"ReplicaSet", "web-7d9f8b6c5"},
         hash,
         "Deployment",
         "web"},
        // Named by hand (no generateName): its own workload despite the owner.
        {"web-manual", "", {"ReplicaSet", "web-7d9f8b6c5"}, hash, "Pod", "web-manual"},
        {"db-0", "db-", {"StatefulSet", "db"}, {}, "StatefulSet", "db"},
        {"db-0", "", {"StatefulSet", "db"}, {}, "Pod", "db-0"},
        {"backup-28391040-zk2",
         "backup-28391040-",
         {"Job", "backup-28391040"},
         {},
         "CronJob",
         "backup"},
        {"backup-28391040-zk2", "", {"Job", "backup-28391040"}, {}, "Pod", "backup-28391040-zk2"},
        // A generateName but no controller: the pod.
        {"adhoc-k2x9q", "adhoc-", {}, hash, "Pod", "adhoc-k2x9q"},
        // The generateName is not compared with the owner (Istio does not).
        {"x-q", "other-", {"ReplicaSet", "web-7d9f8b6c5"}, hash, "Deployment", "web"},
        // An Argo Rollout's ReplicaSet: "<rollout>-<rollouts-pod-template-hash>".
        {"checkout-6f7d8-abcde",
         "checkout-6f7d8-",
         {"ReplicaSet", "checkout-6f7d8"},
         {{"rollouts-pod-template-hash", "6f7d8"}},
         "Rollout",
         "checkout"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.pod);
      CAPTURE(c.generate_name);
      auto w = workloadOf(c.pod, c.generate_name, c.owner, c.labels);
      CHECK(w.kind == std::string(c.kind));
      CHECK(w.name == std::string(c.name));
    }
  }

  TEST_CASE("canonical service and revision from Istio's label precedence") {
    CHECK(canonicalService({{"app", "a"},
                            {"app.kubernetes.io/name", "b"},
                            {"service.istio.io/canonical-name", "c"}},
                           "w") == "c");
    CHECK(canonicalService({{"app", "a"}, {"version", "v"}}, "w") == "a");
    CHECK(canonicalService({{"app", ""}}, "w") == "w");  // empty values do not count
    CHECK(canonicalRevision({{"version", "v2"}, {"app.kubernetes.io/version", "3"}}) == "3");
    CHECK(canonicalRevision(
              {{"service.istio.io/canonical-revision", "canary"}, {"version", "v2"}}) == "canary");
    auto w = describeWorkload("web-7d9f8b6c5-x2x4z", "shop", "web-7d9f8b6c5-",
                              {"ReplicaSet", "web-7d9f8b6c5"}, {{"pod-template-hash", "7d9f8b6c5"}},
                              "Kubernetes");
    CHECK(w.workload == "web");
    CHECK(w.canonical_service == "web");  // no label: the workload's name
    CHECK(w.canonical_revision == "latest");
    CHECK(canonicalService({{"app", "a"}, {"app.kubernetes.io/name", "b"}}, "w") == "b");
    CHECK(canonicalService({}, "w") == "w");
    CHECK(canonicalRevision({{"version", "v2"}}) == "v2");
    CHECK(canonicalRevision({}) == "latest");
  }

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

  TEST_CASE("inbound: reporter destination; plaintext is unknown security, unknown principal") {
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

  TEST_CASE("the destination reporter guesses the Service from the pod's target port") {
    auto snap = std::make_shared<WorkloadSnapshot>(*meshIndex().current());
    // Ordered by namespace/name, as the bridge builds it: the first that
    // forwards to the port wins.
    snap->services_by_endpoint[ip("10.244.2.7")] = {{"shop", "db-admin", {9187}},
                                                    {"shop", "db-primary", {5432, 9187}},
                                                    {"shop", "db-replicas", {5432}}};
    CHECK(guessInboundService(*snap, ip("10.244.2.7"), 5432)->name == "db-primary");
    CHECK(guessInboundService(*snap, ip("10.244.2.7"), 9187)->name == "db-admin");
    CHECK(guessInboundService(*snap, ip("10.244.2.7"), 80) == nullptr);
    CHECK(guessInboundService(*snap, ip("10.244.2.8"), 5432) == nullptr);

    WorkloadIndex idx;
    idx.update(snap);
    TcpMetrics m({}, &idx);
    m.opened(0, inboundHbone(1));
    ConnectionRecord other_port = inboundHbone(2);
    other_port.destination = "10.244.2.7:6000";
    m.opened(0, other_port);
    ConnectionRecord via_vip = outboundHbone(3);  // the source side knows what was dialled
    via_vip.destination_service = "shop/db";
    m.opened(0, via_vip);
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
  }

  TEST_CASE("a same-node handoff is reported by both ends; a pod absent from the view is named") {
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

  TEST_CASE("bytes advance while the connection is open; request bytes are 'received'") {
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

  TEST_CASE("one series per label set; workers merge at scrape time") {
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

  TEST_CASE("the series cap: new label sets are dropped and counted; idle ones make room") {
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
      std::vector<uint64_t> v(SLUICE_STAT_MAX);
      v[SLUICE_STAT_CONNECT_REDIRECTED] = 17;
      v[SLUICE_STAT_TC_ASSIGNED] = 5;
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
    CHECK(bpf_counters == SLUICE_STAT_MAX);  // every counter of the table, each once
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

// --- HTTP metrics (agent/telemetry/http_metrics.cc) ------------------------

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

  TEST_CASE("a same-node handoff reports both ends; closed connections let series go idle") {
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
