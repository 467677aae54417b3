// Runs the real sluice-cni binary against the real agent-side Server with a
// fake Handler, as a container runtime would.
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "agent/cni/server.h"
#include "cni-plugin/agent_client.h"
#include "sluice/common/unique_fd.h"

using namespace sluice;
using nlohmann::json;

namespace {

struct Run {
  int status = -1;
  std::string out;
};

Run runPlugin(const std::string& command, const std::string& stdin_text,
              const std::string& extra_env = "") {
  std::string in = "/tmp/sluice-cni-test-in-" + std::to_string(getpid());
  FILE* f = std::fopen(in.c_str(), "w");
  std::fwrite(stdin_text.data(), 1, stdin_text.size(), f);
  std::fclose(f);
  std::string cmd =
      "env -i CNI_COMMAND=" + command +
      " CNI_CONTAINERID=ctr1 CNI_NETNS=/var/run/netns/x CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni "
      "CNI_ARGS='IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;K8S_POD_UID=u1' " +
      extra_env + " " SLUICE_CNI_BINARY " < " + in;
  Run r;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  r.status = pclose(p);
  std::filesystem::remove(in);
  return r;
}

std::string conf(const std::string& sock, bool fail_open = false) {
  return json{
      {"cniVersion", "1.0.0"},
      {"name", "test"},
      {"type", "sluice-cni"},
      {"agentSocket", sock},
      {"failOpen", fail_open},
      {"timeoutMs", 1000},
      {"prevResult",
       {{"cniVersion", "1.0.0"},
        {"interfaces", {{{"name", "eth0"}, {"sandbox", "/var/run/netns/x"}}}},
        {"ips", {{{"address", "10.244.1.9/24"}, {"interface", 0}, {"gateway", "10.244.1.1"}}}},
        {"dns", json::object()}}}}
      .dump();
}

class FakeHandler : public agent::cni::Handler {
 public:
  agent::cni::CniReply handle(const agent::cni::CniRequest& r) override {
    last = r;
    calls++;
    if (refuse) return {false, false, "pod refused by policy", ""};
    if (unknown)
      return {false, false, "the sluice agent does not know container " + r.container_id, "",
              cni::kReplyUnknownContainer};
    return {true, true, "", ""};
  }
  agent::cni::CniRequest last;
  std::atomic<int> calls{0};
  bool refuse = false;
  bool unknown = false;
};

// Holds every request until release(): fills the server's in-flight slots.
class BlockingHandler : public agent::cni::Handler {
 public:
  agent::cni::CniReply handle(const agent::cni::CniRequest&) override {
    std::unique_lock lk(mu);
    ++held;
    changed.notify_all();
    changed.wait(lk, [&] { return released; });
    return {true, false, "", ""};
  }
  void release() {
    std::lock_guard lk(mu);
    released = true;
    changed.notify_all();
  }
  bool waitHeld(int n) {
    std::unique_lock lk(mu);
    return changed.wait_for(lk, std::chrono::seconds(10), [&] { return held >= n; });
  }
  std::mutex mu;
  std::condition_variable changed;
  int held = 0;
  bool released = false;
};

sluice::UniqueFd connectTo(const std::string& path) {
  sluice::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  REQUIRE(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  return fd;
}

std::vector<std::string> logLines(const std::string& path) {
  std::vector<std::string> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// An agent (a FakeHandler) on `sock`, and a configuration for it that logs
// to a file of its own, removed again at the end.
struct LoggingAgent {
  explicit LoggingAgent(const std::string& sock)
      : server(agent::cni::Server::create(sock, h)), config(json::parse(conf(sock))) {
    REQUIRE(server.has_value());
    std::filesystem::remove(log);
    config["logFile"] = log;
  }
  ~LoggingAgent() { std::filesystem::remove(log); }
  std::vector<std::string> lines() const { return logLines(log); }
  FakeHandler h;
  sluice::Result<std::unique_ptr<agent::cni::Server>> server;
  const std::string log = "/tmp/sluice-cni-test-log-" + std::to_string(getpid());
  json config;
};

}  // namespace

TEST_SUITE("plugin") {
  const std::string sock = "/tmp/sluice-cni-test-" + std::to_string(getpid()) + ".sock";

  TEST_CASE("ADD passes prevResult through unchanged and tells the agent") {
    FakeHandler h;
    auto server = agent::cni::Server::create(sock, h);
    REQUIRE(server.has_value());
    auto r = runPlugin("ADD", conf(sock));
    CHECK(WEXITSTATUS(r.status) == 0);
    CHECK(json::parse(r.out) == json::parse(conf(sock))["prevResult"]);
    CHECK(h.last.pod_namespace == "shop");
    CHECK(h.last.pod_uid == "u1");
    CHECK(h.last.ips == std::vector<std::string>{"10.244.1.9"});
    CHECK(WEXITSTATUS(runPlugin("CHECK", conf(sock)).status) == 0);
  }
  TEST_CASE("agent refusal is a CNI error") {
    FakeHandler h;
    h.refuse = true;
    auto server = agent::cni::Server::create(sock, h);
    REQUIRE(server.has_value());
    auto r = runPlugin("ADD", conf(sock));
    CHECK(WEXITSTATUS(r.status) != 0);
    auto err = json::parse(r.out);
    CHECK(err["msg"].get<std::string>().find("refused by policy") != std::string::npos);
    CHECK(WEXITSTATUS(runPlugin("DEL", conf(sock)).status) == 0);  // DEL never blocks cleanup
  }
  TEST_CASE(
      "agent unreachable: ADD fails closed (code 11) - failOpen passes - DEL succeeds twice") {
    std::filesystem::remove(sock);
    auto r = runPlugin("ADD", conf(sock));
    CHECK(WEXITSTATUS(r.status) != 0);
    auto err = json::parse(r.out);
    CHECK(err["code"] == 11);
    CHECK(err["msg"].get<std::string>().find("unreachable") != std::string::npos);
    auto open = runPlugin("ADD", conf(sock, true));
    CHECK(WEXITSTATUS(open.status) == 0);
    CHECK(json::parse(open.out) == json::parse(conf(sock))["prevResult"]);
    CHECK(WEXITSTATUS(runPlugin("DEL", conf(sock)).status) == 0);
    CHECK(WEXITSTATUS(runPlugin("DEL", conf(sock)).status) == 0);
  }
  // By hand (no CNI_COMMAND): what the command line `args` prints, and its exit status.
  std::pair<std::string, int> byHand(const std::string& args) {
    std::string cmd = "env -i " SLUICE_CNI_BINARY " " + args + " 2>&1";
    FILE* p = popen(cmd.c_str(), "r");
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
    int status = pclose(p);
    return {out, WEXITSTATUS(status)};
  }
  TEST_CASE("run by hand with an unknown command: says so, not a CNI error object") {
    auto [out, status] = byHand("bogus");
    CHECK(status == 2);
    CHECK(out.find("unknown command 'bogus'") != std::string::npos);
    CHECK(out.find("\"code\"") == std::string::npos);
  }
  TEST_CASE("--version names the CNI protocol versions it speaks, as the reference plugins do") {
    auto [out, status] = byHand("--version");
    CHECK(status == 0);
    CHECK(out ==
          "CNI sluice-cni plugin\nCNI protocol versions supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0\n");
  }

  TEST_CASE("malformed stdin is a CNI error object - the agent is never called") {
    FakeHandler h;
    auto server = agent::cni::Server::create(sock, h);
    REQUIRE(server.has_value());
    for (std::string bad :
         {std::string(""), std::string("{"), std::string("\xff\xfe garbage"),
          std::string(R"({"cniVersion":"1.0.0"})") /* ADD without prevResult */}) {
      auto r = runPlugin("ADD", bad);
      CHECK(WEXITSTATUS(r.status) != 0);
      auto err = json::parse(r.out, nullptr, false);
      REQUIRE_FALSE(err.is_discarded());
      CHECK(err.contains("code"));
      CHECK(err.contains("msg"));
    }
    CHECK(h.calls == 0);
  }
  TEST_CASE("cniVersion 0.3.1 (flannel, Calico): ADD and DEL work, CHECK is refused as undefined") {
    FakeHandler h;
    auto server = agent::cni::Server::create(sock, h);
    REQUIRE(server.has_value());
    auto c = json::parse(conf(sock));
    c["cniVersion"] = "0.3.1";
    c["prevResult"] = {
        {"cniVersion", "0.3.1"},
        {"interfaces", {{{"name", "eth0"}, {"sandbox", "/var/run/netns/x"}}}},
        {"ips", {{{"version", "4"}, {"address", "10.244.1.7/24"}, {"interface", 0}}}},
        {"dns", json::object()}};
    auto r = runPlugin("ADD", c.dump());
    CHECK(WEXITSTATUS(r.status) == 0);
    CHECK(json::parse(r.out) == c["prevResult"]);
    CHECK(h.last.ips == std::vector<std::string>{"10.244.1.7"});
    auto check = runPlugin("CHECK", c.dump());
    CHECK(WEXITSTATUS(check.status) != 0);
    CHECK(json::parse(check.out)["code"] == 1);  // "Incompatible CNI version"
    CHECK(h.calls == 1);
    CHECK(WEXITSTATUS(runPlugin("DEL", c.dump()).status) == 0);
  }
  TEST_CASE(
      "no K8S_POD_NAMESPACE (podman's CNI backend): ADD passes through unmeshed, says so, and "
      "never tells the agent - its DEL does") {
    FakeHandler h;
    auto server = agent::cni::Server::create(sock, h);
    REQUIRE(server.has_value());
    std::string log = "/tmp/sluice-cni-test-log-" + std::to_string(getpid());
    std::filesystem::remove(log);
    auto c = json::parse(conf(sock));
    c["logFile"] = log;
    // What podman's CNI backend passes: the container's name, nothing of Kubernetes.
    const std::string podman = "CNI_ARGS='IgnoreUnknown=1;K8S_POD_NAME=web' 2>/dev/null";
    auto r = runPlugin("ADD", c.dump(), podman);
    CHECK(WEXITSTATUS(r.status) == 0);
    CHECK(json::parse(r.out) == c["prevResult"]);
    CHECK(WEXITSTATUS(runPlugin("CHECK", c.dump(), podman).status) == 0);
    CHECK(h.calls == 0);  // no pod the agent would keep and could never enroll
    {
      auto lines = logLines(log);
      REQUIRE(lines.size() == 1);  // the ADD (CHECK has nothing to say)
      CHECK(lines[0].find("ADD container ctr1: CNI_ARGS has no K8S_POD_NAMESPACE") !=
            std::string::npos);
      CHECK(lines[0].find("WITHOUT the mesh") != std::string::npos);
    }
    // A namespace without a name is not a pod either.
    auto no_name = runPlugin("ADD", c.dump(), "CNI_ARGS='K8S_POD_NAMESPACE=shop' 2>/dev/null");
    CHECK(WEXITSTATUS(no_name.status) == 0);
    CHECK(h.calls == 0);
    // DEL tells the agent the container all the same (it ignores one it does
    // not know): CNI_ARGS is no proof that the ADD was not a pod's.
    for (std::string args : {podman, std::string("CNI_ARGS= 2>/dev/null"),
                             std::string("CNI_ARGS='IgnoreUnknown=1' 2>/dev/null")}) {
      CAPTURE(args);
      int before = h.calls;
      CHECK(WEXITSTATUS(runPlugin("DEL", c.dump(), args).status) == 0);
      CHECK(h.calls == before + 1);
      CHECK(h.last.command == "DEL");
      CHECK(h.last.container_id == "ctr1");
    }
    std::filesystem::remove(log);
  }
  TEST_CASE("VERSION answers the cniVersion it was asked with, when it speaks it") {
    auto r = runPlugin("VERSION", "");
    CHECK(WEXITSTATUS(r.status) == 0);
    CHECK(json::parse(r.out)["supportedVersions"] ==
          json::array({"0.3.0", "0.3.1", "0.4.0", "1.0.0"}));
    CHECK(json::parse(r.out)["cniVersion"] == "1.0.0");
    for (std::string v : {"0.3.0", "0.3.1", "0.4.0", "1.0.0"}) {
      auto asked = runPlugin("VERSION", json{{"cniVersion", v}}.dump());
      CHECK(WEXITSTATUS(asked.status) == 0);
      CHECK(json::parse(asked.out)["cniVersion"] == v);
    }
    auto unknown = runPlugin("VERSION", R"({"cniVersion":"0.2.0"})");
    CHECK(json::parse(unknown.out)["cniVersion"] == "1.0.0");
  }

  TEST_CASE("the ADD result has the configuration's cniVersion, not prevResult's") {
    FakeHandler h;
    auto server = agent::cni::Server::create(sock, h);
    REQUIRE(server.has_value());
    auto c = json::parse(conf(sock));
    c["prevResult"].erase("cniVersion");  // as some primary plugins leave it
    auto r = runPlugin("ADD", c.dump());
    REQUIRE(WEXITSTATUS(r.status) == 0);
    auto result = json::parse(r.out);
    CHECK(result["cniVersion"] == "1.0.0");
    result.erase("cniVersion");
    CHECK(result == c["prevResult"]);  // otherwise unchanged
    c["cniVersion"] = "0.4.0";
    c["prevResult"]["cniVersion"] = "1.0.0";
    CHECK(json::parse(runPlugin("ADD", c.dump()).out)["cniVersion"] == "0.4.0");
    // Passed through unmeshed (failOpen, not a pod): the same.
    std::filesystem::remove(sock);
    c["failOpen"] = true;
    CHECK(json::parse(runPlugin("ADD", c.dump()).out)["cniVersion"] == "0.4.0");
    CHECK(json::parse(runPlugin("ADD", c.dump(), "CNI_ARGS='K8S_POD_NAME=web' 2>/dev/null")
                          .out)["cniVersion"] == "0.4.0");
  }

  TEST_CASE("only the addresses of the sandbox interface CNI_IFNAME go to the agent") {
    FakeHandler h;
    auto server = agent::cni::Server::create(sock, h);
    REQUIRE(server.has_value());
    auto c = json::parse(conf(sock));
    // bridge's result: the bridge (with its gateway address), the host-side
    // veth, then the pod's eth0 in the sandbox; a second sandbox interface
    // (net1, another network's); an address naming no interface.
    c["prevResult"]["interfaces"] = {{{"name", "cni0"}},
                                     {{"name", "veth1234"}},
                                     {{"name", "eth0"}, {"sandbox", "/var/run/netns/x"}},
                                     {{"name", "net1"}, {"sandbox", "/var/run/netns/x"}}};
    c["prevResult"]["ips"] = {{{"address", "10.244.1.1/24"}, {"interface", 0}},
                              {{"address", "10.244.1.77/24"}, {"interface", 2}},
                              {{"address", "192.168.5.5/24"}, {"interface", 3}},
                              {{"address", "fd00:244::77/64"}}};
    auto r = runPlugin("ADD", c.dump());
    CHECK(WEXITSTATUS(r.status) == 0);
    CHECK(h.last.ips == std::vector<std::string>{"10.244.1.77", "fd00:244::77"});
  }

  TEST_CASE("CHECK of a container the agent does not know is CNI code 3") {
    FakeHandler h;
    h.unknown = true;
    auto server = agent::cni::Server::create(sock, h);
    REQUIRE(server.has_value());
    auto r = runPlugin("CHECK", conf(sock));
    CHECK(WEXITSTATUS(r.status) != 0);
    CHECK(json::parse(r.out)["code"] == 3);
    h.unknown = false;
    h.refuse = true;  // any other refusal stays 999
    CHECK(json::parse(runPlugin("CHECK", conf(sock)).out)["code"] == 999);
  }

  TEST_CASE("CNI_ARGS is logged with its control characters escaped: no forged log line") {
    LoggingAgent a(sock);
    // A newline inside the single quotes: one CNI_ARGS value with two lines.
    std::string forged =
        "CNI_ARGS='K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;X=1\n2026-01-01T00:00:00Z sluice-cni "
        "ADD kube-system/forged: enrolled'";
    auto r = runPlugin("ADD", a.config.dump(), forged);
    CHECK(WEXITSTATUS(r.status) == 0);
    auto lines = a.lines();
    REQUIRE(lines.size() == 1);
    CHECK(lines[0].find("X=1\\x0a2026-01-01T00:00:00Z") != std::string::npos);
  }

  TEST_CASE("DEL with a configuration it cannot fully use still tells the agent, and logs why") {
    LoggingAgent a(sock);
    FakeHandler& h = a.h;
    const json& base = a.config;
    std::vector<json> bad;
    bad.push_back(base);
    bad.back()["cniVersion"] = "1.1.0";
    bad.push_back(base);
    bad.back()["timeoutMs"] = "5000";
    bad.push_back(base);
    bad.back()["failOpen"] = "yes";
    bad.push_back(base);
    bad.back()["prevResult"]["ips"] = json::array({{{"address", "300.1.1.1/24"}}});
    for (const auto& c : bad) {
      CAPTURE(c.dump());
      int before = h.calls;
      auto r = runPlugin("DEL", c.dump(), "2>/dev/null");
      CHECK(WEXITSTATUS(r.status) == 0);
      CHECK(h.calls == before + 1);
      CHECK(h.last.command == "DEL");
      CHECK(h.last.container_id == "ctr1");
    }
    auto lines = a.lines();
    REQUIRE(lines.size() == 2 * bad.size());  // what was wrong, then the DEL
    CHECK(lines[0].find("unsupported cniVersion '1.1.0'") != std::string::npos);
    CHECK(lines[0].find("telling the agent at " + sock) != std::string::npos);
    CHECK(lines[2].find("'timeoutMs' must be an integer") != std::string::npos);
    // ADD is as strict as ever.
    CHECK(json::parse(runPlugin("ADD", bad[1].dump()).out)["code"] == 7);
  }

  TEST_CASE("DEL with a malformed CNI_ARGS entry still tells the agent - ADD refuses it (code 4)") {
    LoggingAgent a(sock);
    FakeHandler& h = a.h;
    const json& c = a.config;
    const std::string args = "CNI_ARGS='K8S_POD_NAMESPACE=shop;stray;K8S_POD_NAME=web'";
    auto r = runPlugin("DEL", c.dump(), args + " 2>/dev/null");
    CHECK(WEXITSTATUS(r.status) == 0);
    REQUIRE(h.calls == 1);
    CHECK(h.last.command == "DEL");
    CHECK(h.last.container_id == "ctr1");
    CHECK(h.last.pod_name == "web");
    auto lines = a.lines();
    REQUIRE(!lines.empty());
    CHECK(lines[0].find("'stray'") != std::string::npos);
    CHECK(lines[0].find("telling the agent anyway") != std::string::npos);
    auto add = runPlugin("ADD", c.dump(), args);
    CHECK(json::parse(add.out)["code"] == 4);
    CHECK(h.calls == 1);
  }

  TEST_CASE(
      "a busy agent (every in-flight slot taken) is CNI code 11 on ADD, failOpen or not, and on "
      "DEL - never 'unreachable'") {
    BlockingHandler h;
    auto server = agent::cni::Server::create(sock, h);
    REQUIRE(server.has_value());
    struct Release {  // before the server waits its requests out, whatever fails
      BlockingHandler& h;
      ~Release() { h.release(); }
    } release{h};
    std::vector<sluice::UniqueFd> held;
    for (int i = 0; i < agent::cni::Server::kMaxInFlight; ++i) {
      held.push_back(connectTo(sock));
      std::string req = cni::encode(
          cni::CniRequest{"DEL", "held-" + std::to_string(i), "", "eth0", "", "", "", {}});
      REQUIRE(::send(held.back().get(), req.data(), req.size(), MSG_NOSIGNAL) ==
              static_cast<ssize_t>(req.size()));
    }
    REQUIRE(h.waitHeld(agent::cni::Server::kMaxInFlight));
    for (bool fail_open : {false, true}) {
      CAPTURE(fail_open);
      auto add = runPlugin("ADD", conf(sock, fail_open));
      CHECK(WEXITSTATUS(add.status) != 0);
      auto err = json::parse(add.out);
      CHECK(err["code"] == 11);
      CHECK(err["msg"].get<std::string>().find("busy") != std::string::npos);
    }
    auto del = runPlugin("DEL", conf(sock));
    CHECK(WEXITSTATUS(del.status) != 0);  // the runtime retries it
    CHECK(json::parse(del.out)["code"] == 11);
  }

  TEST_CASE("an agent that answers without reading the request is heard: no EPIPE 'unreachable'") {
    // A busy agent answers and closes without reading; a request still
    // being sent then fails with EPIPE. A request larger than the socket
    // buffer makes that certain.
    std::filesystem::remove(sock);
    sluice::UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, sock.c_str(), sock.size());
    REQUIRE(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    REQUIRE(::listen(listener.get(), 4) == 0);
    std::thread agent([&] {
      sluice::UniqueFd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
      cni::CniReply busy{false, false, "busy", "", cni::kReplyTryAgainLater};
      std::string text = cni::encode(busy);
      (void)!::send(conn.get(), text.data(), text.size(), MSG_NOSIGNAL);
    });
    cni::PluginConfig cfg;
    cfg.agent_socket = sock;
    cfg.timeout_ms = 3000;
    cni::CniRequest req{"DEL", "ctr1", "", "eth0", "shop", "web", "u1", {}};
    req.ips.assign(100000, "10.244.1.9");  // ~1.3 MB
    auto reply = cni::callAgent(cfg, req);
    agent.join();
    REQUIRE_MESSAGE(reply.has_value(), (reply ? "" : reply.error().message));
    CHECK_FALSE(reply->ok);
    CHECK(reply->code == cni::kReplyTryAgainLater);
    std::filesystem::remove(sock);
  }
  TEST_CASE("garbage on the agent socket gets an error reply and the server keeps serving") {
    FakeHandler h;
    auto server = agent::cni::Server::create(sock, h);
    REQUIRE(server.has_value());
    std::string out;
    FILE* p = popen(("printf 'garbage\\n' | socat -t2 - UNIX-CONNECT:" + sock).c_str(), "r");
    char buf[512];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
    pclose(p);
    CHECK(out.find("malformed request") != std::string::npos);
    CHECK(WEXITSTATUS(runPlugin("ADD", conf(sock)).status) == 0);
  }
}
