// The upgrade handover protocol (agent/upgrade/handover.h) between two ends
// in one process: real unix sockets, real SCM_RIGHTS and SO_PEERCRED.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "agent/upgrade/handover.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "support/eventually.h"

using namespace sluice;
using namespace sluice::agent::upgrade;
using namespace std::chrono_literals;

namespace {

// Hands over `count` sockets; records what the server asked of it.
class FakeAgent final : public HandoverServer::Handler {
 public:
  explicit FakeAgent(size_t count) {
    for (size_t i = 0; i < count; ++i) {
      int pair[2];
      REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
      mine.emplace_back(pair[0]);
      peers.emplace_back(pair[1]);
    }
  }
  Result<std::vector<ztunnel::ListenerFd>> freeze() override {
    freezes++;
    std::vector<ztunnel::ListenerFd> out;
    for (size_t i = 0; i < mine.size(); ++i)
      out.push_back({"pod-" + std::to_string(i / 3), i % 3 == 0 ? "outbound" : "inbound",
                     UniqueFd(::dup(mine[i].get()))});
    return out;
  }
  void release() override { releases++; }
  std::vector<ztunnel::ConnectionFd> exportConnections() override {
    exports++;
    return std::move(connections);
  }
  void thaw(const std::string& why) override {
    std::lock_guard lk(mu);
    thawed.push_back(why);
    thaws++;
  }
  std::vector<UniqueFd> mine, peers;
  std::vector<ztunnel::ConnectionFd> connections;  // handed over after release
  std::atomic<int> freezes{0}, releases{0}, thaws{0}, exports{0};
  std::mutex mu;
  std::vector<std::string> thawed;
};

ino_t inodeOf(int fd) {
  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  return st.st_ino;
}

using sluice::testing::eventually;

struct Dir {
  std::string path = "/tmp/sluice-handover-test-" + std::to_string(::getpid());
  Dir() { std::filesystem::create_directories(path); }
  ~Dir() { std::filesystem::remove_all(path); }
  std::string sock() const { return path + "/handover.sock"; }
};

}  // namespace

TEST_SUITE("handover") {
  TEST_CASE("the listeners arrive as the same sockets, in batches, and release stops the old one") {
    Dir dir;
    FakeAgent old_agent(150);  // more than two messages' worth
    auto server = HandoverServer::create(dir.sock(), old_agent, ::getuid());
    REQUIRE_MESSAGE(server.has_value(), (server ? "" : server.error().describe()));
    auto client = HandoverClient::connect(dir.sock(), 5s, ::getuid());
    REQUIRE_MESSAGE(client.has_value(), (client ? "" : client.error().describe()));
    REQUIRE(*client != nullptr);
    CHECK(old_agent.freezes == 1);
    auto got = (*client)->takeListeners();
    REQUIRE(got.size() == 150);
    for (size_t i = 0; i < got.size(); ++i) {
      CHECK(got[i].pod_uid == "pod-" + std::to_string(i / 3));
      CHECK(got[i].kind == (i % 3 == 0 ? "outbound" : "inbound"));
      // The same socket: what is written to its peer is read from it.
      CHECK(inodeOf(got[i].fd.get()) == inodeOf(old_agent.mine[i].get()));
      CHECK((::fcntl(got[i].fd.get(), F_GETFD) & FD_CLOEXEC) != 0);
    }
    REQUIRE(::write(old_agent.peers[149].get(), "x", 1) == 1);
    char c = 0;
    CHECK(::read(got[149].fd.get(), &c, 1) == 1);
    CHECK(c == 'x');
    CHECK_FALSE((*server)->handedOver());
    CHECK(old_agent.releases == 0);
    auto released = (*client)->release();
    REQUIRE_MESSAGE(released.has_value(), (released ? "" : released.error().describe()));
    CHECK(old_agent.releases == 1);
    CHECK((*server)->handedOver());
    CHECK(old_agent.thaws == 0);
    // Handed over: nobody else may take over from it.
    CHECK(eventually([&] {
      auto again = HandoverClient::connect(dir.sock(), 1s, ::getuid());
      return again.has_value() && *again == nullptr;
    }));
  }

  TEST_CASE("nothing to take over: no socket, or a stale one") {
    Dir dir;
    auto none = HandoverClient::connect(dir.sock());
    REQUIRE(none.has_value());
    CHECK(*none == nullptr);
    {  // a socket file left by an agent that died: nobody listens on it
      UniqueFd dead(::socket(AF_UNIX, SOCK_SEQPACKET, 0));
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", dir.sock().c_str());
      REQUIRE(::bind(dead.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    }
    REQUIRE(std::filesystem::exists(dir.sock()));
    auto stale = HandoverClient::connect(dir.sock());
    REQUIRE(stale.has_value());
    CHECK(*stale == nullptr);
  }

  TEST_CASE("peer credentials: the old agent refuses another uid, the new one too") {
    Dir dir;
    FakeAgent old_agent(3);
    const uid_t other = ::getuid() + 1;
    {
      auto server = HandoverServer::create(dir.sock(), old_agent, other);
      REQUIRE(server.has_value());
      auto client = HandoverClient::connect(dir.sock(), 5s, ::getuid());
      REQUIRE_FALSE(client.has_value());
      INFO(client.error().describe());
      CHECK(client.error().describe().find("refused") != std::string::npos);
      CHECK(client.error().describe().find("may not take over") != std::string::npos);
      CHECK(old_agent.freezes == 0);  // nothing was frozen or handed out
      CHECK_FALSE((*server)->handedOver());
    }
    {
      auto server = HandoverServer::create(dir.sock(), old_agent, ::getuid());
      REQUIRE(server.has_value());
      auto client = HandoverClient::connect(dir.sock(), 5s, other);
      REQUIRE_FALSE(client.has_value());
      CHECK(client.error().describe().find("not taking over") != std::string::npos);
      CHECK(old_agent.freezes == 0);
    }
  }

  TEST_CASE(
      "a successor that goes away before adopting thaws the old one - the next one takes over") {
    Dir dir;
    FakeAgent old_agent(4);
    auto server = HandoverServer::create(dir.sock(), old_agent, ::getuid());
    REQUIRE(server.has_value());
    {
      auto quitter = HandoverClient::connect(dir.sock(), 5s, ::getuid());
      REQUIRE(quitter.has_value());
      REQUIRE(*quitter != nullptr);
      CHECK((*quitter)->takeListeners().size() == 4);
    }  // closed without "adopted"
    REQUIRE(eventually([&] { return old_agent.thaws.load() == 1; }));
    CHECK_FALSE((*server)->handedOver());
    auto next = HandoverClient::connect(dir.sock(), 5s, ::getuid());
    REQUIRE_MESSAGE(next.has_value(), (next ? "" : next.error().describe()));
    REQUIRE(*next != nullptr);
    CHECK((*next)->takeListeners().size() == 4);
    REQUIRE((*next)->release().has_value());
    CHECK(old_agent.freezes == 2);
    CHECK(old_agent.releases == 1);
  }

  TEST_CASE("a second handover: the successor hands over in turn at the same path") {
    Dir dir;
    FakeAgent first(2), second(5);
    auto old_server = HandoverServer::create(dir.sock(), first, ::getuid());
    REQUIRE(old_server.has_value());
    auto taker = HandoverClient::connect(dir.sock(), 5s, ::getuid());
    REQUIRE((taker.has_value() && *taker));
    REQUIRE((*taker)->release().has_value());
    // The successor binds its own socket while the old agent still drains.
    auto new_server = HandoverServer::create(dir.sock(), second, ::getuid());
    REQUIRE(new_server.has_value());
    old_server->reset();  // the old agent exits: the successor's socket stays
    auto third = HandoverClient::connect(dir.sock(), 5s, ::getuid());
    REQUIRE_MESSAGE(third.has_value(), (third ? "" : third.error().describe()));
    REQUIRE(*third != nullptr);
    CHECK((*third)->takeListeners().size() == 5);
    REQUIRE((*third)->release().has_value());
    CHECK(second.releases == 1);
    CHECK(first.releases == 1);
  }

  TEST_CASE("messages carry descriptors both ways and reject garbage") {
    int pair[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) == 0);
    UniqueFd a(pair[0]), b(pair[1]);
    CHECK(peerUid(a.get()).value() == ::getuid());
    REQUIRE(sendMessage(a.get(), "{\"op\":\"hello\"}", {a.get(), b.get()}).has_value());
    auto m = recvMessage(b.get(), 1s);
    REQUIRE(m.has_value());
    CHECK(m->text == "{\"op\":\"hello\"}");
    CHECK(m->fds.size() == 2);
    std::vector<int> too_many(kMaxFdsPerMessage + 1, a.get());
    CHECK_FALSE(sendMessage(a.get(), "x", too_many).has_value());
    auto none = recvMessage(b.get(), 50ms);
    REQUIRE_FALSE(none.has_value());
    CHECK(none.error().describe().find("no handover message") != std::string::npos);
    a.reset();
    CHECK_FALSE(recvMessage(b.get(), 1s).has_value());  // closed
  }

  TEST_CASE("frozen connections follow the release: both sockets, buffered bytes, state, record") {
    Dir dir;
    FakeAgent old_agent(3);
    std::vector<UniqueFd> far;  // the other ends of the handed-over sockets
    auto pairOf = [&] {
      int pair[2];
      REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
      far.emplace_back(pair[1]);
      return UniqueFd(pair[0]);
    };
    std::string big(200 * 1024, '\0');  // several messages' worth
    for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i % 253);
    for (int i = 0; i < 2; ++i) {
      ztunnel::ConnectionFd c;
      c.record.direction = i == 0 ? ztunnel::Direction::kOutbound : ztunnel::Direction::kInbound;
      c.record.path = i == 0 ? ztunnel::Path::kLocalHandoff : ztunnel::Path::kInbound;
      c.record.pod = "ns/pod-" + std::to_string(i);
      c.record.source = "10.1.0.1:4000";
      c.record.destination = "10.1.0.2:80";
      c.record.source_principal = "spiffe://cluster.local/ns/ns/sa/a";
      c.record.bytes_sent = 1000 + i;
      c.record.bytes_received = 7;
      c.record.start_unix_ms = 1234;
      c.pod_uid = "pod-" + std::to_string(i);
      c.target_uid = i == 0 ? "pod-1" : "";
      c.client = pairOf();
      c.upstream = pairOf();
      if (i == 0) {
        c.to_upstream = big;
        c.to_client = "hello";
        c.client_eof = true;
      } else {
        c.upstream_eof = c.client_shut = true;
      }
      old_agent.connections.push_back(std::move(c));
    }
    std::vector<ino_t> inodes;
    for (const auto& c : old_agent.connections) {
      inodes.push_back(inodeOf(c.client.get()));
      inodes.push_back(inodeOf(c.upstream.get()));
    }
    auto server = HandoverServer::create(dir.sock(), old_agent, ::getuid());
    REQUIRE(server.has_value());
    auto client = HandoverClient::connect(dir.sock(), 5s, ::getuid());
    REQUIRE_MESSAGE(client.has_value(), (client ? "" : client.error().describe()));
    REQUIRE(*client != nullptr);
    auto released = (*client)->release();
    REQUIRE_MESSAGE(released.has_value(), (released ? "" : released.error().describe()));
    CHECK(old_agent.exports == 1);
    auto got = (*client)->takeConnections();
    REQUIRE(got.size() == 2);
    CHECK(got[0].to_upstream == big);
    CHECK(got[0].to_client == "hello");
    CHECK(got[0].client_eof);
    CHECK_FALSE(got[0].upstream_eof);
    CHECK(got[0].target_uid == "pod-1");
    CHECK((got[0].record.path == ztunnel::Path::kLocalHandoff));
    CHECK(got[0].record.pod == "ns/pod-0");
    CHECK(got[0].record.source_principal == "spiffe://cluster.local/ns/ns/sa/a");
    CHECK(got[0].record.bytes_sent == 1000);
    CHECK(got[0].record.start_unix_ms == 1234);
    CHECK(got[1].to_upstream.empty());
    CHECK(got[1].upstream_eof);
    CHECK(got[1].client_shut);
    CHECK_FALSE(got[1].upstream_shut);
    CHECK((got[1].record.direction == ztunnel::Direction::kInbound));
    CHECK((got[1].record.path == ztunnel::Path::kInbound));
    CHECK(got[1].record.bytes_sent == 1001);
    CHECK(got[1].target_uid.empty());
    for (size_t i = 0; i < 2; ++i) {
      CHECK(inodeOf(got[i].client.get()) == inodes[2 * i]);
      CHECK(inodeOf(got[i].upstream.get()) == inodes[2 * i + 1]);
    }
    CHECK((*server)->handedOver());
  }

  TEST_CASE("a malformed handed-over connection is refused, not adopted") {
    int pair[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) == 0);
    UniqueFd a(pair[0]), b(pair[1]);
    REQUIRE(sendMessage(a.get(), "{\"op\":\"connection\",\"pod_uid\":\"x\"}", {a.get(), b.get()})
                .has_value());
    auto r = recvConnection(b.get(), 1s);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().describe().find("malformed handed-over connection") != std::string::npos);
    REQUIRE(sendMessage(a.get(), "{\"op\":\"connection\"}").has_value());  // no sockets
    r = recvConnection(b.get(), 1s);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().describe().find("two sockets") != std::string::npos);
  }
}
