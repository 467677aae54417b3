#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "agent/pods/pod_manager.h"

#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>

#include "agent/wiring/cni_bridge.h"
#include "sluice/common/addr.h"
#include "sluice/common/ip6.h"
#include "support/bpf_env.h"
#include "support/scratch_netns.h"

using namespace sluice;
using namespace sluice::agent;

namespace {

// Records what the pod manager asks of the engine.
class FakeEngine final : public ztunnel::Engine {
 public:
  Result<void> addPod(const ztunnel::PodSpec& pod) override {
    std::lock_guard lk(mu);
    if (fail_next) {
      fail_next = false;
      return fail("listener creation refused by the fake");
    }
    pods.insert(pod.uid);
    service_accounts[pod.uid] = pod.service_account;
    ++adds;
    return {};
  }
  void removePod(const std::string& uid) override {
    std::lock_guard lk(mu);
    pods.erase(uid);
    service_accounts.erase(uid);
  }
  std::vector<ztunnel::ListenerInfo> listeners() const override { return {}; }
  std::vector<ztunnel::ConnectionRecord> connections() const override { return {}; }
  void countSpliced() const override {}
  size_t resetConnections(uint64_t, const std::string&) override { return 0; }
  ztunnel::EngineStats stats() const override { return {}; }
  void reauthorize() override {}
  std::vector<ztunnel::ListenerFd> exportListeners() override { return {}; }
  void adoptListeners(std::vector<ztunnel::ListenerFd>) override {}
  std::vector<ztunnel::ConnectionFd> exportConnections() override { return {}; }
  size_t adoptConnections(std::vector<ztunnel::ConnectionFd>) override { return 0; }
  void stopAccepting() override {}
  size_t drain(std::chrono::milliseconds) override { return 0; }
  void stop() override {}

  bool has(const std::string& uid) {
    std::lock_guard lk(mu);
    return pods.count(uid) != 0;
  }
  // The service account the engine was given for uid (its identity).
  std::string serviceAccount(const std::string& uid) {
    std::lock_guard lk(mu);
    auto it = service_accounts.find(uid);
    return it == service_accounts.end() ? "<not registered>" : it->second;
  }
  void forget() {  // the old process and its listeners are gone
    std::lock_guard lk(mu);
    pods.clear();
    service_accounts.clear();
  }
  std::mutex mu;
  std::set<std::string> pods;
  std::map<std::string, std::string> service_accounts;
  int adds = 0;
  bool fail_next = false;
};

struct Fixture {
  test::ScratchNetns pod;
  std::string pin = "/sys/fs/bpf/sluice-test-pods-" + std::to_string(::getpid());
  std::string state = "/tmp/sluice-test-pods-" + std::to_string(::getpid());
  std::unique_ptr<bpf::Loader> loader;
  FakeEngine engine;
  uint64_t cookie = 0;

  Fixture() {
    pod.sh(
        "ip link add eth0 type veth peer name peer0 && ip link set eth0 up && ip link set peer0 up "
        "&& "
        "ip addr add 10.77.2.5/24 dev eth0");
    auto l = bpf::Loader::create({pin, test::cgroup2(), {}});
    REQUIRE_MESSAGE(l.has_value(), (l ? "" : l.error().describe()));
    loader = std::move(*l);
    cookie = *netnsCookie(pod.fd());
  }
  ~Fixture() {
    loader.reset();
    (void)bpf::Loader::removePinned(pin);
    std::filesystem::remove_all(state);
  }
  pods::PodRef ref() const {
    return {"uid-1", "shop", "web", "ctr-1", pod.path(), "eth0", *parseIp4("10.77.2.5"), ""};
  }
  static std::map<std::string, pods::Workload> view(bool enrolled) {
    pods::Workload w;
    w.set_uid("uid-1");
    w.set_name("web");
    w.set_namespace_("shop");
    w.set_service_account("web");
    w.set_enrolled(enrolled);
    return {{"uid-1", w}};
  }
};

}  // namespace

TEST_SUITE("pod_manager") {
  TEST_CASE("ADD enrolls a meshed pod: listeners - tc filter - enrolled map - DEL undoes it") {
    Fixture f;
    pods::PodManager pm(*f.loader, f.engine, f.state + "/pods.json", "mesh.example");
    pm.onWorkloads(Fixture::view(true), 1);
    auto r = pm.add(f.ref(), std::chrono::milliseconds(100));
    REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().describe()));
    CHECK(*r);
    CHECK(f.engine.has("ctr-1"));
    CHECK(pm.knows("ctr-1"));
    // Its identity, in the manager's trust domain.
    CHECK(pm.enrolledIdentities() == std::set<std::string>{"spiffe://mesh.example/ns/shop/sa/web"});
    auto e = f.loader->enrolled().lookup(f.cookie);
    REQUIRE(e.has_value());
    CHECK(formatIp4(e->pod_ip4) == "10.77.2.5");
    CHECK(pm.check("ctr-1", "uid-1").has_value());
    // tc filter is really there.
    int rc = -1;
    (void)runInNetns(f.pod.fd(), [&] {
      rc = std::system("tc filter show dev eth0 ingress | grep -q sluice_tc_inbou");
    });
    CHECK(rc == 0);

    pm.remove("ctr-1", "uid-1", f.pod.path());
    CHECK(pm.enrolledIdentities().empty());
    CHECK_FALSE(f.engine.has("ctr-1"));
    CHECK_FALSE(f.loader->enrolled().lookup(f.cookie).has_value());
    pm.remove("ctr-1", "uid-1", f.pod.path());  // DEL twice is fine
    CHECK_FALSE(pm.check("ctr-1", "uid-1").has_value());
    CHECK_FALSE(pm.knows("ctr-1"));  // CNI code 3 for its CHECK (CniBridge)
  }

  TEST_CASE("label flips enroll and unenroll a running pod") {
    Fixture f;
    pods::PodManager pm(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
    pm.onWorkloads(Fixture::view(false), 1);
    auto r = pm.add(f.ref(), std::chrono::milliseconds(100));
    REQUIRE(r.has_value());
    CHECK_FALSE(*r);
    CHECK_FALSE(f.loader->enrolled().lookup(f.cookie).has_value());
    pm.onWorkloads(Fixture::view(true), 2);
    CHECK(f.loader->enrolled().lookup(f.cookie).has_value());
    CHECK(f.engine.has("ctr-1"));
    pm.onWorkloads(Fixture::view(false), 3);
    CHECK_FALSE(f.loader->enrolled().lookup(f.cookie).has_value());
    CHECK_FALSE(f.engine.has("ctr-1"));
  }

  TEST_CASE("frozen for a handover: views and CNI change nothing - thaw catches up") {
    Fixture f;
    pods::PodManager pm(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
    pm.onWorkloads(Fixture::view(true), 1);
    REQUIRE(pm.add(f.ref(), std::chrono::milliseconds(100)).has_value());
    REQUIRE(f.engine.has("ctr-1"));
    pm.freeze();
    pm.onWorkloads(Fixture::view(false), 2);  // would unenroll
    CHECK(f.engine.has("ctr-1"));
    CHECK(f.loader->enrolled().lookup(f.cookie).has_value());
    pods::PodRef other = f.ref();
    other.container_id = "ctr-2";
    auto refused = pm.add(other, std::chrono::milliseconds(10));
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().describe().find("handing over") != std::string::npos);
    CHECK(refused.error().code == EAGAIN);
    // What the plugin is told: CNI code 11, the runtime retries (the
    // successor answers), not an internal error.
    wiring::CniBridge bridge(pm, std::chrono::milliseconds(10), [] {});
    sluice::cni::CniRequest req;
    req.command = "ADD";
    req.container_id = "ctr-2";
    req.pod_uid = "uid-1";
    req.pod_namespace = other.ns;
    req.pod_name = other.name;
    req.netns = other.netns_path;
    auto reply = bridge.handle(req);
    CHECK_FALSE(reply.ok);
    CHECK(reply.code == sluice::cni::kReplyTryAgainLater);
    pm.remove("ctr-1", "uid-1", f.pod.path());  // the successor owns the pod now
    CHECK(f.engine.has("ctr-1"));
    pm.thaw();  // the handover did not finish: the latest view applies
    CHECK_FALSE(f.engine.has("ctr-1"));
    CHECK_FALSE(f.loader->enrolled().lookup(f.cookie).has_value());
  }

  TEST_CASE("a pod unknown to the control plane waits - then enrolls when it appears") {
    Fixture f;
    pods::PodManager pm(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
    pm.onWorkloads({}, 1);
    auto r = pm.add(f.ref(), std::chrono::milliseconds(50));
    REQUIRE(r.has_value());
    CHECK_FALSE(*r);
    pm.onWorkloads(Fixture::view(true), 2);
    CHECK(f.loader->enrolled().lookup(f.cookie).has_value());
  }

  TEST_CASE(
      "dual stack: the IPv6 address is kept and survives a restart - an IPv6-only pod is "
      "enrolled") {
    Fixture f;
    pods::PodRef dual = f.ref();
    dual.ip6 = "fd00:244:1::5";
    {
      pods::PodManager pm(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
      pm.onWorkloads(Fixture::view(true), 1);
      REQUIRE(pm.add(dual, std::chrono::milliseconds(50)).value_or(false));
      auto dump = pm.dump();
      REQUIRE(dump["pods"].size() == 1);
      CHECK(dump["pods"][0]["ip"] == "10.77.2.5");
      CHECK(dump["pods"][0]["ip6"] == "fd00:244:1::5");
    }
    // connect6 knows the pod's own IPv6 address (never captured towards it).
    auto own6 = [&] {
      auto v = f.loader->enrolled6().lookup(f.cookie);
      if (!v) return std::string("none");
      in6_addr a{};
      std::memcpy(&a, v->pod_ip6, sizeof(a));
      return formatIp6(a);
    };
    CHECK(own6() == "fd00:244:1::5");
    f.engine.forget();
    pods::PodManager again(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
    again.restore();
    CHECK(again.dump()["pods"][0]["ip6"] == "fd00:244:1::5");
    CHECK(own6() == "fd00:244:1::5");
    again.remove("ctr-1", "uid-1", f.pod.path());
    CHECK(own6() == "none");
    again.onWorkloads(Fixture::view(true), 2);

    pods::PodRef v6only = dual;
    v6only.ip4 = 0;
    v6only.container_id = "ctr-6";
    // An IPv6-only pod is meshed too (the proxy listens on its IPv6 address).
    auto r = again.add(v6only, std::chrono::milliseconds(50));
    REQUIRE(r.value_or(false));
    CHECK(f.engine.has("ctr-6"));
    CHECK(own6() == "fd00:244:1::5");
    again.remove("ctr-6", "uid-1", f.pod.path());
    CHECK_FALSE(f.engine.has("ctr-6"));
    CHECK(own6() == "none");
    // Without any address there is nothing to mesh: refused, nothing left behind.
    pods::PodRef none = v6only;
    none.ip6.clear();
    none.container_id = "ctr-0";
    auto r0 = again.add(none, std::chrono::milliseconds(50));
    REQUIRE_FALSE(r0.has_value());
    CHECK(r0.error().describe().find("no IP address") != std::string::npos);
    CHECK_FALSE(f.loader->enrolled().lookup(f.cookie).has_value());
    CHECK_FALSE(f.engine.has("ctr-0"));
  }

  TEST_CASE("a repeated ADD is idempotent - one naming another pod or netns is refused") {
    Fixture f;
    pods::PodManager pm(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
    pm.onWorkloads(Fixture::view(true), 1);
    REQUIRE(pm.add(f.ref(), std::chrono::milliseconds(50)).value_or(false));
    CHECK(pm.add(f.ref(), std::chrono::milliseconds(50)).value_or(false));  // a runtime's retry
    pods::PodRef other = f.ref();
    other.name = "ghost";
    auto r = pm.add(other, std::chrono::milliseconds(50));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().describe().find("already added as pod shop/web") != std::string::npos);
    pods::PodRef twin = f.ref();
    twin.container_id = "ctr-2";
    twin.name = "twin";
    r = pm.add(twin, std::chrono::milliseconds(50));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().describe().find("one network namespace is one pod") != std::string::npos);
    CHECK(pm.dump()["pods"].size() == 1);
    CHECK(pm.enrolledCount() == 1);
  }

  TEST_CASE(
      "a repeated DEL of a replaced sandbox leaves the pod's new sandbox (same uid) enrolled") {
    Fixture f;
    test::ScratchNetns replacement;
    replacement.sh(
        "ip link add eth0 type veth peer name peer0 && ip link set eth0 up && ip link set peer0 "
        "up && ip addr add 10.77.2.6/24 dev eth0");
    uint64_t replacement_cookie = *netnsCookie(replacement.fd());
    pods::PodManager pm(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
    pm.onWorkloads(Fixture::view(true), 1);
    REQUIRE(pm.add(f.ref(), std::chrono::milliseconds(50)).value_or(false));
    pm.remove("ctr-1", "uid-1", f.pod.path());
    // The pod's sandbox is re-created: same pod uid, another container and netns.
    pods::PodRef again = f.ref();
    again.container_id = "ctr-1b";
    again.netns_path = replacement.path();
    again.ip4 = *parseIp4("10.77.2.6");
    REQUIRE(pm.add(again, std::chrono::milliseconds(50)).value_or(false));
    // The runtime repeats the first sandbox's DEL (with and without its netns).
    pm.remove("ctr-1", "uid-1", f.pod.path());
    pm.remove("ctr-1", "uid-1", "");
    CHECK(f.engine.has("ctr-1b"));
    CHECK(f.loader->enrolled().lookup(replacement_cookie).has_value());
    CHECK(pm.enrolledCount() == 1);
    CHECK(pm.check("ctr-1b", "uid-1").has_value());
    pm.remove("ctr-1b", "uid-1", replacement.path());
    CHECK_FALSE(f.engine.has("ctr-1b"));
    CHECK_FALSE(f.loader->enrolled().lookup(replacement_cookie).has_value());
  }

  TEST_CASE(
      "a record kept without a container id is removed by its uid and netns both - never by the "
      "uid alone") {
    Fixture f;
    {
      pods::PodManager pm(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
      pm.onWorkloads(Fixture::view(true), 1);
      REQUIRE(pm.add(f.ref(), std::chrono::milliseconds(50)).value_or(false));
    }
    nlohmann::json state;
    {
      std::ifstream in(f.state + "/pods.json");
      state = nlohmann::json::parse(in);
    }
    state["pods"][0]["container_id"] = "";  // a hand-edited or foreign state file
    {
      std::ofstream out(f.state + "/pods.json", std::ios::trunc);
      out << state.dump();
    }
    f.engine.forget();
    pods::PodManager pm(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
    pm.restore();
    REQUIRE(pm.enrolledCount() == 1);
    pm.remove("ctr-other", "uid-1", "/run/netns/sluice-test-another-netns");
    pm.remove("ctr-other", "uid-1", "");
    CHECK(pm.enrolledCount() == 1);
    CHECK(f.loader->enrolled().lookup(f.cookie).has_value());
    pm.remove("ctr-other", "uid-1", f.pod.path());
    CHECK(pm.enrolledCount() == 0);
    CHECK_FALSE(f.loader->enrolled().lookup(f.cookie).has_value());
  }

  TEST_CASE("a repeated ADD with other addresses: the pod is enrolled under the new ones") {
    Fixture f;
    pods::PodManager pm(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
    pm.onWorkloads(Fixture::view(true), 1);
    REQUIRE(pm.add(f.ref(), std::chrono::milliseconds(50)).value_or(false));
    pods::PodRef moved = f.ref();
    moved.ip4 = *parseIp4("10.77.2.7");
    moved.ip6 = "fd00:244:1::7";
    REQUIRE(pm.add(moved, std::chrono::milliseconds(50)).value_or(false));
    auto dump = pm.dump();
    REQUIRE(dump["pods"].size() == 1);
    CHECK(dump["pods"][0]["ip"] == "10.77.2.7");
    CHECK(dump["pods"][0]["ip6"] == "fd00:244:1::7");
    CHECK(dump["pods"][0]["enrolled"] == true);
    auto e = f.loader->enrolled().lookup(f.cookie);
    REQUIRE(e.has_value());
    CHECK(formatIp4(e->pod_ip4) == "10.77.2.7");
    CHECK(f.engine.has("ctr-1"));
    // Kept for a restart too.
    {
      std::ifstream in(f.state + "/pods.json");
      CHECK(nlohmann::json::parse(in)["pods"][0]["ip"] == "10.77.2.7");
    }
    pm.remove("ctr-1", "uid-1", f.pod.path());
    CHECK_FALSE(f.loader->enrolled().lookup(f.cookie).has_value());
  }

  TEST_CASE("an enrollment failure fails ADD and leaves no capture behind") {
    Fixture f;
    pods::PodManager pm(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
    pm.onWorkloads(Fixture::view(true), 1);
    f.engine.fail_next = true;
    auto r = pm.add(f.ref(), std::chrono::milliseconds(50));
    CHECK_FALSE(r.has_value());
    CHECK_FALSE(f.loader->enrolled().lookup(f.cookie).has_value());
  }

  TEST_CASE(
      "restart: a new manager re-adopts enrolled pods from the state file, drops the cookies "
      "of pods gone, and keeps those it cannot account for") {
    Fixture f;
    {
      pods::PodManager pm(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
      pm.onWorkloads(Fixture::view(true), 1);
      REQUIRE(pm.add(f.ref(), std::chrono::milliseconds(50)).value_or(false));
    }
    f.engine.pods.clear();  // the old process and its listeners are gone
    // A pod of the state file whose netns is gone (424242), and a cookie no
    // pod of it has (515151: its state was lost).
    {
      std::ifstream in(f.state + "/pods.json");
      auto state = nlohmann::json::parse(in);
      auto gone = state["pods"][0];
      gone["container_id"] = "ctr-gone";
      gone["netns"] = "/run/netns/sluice-test-no-such-netns";
      gone["netns_cookie"] = 424242;
      state["pods"].push_back(gone);
      std::ofstream(f.state + "/pods.json") << state.dump();
    }
    REQUIRE(f.loader->enrolled().update(424242, sluice_enrolled{1, 0}).has_value());
    REQUIRE(f.loader->enrolled().update(515151, sluice_enrolled{1, 0}).has_value());
    pods::PodManager again(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
    again.restore();
    CHECK(f.engine.has("ctr-1"));
    CHECK(f.loader->enrolled().lookup(f.cookie).has_value());
    CHECK_FALSE(f.loader->enrolled().lookup(424242).has_value());
    CHECK(f.loader->enrolled().lookup(515151).has_value());  // fail closed
    CHECK(again.enrolledCount() == 1);
    f.loader->unenroll(515151);
  }

  TEST_CASE("restart: a pod that cannot be re-adopted stays captured until it leaves the mesh") {
    Fixture f;
    {
      pods::PodManager pm(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
      pm.onWorkloads(Fixture::view(true), 1);
      REQUIRE(pm.add(f.ref(), std::chrono::milliseconds(50)).value_or(false));
    }
    f.engine.forget();
    f.engine.fail_next = true;  // the re-adoption's listeners are refused
    pods::PodManager again(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
    again.restore();
    CHECK(again.enrolledCount() == 0);
    CHECK(f.loader->enrolled().lookup(f.cookie).has_value());  // refused, not plaintext
    CHECK(again.dump()["pods"][0]["held_capture"] == true);
    // The namespace leaves the mesh: the capture goes.
    again.onWorkloads(Fixture::view(false), 1);
    CHECK_FALSE(f.loader->enrolled().lookup(f.cookie).has_value());
    CHECK(again.dump()["pods"][0]["held_capture"] == false);
  }

  TEST_CASE("restart with an unreadable state file: enrolled pods stay captured (fail closed)") {
    Fixture f;
    {
      pods::PodManager pm(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
      pm.onWorkloads(Fixture::view(true), 1);
      REQUIRE(pm.add(f.ref(), std::chrono::milliseconds(50)).value_or(false));
    }
    f.engine.forget();
    std::ofstream(f.state + "/pods.json") << "{\"version\": 1, \"pods\": [ {\"container_id\": ";
    pods::PodManager again(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
    again.restore();
    CHECK(again.enrolledCount() == 0);
    CHECK_FALSE(f.engine.has("ctr-1"));
    // Still captured: its connections meet no listener (refused), never plaintext.
    CHECK(f.loader->enrolled().lookup(f.cookie).has_value());
    // The rewritten state file is whole again.
    std::ifstream in(f.state + "/pods.json");
    CHECK_FALSE(nlohmann::json::parse(in, nullptr, false).is_discarded());
    f.loader->unenroll(f.cookie);
  }

  TEST_CASE("restart: the pod keeps its service account - the engine gets its real identity") {
    Fixture f;
    {
      pods::PodManager pm(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
      pm.onWorkloads(Fixture::view(true), 1);
      REQUIRE(pm.add(f.ref(), std::chrono::milliseconds(50)).value_or(false));
      CHECK(f.engine.serviceAccount("ctr-1") == "web");
    }
    f.engine.forget();
    pods::PodManager again(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
    again.restore();  // no control plane yet
    CHECK(f.engine.serviceAccount("ctr-1") == "web");
    CHECK(again.enrolledIdentities() ==
          std::set<std::string>{"spiffe://cluster.local/ns/shop/sa/web"});
    // The first view changes nothing for it.
    int adds = f.engine.adds;
    again.onWorkloads(Fixture::view(true), 2);
    CHECK(f.engine.adds == adds);
    CHECK(f.engine.serviceAccount("ctr-1") == "web");
  }

  TEST_CASE(
      "restart from a state file without service accounts: the first view re-registers the pod "
      "with the engine under its identity - capture stays in place") {
    Fixture f;
    {
      pods::PodManager pm(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
      pm.onWorkloads(Fixture::view(true), 1);
      REQUIRE(pm.add(f.ref(), std::chrono::milliseconds(50)).value_or(false));
    }
    // What an older agent wrote: no service_account in the entries.
    nlohmann::json state;
    {
      std::ifstream in(f.state + "/pods.json");
      state = nlohmann::json::parse(in);
    }
    for (auto& p : state["pods"]) p.erase("service_account");
    {
      std::ofstream out(f.state + "/pods.json", std::ios::trunc);
      out << state.dump();
    }
    f.engine.forget();
    pods::PodManager again(*f.loader, f.engine, f.state + "/pods.json", "cluster.local");
    again.restore();
    REQUIRE(f.engine.has("ctr-1"));  // re-adopted: capture fails closed, never open
    CHECK(f.engine.serviceAccount("ctr-1") == "");
    CHECK(again.enrolledIdentities().empty());  // no service account, no identity yet
    again.onWorkloads(Fixture::view(true), 2);
    CHECK(f.engine.serviceAccount("ctr-1") == "web");
    CHECK(f.loader->enrolled().lookup(f.cookie).has_value());
    CHECK(again.check("ctr-1", "uid-1").has_value());
    CHECK(again.enrolledIdentities() ==
          std::set<std::string>{"spiffe://cluster.local/ns/shop/sa/web"});
    // And the state file has it now.
    std::ifstream in(f.state + "/pods.json");
    CHECK(nlohmann::json::parse(in)["pods"][0]["service_account"] == "web");
  }
}
