// An upgrade's telemetry (agent/upgrade/observations.h): what the old
// agent's connections do while it drains, forwarded over a real SEQPACKET
// socket and replayed into the successor's observers, and the handover
// protocol's offer of it.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "agent/upgrade/observations.h"

#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "agent/upgrade/handover.h"
#include "support/eventually.h"

using namespace sluice;
using namespace sluice::agent::upgrade;
using namespace std::chrono_literals;
using sluice::testing::eventually;
using ztunnel::CloseReason;
using ztunnel::ConnectionRecord;

namespace {

// Every call, as a line: "opened 3 id=.. adopted=1 pod=..", "moved 3 id=.. 100/5", ...
class Recorder final : public ztunnel::ConnectionObserver {
 public:
  void opened(unsigned w, const ConnectionRecord& r) override {
    add(fmt::format("opened {} {} adopted={} pod={} dst={} mtls={}", w, id(r), r.adopted, r.pod,
                    r.destination, r.mutual_tls));
  }
  void transferred(unsigned w, const ConnectionRecord& r, uint64_t sent,
                   uint64_t received) override {
    add(fmt::format("moved {} {} {}/{}", w, id(r), sent, received));
  }
  void request(unsigned w, const ConnectionRecord& c, const ztunnel::RequestRecord& q) override {
    add(fmt::format("request {} {} {} {}{} {} grpc={} {}/{} {}us", w, id(c),
                    ztunnel::toString(q.protocol), q.method, q.path, q.status, q.grpc_status,
                    q.request_bytes, q.response_bytes, q.duration_us));
  }
  void closed(unsigned w, const ConnectionRecord& r) override {
    add(fmt::format("closed {} {} {} bytes={}/{}", w, id(r), r.reasonText(), r.bytes_sent,
                    r.bytes_received));
  }
  std::vector<std::string> lines() {
    std::lock_guard lk(mu_);
    return lines_;
  }
  bool has(const std::string& line) {
    auto l = lines();
    return std::find(l.begin(), l.end(), line) != l.end();
  }
  // The ids the successor gave: "A" for the first one it saw, "B" next.
  std::string id(const ConnectionRecord& r) {
    if (!(r.id >> 63)) return std::to_string(r.id);
    std::lock_guard lk(mu_);
    auto [it, fresh] =
        names_.try_emplace(r.id, std::string(1, static_cast<char>('A' + names_.size())));
    return it->second;
  }

 private:
  void add(std::string line) {
    std::lock_guard lk(mu_);
    lines_.push_back(std::move(line));
  }
  std::mutex mu_;
  std::vector<std::string> lines_;
  std::map<uint64_t, std::string> names_;
};

ConnectionRecord hbone(uint64_t id, const std::string& pod) {
  ConnectionRecord r;
  r.id = id;
  r.direction = ztunnel::Direction::kInbound;
  r.path = ztunnel::Path::kHbone;
  r.pod = pod;
  r.source = "10.1.0.1:40000";
  r.destination = "10.2.0.2:8080";
  r.source_principal = "spiffe://cluster.local/ns/shop/sa/web";
  r.destination_principal = "spiffe://cluster.local/ns/shop/sa/api";
  r.mutual_tls = true;
  r.start_unix_ms = 1000;
  return r;
}

// One observation message, as the old agent sends it: bytes moved on a
// connection opened before the handover.
void sendMoved(int sock, const ConnectionRecord& r, uint64_t sent, uint64_t received) {
  nlohmann::json e{{"opened", false}, {"sent", sent}, {"received", received}};
  writeRecord(r, e["record"]);
  nlohmann::json m{{"op", "observed"}, {"events", nlohmann::json::array({e})}};
  REQUIRE(sendMessage(sock, m.dump()).has_value());
}

struct Pair {
  UniqueFd old_end, new_end;
  Pair() {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) == 0);
    old_end = UniqueFd(fds[0]);
    new_end = UniqueFd(fds[1]);
  }
};

}  // namespace

TEST_SUITE("upgrade observations") {
  TEST_CASE("what the old agent drains is counted once, by the successor") {
    Recorder local, successor;
    Pair pair;
    ObservationForwarder fwd(local);
    // Before the handover: the old agent's own observers only.
    fwd.opened(0, hbone(7, "shop/api"));
    fwd.transferred(0, hbone(7, "shop/api"), 500, 50);
    fwd.hold();
    fwd.transferred(0, hbone(7, "shop/api"), 100, 5);
    fwd.transferred(0, hbone(7, "shop/api"), 20, 0);
    fwd.opened(1, hbone(8, "shop/api"));  // a CONNECT on its way when the tunnel drained
    ztunnel::RequestRecord q;
    q.protocol = ztunnel::AppProtocol::kHttp1;
    q.method = "GET";
    q.path = "/x";
    q.status = 200;
    q.request_bytes = 3;
    q.response_bytes = 4;
    q.duration_us = 900;
    fwd.request(1, hbone(8, "shop/api"), q);
    auto done7 = hbone(7, "shop/api");
    done7.state = ztunnel::ConnState::kClosed;
    done7.reason = CloseReason::kEof;
    done7.bytes_sent = 620;
    done7.bytes_received = 55;
    fwd.closed(0, done7);
    fwd.forward(std::move(pair.old_end));
    ObservationReceiver receiver(std::move(pair.new_end), successor, 2);
    CHECK(eventually([&] { return successor.lines().size() >= 5; }));
    // 7 opened before the handover: the successor opens it adopted (its
    // open was counted), adds what moved since and counts its close.
    CHECK(successor.has("opened 2 A adopted=true pod=shop/api dst=10.2.0.2:8080 mtls=true") !=
          successor.has("opened 2 B adopted=true pod=shop/api dst=10.2.0.2:8080 mtls=true"));
    auto lines = successor.lines();
    std::string a = successor.has("moved 2 A 120/5") ? "A" : "B", b = a == "A" ? "B" : "A";
    CHECK(successor.has("moved 2 " + a + " 120/5"));
    CHECK(successor.has("closed 2 " + a + " eof bytes=620/55"));
    // 8 opened during the drain: counted opened by the successor.
    CHECK(
        successor.has("opened 2 " + b + " adopted=false pod=shop/api dst=10.2.0.2:8080 mtls=true"));
    CHECK(successor.has("request 2 " + b + " http/1.1 GET/x 200 grpc=-1 3/4 900us"));
    // Later bytes follow within a flush interval, while it is open.
    fwd.transferred(1, hbone(8, "shop/api"), 9, 11);
    CHECK(eventually([&] { return successor.has("moved 2 " + b + " 9/11"); }, 2s));
    auto done8 = hbone(8, "shop/api");
    done8.reason = CloseReason::kReset;
    done8.bytes_sent = 9;
    done8.bytes_received = 11;
    fwd.closed(1, done8);
    fwd.finish();
    CHECK(eventually([&] { return receiver.done(); }, 2s));
    CHECK(successor.has("closed 2 " + b + " reset bytes=9/11"));
    // Every call reached the old agent's own observers too.
    CHECK(local.lines().size() == 9);
    CHECK(local.has("moved 0 7 500/50"));
    // Nothing before the hold went to the successor, nothing twice.
    lines = successor.lines();
    CHECK(std::count_if(lines.begin(), lines.end(),
                        [](const std::string& l) { return l.starts_with("opened"); }) == 2);
    CHECK(std::count_if(lines.begin(), lines.end(),
                        [](const std::string& l) { return l.starts_with("closed"); }) == 2);
  }

  TEST_CASE("an old agent that goes away mid-drain: its open connections are closed, not held") {
    Recorder successor;
    Pair pair;
    ObservationReceiver receiver(std::move(pair.new_end), successor, 1);
    sendMoved(pair.old_end.get(), hbone(3, "shop/api"), 10, 10);
    CHECK(eventually([&] { return successor.has("moved 1 A 10/10"); }, 2s));
    pair.old_end.reset();  // killed: no "drained", the socket just ends
    CHECK(eventually([&] { return receiver.done(); }, 3s));
    auto lines = successor.lines();
    REQUIRE(lines.size() == 3);
    CHECK(lines[0] == "opened 1 A adopted=true pod=shop/api dst=10.2.0.2:8080 mtls=true");
    CHECK(lines[2].starts_with("closed 1 A proxy_shutdown"));
  }

  TEST_CASE("garbage from the other end stops the replay and closes what it opened") {
    for (std::string garbage :
         {std::string("not json"),
          std::string(R"({"op":"observed","events":[{"record":{"direction":9}}]})"),
          std::string(R"({"op":"observed","events":[{"what":1}]})"),
          std::string(R"({"op":"observed","events":{}})"), std::string(R"({"op":"listeners"})"),
          std::string(R"({"op":1})"), std::string(R"([1,2])"),
          std::string(R"({"op":"drained","dropped":"x"})")}) {
      CAPTURE(garbage);
      Recorder successor;
      Pair pair;
      ObservationReceiver receiver(std::move(pair.new_end), successor, 0);
      sendMoved(pair.old_end.get(), hbone(5, "shop/api"), 1, 2);
      REQUIRE(sendMessage(pair.old_end.get(), garbage).has_value());
      CHECK(eventually([&] { return receiver.done(); }, 3s));
      auto lines = successor.lines();
      REQUIRE(lines.size() == 3);
      CHECK(lines[1] == "moved 0 A 1/2");
      CHECK(lines[2].starts_with("closed 0 A proxy_shutdown"));
    }
  }

  TEST_CASE("a successor that hands over in turn forwards what it still receives, ids apart") {
    Recorder a_local, b_local, c;
    Pair ab, bc;
    ObservationForwarder a(a_local), b(b_local);
    a.hold();
    a.forward(std::move(ab.old_end));
    // B replays A's drain through its own forwarder (as the agent does).
    auto b_receives = std::make_unique<ObservationReceiver>(std::move(ab.new_end), b, 1);
    a.transferred(0, hbone(1, "shop/api"), 5, 5);
    CHECK(eventually([&] { return b_local.has("moved 1 A 5/5"); }, 2s));
    // B hands over to C; A's connection 1 and B's own connection 1 meet there.
    b.hold();
    b.forward(std::move(bc.old_end));
    ObservationReceiver c_receives(std::move(bc.new_end), c, 1);
    a.transferred(0, hbone(1, "shop/api"), 7, 0);
    b.transferred(0, hbone(1, "shop/web"), 3, 0);
    CHECK(eventually([&] { return c.lines().size() >= 4; }, 3s));
    auto lines = c.lines();
    CHECK(std::count_if(lines.begin(), lines.end(),
                        [](const std::string& l) { return l.starts_with("opened 1"); }) == 2);
    CHECK((c.has("moved 1 A 7/0") || c.has("moved 1 B 7/0")));
    CHECK((c.has("moved 1 A 3/0") || c.has("moved 1 B 3/0")));
    auto done = hbone(1, "shop/api");
    done.reason = CloseReason::kEof;
    a.closed(0, done);
    a.finish();
    CHECK(eventually([&] { return b_receives->done(); }, 2s));
    b_receives.reset();
    b.finish();
    CHECK(eventually([&] { return c_receives.done(); }, 2s));
    lines = c.lines();
    // A's connection closed in order; B's own one, left open by B's end, closed as such.
    CHECK(std::count_if(lines.begin(), lines.end(), [](const std::string& l) {
            return l.starts_with("closed 1") && l.find(" eof ") != std::string::npos;
          }) == 1);
    CHECK(std::count_if(lines.begin(), lines.end(), [](const std::string& l) {
            return l.starts_with("closed 1") && l.find("proxy_shutdown") != std::string::npos;
          }) == 1);
  }

  TEST_CASE("many connections at once go in several messages, a handed-over one not at all") {
    Recorder local, successor;
    Pair pair;
    ObservationForwarder fwd(local);
    fwd.hold();
    constexpr uint64_t kConns = 400;  // ~250 KiB of events: several 48 KiB messages
    for (uint64_t i = 1; i <= kConns; ++i) fwd.transferred(0, hbone(i, "shop/api"), i, 1);
    auto handed = hbone(kConns + 1, "shop/api");
    handed.reason = CloseReason::kHandedOver;
    fwd.closed(0, handed);  // nothing kept of it: the successor continues it
    fwd.forward(std::move(pair.old_end));
    ObservationReceiver receiver(std::move(pair.new_end), successor, 0);
    fwd.finish();
    CHECK(eventually([&] { return receiver.done(); }, 5s));
    auto lines = successor.lines();
    uint64_t moved = 0;
    for (const auto& l : lines)
      if (l.starts_with("moved")) ++moved;
    CHECK(moved == kConns);
    CHECK(std::none_of(lines.begin(), lines.end(), [](const std::string& l) {
      return l.find("handed_over") != std::string::npos;
    }));
  }

  TEST_CASE("a successor that does not ask: nothing is kept") {
    Recorder local;
    ObservationForwarder fwd(local);
    fwd.hold();
    fwd.transferred(0, hbone(1, "shop/api"), 1, 1);
    fwd.forward(UniqueFd());
    fwd.transferred(0, hbone(1, "shop/api"), 1, 1);
    fwd.finish();
    CHECK(local.lines().size() == 2);
  }

  TEST_CASE("a record survives the wire, and a bad one is refused") {
    auto r = hbone(42, "shop/api");
    r.destination_service = "shop/api";
    r.inbound_service = "shop/web";
    r.state = ztunnel::ConnState::kClosed;
    r.reason = CloseReason::kRefused;
    r.reason_detail = "403";
    r.retried = true;
    r.duration_ms = 77;
    nlohmann::json j;
    writeRecord(r, j);
    auto back = readRecord(j);
    REQUIRE(back.has_value());
    CHECK(back->id == 42);
    CHECK(back->reasonText() == r.reasonText());
    CHECK(back->destination_service == "shop/api");
    CHECK(back->inbound_service == "shop/web");
    CHECK(back->duration_ms == 77);
    CHECK(back->mutual_tls);
    CHECK(back->retried);
    for (const char* key : {"path", "reason", "direction", "state"}) {
      CAPTURE(key);
      nlohmann::json bad = j;
      bad[key] = 99;
      CHECK_FALSE(readRecord(bad).has_value());
      bad.erase(key);
      if (std::string(key) == "path" || std::string(key) == "direction")
        CHECK_FALSE(readRecord(bad).has_value());
    }
  }

  TEST_CASE("the handover offers the drain to a successor that asks for it") {
    struct Agent final : HandoverServer::Handler {
      explicit Agent(ObservationForwarder& f) : fwd(f) {}
      Result<std::vector<ztunnel::ListenerFd>> freeze() override {
        return std::vector<ztunnel::ListenerFd>{};
      }
      void release() override { fwd.hold(); }
      void observationsTo(UniqueFd sock) override { fwd.forward(std::move(sock)); }
      void thaw(const std::string&) override {}
      ObservationForwarder& fwd;
    };
    std::string dir = "/tmp/sluice-observations-test-" + std::to_string(::getpid());
    std::filesystem::create_directories(dir);
    Recorder local, successor;
    {
      ObservationForwarder fwd(local);
      Agent old_agent(fwd);
      auto server = HandoverServer::create(dir + "/handover.sock", old_agent, ::getuid());
      REQUIRE(server.has_value());
      auto client = HandoverClient::connect(dir + "/handover.sock", 5s, ::getuid());
      REQUIRE(client.has_value());
      REQUIRE(*client != nullptr);
      REQUIRE((*client)->release().has_value());
      auto receiver = (*client)->receiveObservations(successor, 4);
      REQUIRE(receiver != nullptr);
      fwd.opened(0, hbone(9, "shop/api"));
      fwd.closed(0, hbone(9, "shop/api"));
      CHECK(eventually([&] { return successor.lines().size() == 2; }, 2s));
      CHECK(successor.has("opened 4 A adopted=false pod=shop/api dst=10.2.0.2:8080 mtls=true"));
      server->reset();
      fwd.finish();
      CHECK(eventually([&] { return receiver->done(); }, 2s));
    }
    std::filesystem::remove_all(dir);
  }
}
