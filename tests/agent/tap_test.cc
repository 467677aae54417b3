#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "agent/telemetry/tap.h"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "agent/admin/server.h"
#include "agent/telemetry/tap_stream.h"
#include "sluice/common/addr.h"
#include "support/eventually.h"
#include "support/local_http.h"
#include "support/workload_index.h"

using namespace sluice;
using namespace sluice::agent::telemetry;
using ztunnel::ConnectionRecord;
using ztunnel::Direction;
using ztunnel::Path;
using ztunnel::RequestRecord;

namespace {

constexpr const char* kWeb = "spiffe://cluster.local/ns/shop/sa/web";
constexpr const char* kDb = "spiffe://cluster.local/ns/shop/sa/db";

WorkloadIndex& index() {
  static WorkloadIndex idx;
  static bool once = [] {
    idx.update(test::workloadSnapshot("shop", {{"web-5d4f-aaaaa",
                                                "10.244.1.5",
                                                {{"pod-template-hash", "5d4f"}},
                                                {"ReplicaSet", "web-5d4f"}},
                                               {"db-0",
                                                "10.244.2.9",
                                                {{"statefulset.kubernetes.io/pod-name", "db-0"}},
                                                {"StatefulSet", "db"}}}));
    // The Service shop/db, with db-0 as its endpoint.
    auto snap = std::make_shared<WorkloadSnapshot>(*idx.current());
    snap->services = {{"shop", "db"}};
    idx.update(std::move(snap));
    return true;
  }();
  (void)once;
  return idx;
}

// web (this node) -> db (another node) over HBONE, to the Service shop/db.
ConnectionRecord outbound() {
  ConnectionRecord r;
  r.id = 1;
  r.direction = Direction::kOutbound;
  r.path = Path::kHbone;
  r.pod = "shop/web-5d4f-aaaaa";
  r.source = "10.244.1.5:40000";
  r.destination = "10.244.2.9:5432";
  r.destination_service = "shop/db";
  r.source_principal = kWeb;
  r.destination_principal = kDb;
  r.mutual_tls = true;
  return r;
}

RequestRecord get(const char* path, int status = 200, const char* method = "GET") {
  RequestRecord r;
  r.protocol = ztunnel::AppProtocol::kHttp1;
  r.method = method;
  r.authority = "db.shop:5432";
  r.path = path;
  r.status = status;
  r.duration_us = 1500;
  r.start_unix_ms = 1700000000000;
  return r;
}

TapFilter filter(std::map<std::string, std::string> q) {
  auto f = TapFilter::fromQuery(q);
  REQUIRE(f.has_value());
  return *f;
}

std::vector<TapEvent> drainAll(TapSubscription& s) {
  std::vector<TapEvent> out;
  s.drain(out, 100000);
  return out;
}

// A raw HTTP/1.0 client of a stream: the body arrives as it is produced and
// ends when the server closes.
class StreamClient {
 public:
  StreamClient(int port, const std::string& target) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    std::string req = "GET " + target + " HTTP/1.0\r\n\r\n";
    REQUIRE(::send(fd_, req.data(), req.size(), MSG_NOSIGNAL) == ssize_t(req.size()));
  }
  ~StreamClient() { close(); }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  // Reads until `text` has arrived or the server closed (10 s at most).
  bool waitFor(const std::string& text) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (received_.find(text) == std::string::npos) {
      if (closed_ || std::chrono::steady_clock::now() > deadline) return false;
      readSome();
    }
    return true;
  }
  bool waitClosed() {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!closed_ && std::chrono::steady_clock::now() < deadline) readSome();
    return closed_;
  }
  const std::string& received() const { return received_; }

 private:
  void readSome() {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) return;
    char buf[4096];
    ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    if (n <= 0)
      closed_ = true;
    else
      received_.append(buf, size_t(n));
  }
  int fd_ = -1;
  bool closed_ = false;
  std::string received_;
};

using sluice::testing::eventually;

}  // namespace

TEST_SUITE("tap") {
  TEST_CASE("resources and filters: parsed strictly, matched on the right end") {
    CHECK(TapResource::parse("deploy/web")->kind == TapResource::Kind::kWorkload);
    CHECK(TapResource::parse("web")->kind == TapResource::Kind::kWorkload);
    CHECK(TapResource::parse("po/db-0")->kind == TapResource::Kind::kPod);
    CHECK(TapResource::parse("svc/db")->kind == TapResource::Kind::kService);
    CHECK(TapResource::parse("ns/shop")->kind == TapResource::Kind::kNamespace);
    CHECK(TapResource::parse("cronjob/x").error().message.find("deploy/NAME") != std::string::npos);
    CHECK_FALSE(TapResource::parse("deploy/").has_value());
    CHECK_FALSE(TapResource::parse("a/b/c").has_value());
    CHECK(TapFilter::fromQuery({{"color", "red"}}).error().message.find("unknown tap parameter") !=
          std::string::npos);
    CHECK(TapFilter::fromQuery({{"to", "x/y"}}).error().message.find("--to") != std::string::npos);
    // A client is never a Service: such a session could only wait for ever.
    CHECK(TapFilter::fromQuery({{"from", "svc/db"}}).error().message.find("never a Service") !=
          std::string::npos);

    TapHub hub({.workers = 1}, &index());
    struct Case {
      std::map<std::string, std::string> query;
      bool shown;
    };
    const Case cases[] = {
        {{}, true},
        {{{"namespace", "shop"}}, true},
        {{{"namespace", "other"}}, false},
        {{{"to", "sts/db"}}, true},
        {{{"to", "db"}}, true},
        {{{"to", "web"}}, false},
        {{{"from", "deploy/web"}}, true},
        {{{"from", "pod/web-5d4f-aaaaa"}}, true},
        {{{"to", "svc/db"}}, true},
        {{{"to", "ns/shop"}}, true},
        {{{"method", "get"}}, true},
        {{{"method", "POST"}}, false},
        {{{"path", "/api"}}, true},
        {{{"path", "/admin"}}, false},
        {{{"authority", "db.shop:5432"}}, true},
        {{{"authority", "db"}}, false},
    };
    for (const auto& c : cases) {
      auto sub = hub.subscribe(filter(c.query));
      REQUIRE(sub.has_value());
      hub.request(0, outbound(), get("/api/items"));
      CHECK_MESSAGE(
          drainAll(**sub).size() == (c.shown ? 1u : 0u),
          (c.query.empty() ? "{}" : c.query.begin()->first + "=" + c.query.begin()->second));
    }
  }

  TEST_CASE("a resource the view does not hold is refused, not waited for") {
    TapHub hub({.workers = 1}, &index());
    struct Case {
      std::map<std::string, std::string> query;
      const char* error;  // empty: accepted
    };
    const Case cases[] = {
        {{{"to", "svc/db"}}, ""},
        {{{"to", "svc/db"}, {"namespace", "shop"}}, ""},
        {{{"to", "svc/nosuch"}}, "--to: no Service with endpoints 'nosuch'"},
        // --namespace filters either end of a request, not the resource.
        {{{"to", "svc/db"}, {"namespace", "other"}}, ""},
        {{{"from", "deploy/web"}, {"namespace", "elsewhere"}}, ""},
        {{{"from", "deploy/web"}}, ""},
        {{{"from", "deploy/web-5d4f"}}, "--from: no workload 'web-5d4f'"},
        {{{"from", "pod/web-5d4f-aaaaa"}}, ""},
        {{{"from", "pod/web"}}, "no pod 'web'"},
        {{{"to", "ns/shop"}}, ""},
        {{{"to", "ns/other"}}, "no namespace with pods 'other'"},
        {{{"to", "sts/db"}, {"from", "nosuch"}}, "--from: no workload 'nosuch'"},
        {{{"namespace", "other"}}, ""},  // a namespace alone filters, names nothing
    };
    for (const auto& c : cases) {
      auto sub = hub.subscribe(filter(c.query));
      INFO(c.query.begin()->first, "=", c.query.begin()->second);
      if (*c.error == 0) {
        CHECK(sub.has_value());
      } else {
        REQUIRE_FALSE(sub.has_value());
        CHECK(sub.error().code == ENOENT);
        CHECK(sub.error().message.find(c.error) != std::string::npos);
        CHECK(sub.error().message.find("lists them") != std::string::npos);
      }
    }
    CHECK(hub.subscribers() == 0);
    // Before the agent has a view, nothing can be checked: the session waits.
    WorkloadIndex empty;
    TapHub starting({.workers = 1}, &empty);
    CHECK(starting.subscribe(filter({{"to", "svc/nosuch"}})).has_value());
  }

  TEST_CASE("a line names both ends and carries no other header value") {
    TapHub hub({.workers = 1}, &index());
    auto sub = hub.subscribe({});
    REQUIRE(sub.has_value());
    auto r = get("/api/items", 503);
    r.grpc_status = 14;
    hub.request(0, outbound(), r);
    auto events = drainAll(**sub);
    REQUIRE(events.size() == 1);
    auto j = toJson(events[0]);
    CHECK(j["method"] == "GET");
    CHECK(j["authority"] == "db.shop:5432");
    CHECK(j["path"] == "/api/items");
    CHECK(j["status"] == 503);
    CHECK(j["grpc_status"] == 14);
    CHECK(j["duration_us"] == 1500);
    CHECK(j["direction"] == "outbound");
    CHECK(j["service"] == "shop/db");
    CHECK(j["source"]["workload"] == "web");
    CHECK(j["source"]["pod"] == "web-5d4f-aaaaa");
    CHECK(j["source"]["identity"] == kWeb);
    CHECK(j["destination"]["workload"] == "db");
    CHECK(j["destination"]["identity"] == kDb);
    CHECK(j["destination"]["address"] == "10.244.2.9:5432");
    // Exactly these fields: nothing else of the request can leak into a line.
    std::vector<std::string> keys;
    for (const auto& [k, v] : j.items()) keys.push_back(k);
    CHECK(keys == std::vector<std::string>{"authority", "destination", "direction", "duration_us",
                                           "grpc_status", "method", "mutual_tls", "path",
                                           "protocol", "request_bytes", "response_bytes", "service",
                                           "source", "start_unix_ms", "status"});
  }

  TEST_CASE("a slow subscriber drops, a fast one gets everything, the worker never waits") {
    TapHub hub({.workers = 2, .queue_per_worker = 8}, &index());
    auto slow = hub.subscribe({});
    auto fast = hub.subscribe({});
    REQUIRE(slow.has_value());
    REQUIRE(fast.has_value());
    size_t fast_got = 0;
    for (int i = 0; i < 1000; ++i) {
      hub.request(i % 2, outbound(), get("/x"));  // returns at once: the slow queue is full
      if (i % 4 == 3) fast_got += drainAll(**fast).size();
    }
    fast_got += drainAll(**fast).size();
    CHECK(fast_got == 1000);
    CHECK((*fast)->dropped() == 0);
    // The slow one kept the first 8 of each worker and counted the rest.
    CHECK(drainAll(**slow).size() == 16);
    CHECK((*slow)->dropped() == 1000 - 16);
    // Once drained it receives again.
    hub.request(0, outbound(), get("/y"));
    auto more = drainAll(**slow);
    REQUIRE(more.size() == 1);
    CHECK(more[0].path == "/y");
  }

  TEST_CASE("workers publish while sessions come and go") {
    TapHub hub({.workers = 3, .queue_per_worker = 64}, &index());
    std::atomic<bool> stop{false};
    std::vector<std::thread> workers;
    for (unsigned w = 0; w < 3; ++w)
      workers.emplace_back([&, w] {
        while (!stop) hub.request(w, outbound(), get("/z"));
      });
    for (int round = 0; round < 200; ++round) {
      auto sub = hub.subscribe(filter({{"method", "GET"}}));
      REQUIRE(sub.has_value());
      std::vector<TapEvent> out;
      (*sub)->drain(out, 10);
    }
    stop = true;
    for (auto& t : workers) t.join();
    CHECK(hub.subscribers() == 0);
  }

  TEST_CASE("sessions are bounded and end when their subscription goes") {
    TapHub hub({.workers = 1, .max_subscribers = 2}, &index());
    auto a = hub.subscribe({});
    auto b = hub.subscribe({});
    CHECK(hub.subscribers() == 2);
    auto c = hub.subscribe({});
    REQUIRE_FALSE(c.has_value());
    CHECK(c.error().code == EBUSY);
    CHECK(c.error().message.find("too many tap sessions") != std::string::npos);
    a->reset();
    CHECK(hub.subscribers() == 1);
    CHECK(hub.subscribe({}).has_value());
    hub.request(0, outbound(), get("/"));  // only b is left to receive it
    CHECK(drainAll(**b).size() == 1);
    b->reset();
  }
}

TEST_SUITE("tap_stream") {
  TEST_CASE("/live/tap streams JSON lines, filters, ends at max and when the client goes") {
    TapHub hub({.workers = 1}, &index());
    int port = test::freePort();
    auto server = agent::admin::Server::create("127.0.0.1:" + std::to_string(port), "admin API", {},
                                               {{"/live/tap", tapStreamOpener(hub)}});
    REQUIRE(server.has_value());

    // A bad filter: 400 with the reason, no session.
    auto bad = test::httpGet(port, "/live/tap?to=cronjob/x");
    CHECK(bad.find("400 Bad Request") != std::string::npos);
    CHECK(bad.find("unknown resource kind") != std::string::npos);
    CHECK(test::httpGet(port, "/live/tap?max=ten").find("400") != std::string::npos);

    {
      StreamClient client(port, "/live/tap?method=GET&path=%2Fapi");
      REQUIRE(eventually([&] { return hub.subscribers() == 1; }));
      hub.request(0, outbound(), get("/api/one"));
      hub.request(0, outbound(), get("/api/two", 200, "POST"));  // filtered out
      hub.request(0, outbound(), get("/other"));                 // filtered out
      hub.request(0, outbound(), get("/api/three"));
      REQUIRE(client.waitFor("/api/three"));
      CHECK(client.received().find("200 OK") != std::string::npos);
      CHECK(client.received().find("application/x-ndjson") != std::string::npos);
      CHECK(client.received().find("/api/one") != std::string::npos);
      CHECK(client.received().find("/api/two") == std::string::npos);
      CHECK(client.received().find("/other") == std::string::npos);
      // The client goes away: the session ends and the hub forgets it.
      client.close();
      CHECK(eventually([&] { return hub.subscribers() == 0 && (*server)->streams() == 0; }));
    }

    // max: the stream ends by itself after that many requests.
    StreamClient counted(port, "/live/tap?max=2");
    REQUIRE(eventually([&] { return hub.subscribers() == 1; }));
    for (int i = 0; i < 3; ++i) hub.request(0, outbound(), get("/n"));
    CHECK(counted.waitClosed());
    size_t lines = 0;
    for (size_t at = 0; (at = counted.received().find("\"path\":\"/n\"", at)) != std::string::npos;
         ++at)
      ++lines;
    CHECK(lines == 2);
    CHECK(eventually([&] { return hub.subscribers() == 0; }));

    // The server stops with a session open: no crash, the client sees the end.
    StreamClient open(port, "/live/tap");
    REQUIRE(eventually([&] { return hub.subscribers() == 1; }));
    server->reset();
    CHECK(hub.subscribers() == 0);
    CHECK(open.waitClosed());
  }

  TEST_CASE("a session that falls behind says how many requests it missed") {
    TapHub hub({.workers = 1, .queue_per_worker = 4}, &index());
    auto opener = tapStreamOpener(hub);
    auto stream = opener({});
    REQUIRE(stream.has_value());
    for (int i = 0; i < 10; ++i) hub.request(0, outbound(), get("/d"));
    auto step = (*stream)->poll();
    CHECK(step.data.find("{\"dropped\":6}") != std::string::npos);
    CHECK_FALSE(step.done);
    size_t lines = 0;
    for (char ch : step.data) lines += ch == '\n';
    CHECK(lines == 5);  // four requests and the drop count
  }
}
