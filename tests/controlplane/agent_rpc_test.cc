// The agent's own gRPC client (agent/rpc: nghttp2 + OpenSSL) against the
// control plane's real gRPC server.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent/rpc/call.h"
#include "control_plane_rig.h"

using namespace sluice;
using namespace sluice::test;
using namespace std::chrono_literals;

TEST_SUITE("agent rpc") {
  agent::rpc::CallOptions watchCall(int port, const std::string& token = kNode1Token) {
    agent::rpc::CallOptions o;
    o.target = "127.0.0.1:" + std::to_string(port);
    o.trust_anchor_pem = testCa().trustAnchorPem();
    o.path = "/sluice.api.v1.Discovery/Watch";
    if (!token.empty()) o.metadata.emplace_back("authorization", "Bearer " + token);
    o.connect_timeout = 1s;
    return o;
  }
  std::string watchRequest(const std::string& node) {
    api::v1::WatchRequest req;
    req.set_node(node);
    return req.SerializeAsString();
  }

  TEST_CASE("statuses and messages of the server come back as they were sent") {
    controlplane::model::Store store;
    int port = 0;
    ControlPlane cp(store, port);
    auto never = [](const std::string&) { return true; };
    auto denied = agent::rpc::call(watchCall(port), watchRequest("node2"), never);
    CHECK(denied.code == agent::rpc::kPermissionDenied);
    CHECK(denied.message == "this token belongs to node node1");
    CHECK(
        agent::rpc::call(watchCall(port, "not-a-token-at-all-00000"), watchRequest("node1"), never)
            .code == agent::rpc::kUnauthenticated);
    CHECK(agent::rpc::call(watchCall(port), watchRequest(""), never).code ==
          3);  // INVALID_ARGUMENT
    auto missing = watchCall(port);
    missing.path = "/sluice.api.v1.Discovery/NoSuchMethod";
    CHECK(agent::rpc::call(missing, watchRequest("node1"), never).code ==
          agent::rpc::kUnimplemented);
  }

  TEST_CASE("a snapshot arrives - then cancel, the deadline and silence each end the call") {
    controlplane::model::Store store;
    REQUIRE(store.setSource("a", podObjects("web")).has_value());
    int port = 0;
    ControlPlane cp(store, port);
    // The snapshot, then the caller ends the call by returning false.
    int messages = 0;
    auto first =
        agent::rpc::call(watchCall(port), watchRequest("node1"), [&](const std::string& bytes) {
          api::v1::WatchResponse r;
          CHECK(r.ParseFromString(bytes));
          CHECK(r.full());
          CHECK(r.upserts_size() == 1);
          ++messages;
          // What OpenSSL's write to a vanished peer does: it
          // must not kill a process that keeps SIGPIPE's default.
          ::raise(SIGPIPE);
          return false;
        });
    CHECK(first.code == agent::rpc::kCancelled);
    CHECK(messages == 1);
    sigset_t mask;
    pthread_sigmask(SIG_BLOCK, nullptr, &mask);
    CHECK_FALSE(sigismember(&mask, SIGPIPE));  // the thread's mask is as it was
    // Cancelled from another thread while waiting for the next message.
    agent::rpc::Canceller cancel;
    auto started = std::chrono::steady_clock::now();
    std::thread t([&] {
      std::this_thread::sleep_for(200ms);
      cancel.cancel();
    });
    auto cancelled = agent::rpc::call(
        watchCall(port), watchRequest("node1"), [](const std::string&) { return true; }, &cancel);
    t.join();
    CHECK(cancelled.code == agent::rpc::kCancelled);
    CHECK(std::chrono::steady_clock::now() - started < 2s);
    // A deadline (sent as grpc-timeout; either side may end it).
    auto o = watchCall(port);
    o.deadline = 300ms;
    CHECK(agent::rpc::call(o, watchRequest("node1"), [](const std::string&) {
            return true;
          }).code == agent::rpc::kDeadlineExceeded);
    // Nothing heard for idle_timeout (this test server sends no keepalive PINGs).
    o = watchCall(port);
    o.idle_timeout = 300ms;
    auto idle = agent::rpc::call(o, watchRequest("node1"), [](const std::string&) { return true; });
    CHECK(idle.code == agent::rpc::kUnavailable);
    CHECK(idle.message.find("nothing heard") != std::string::npos);
  }

  TEST_CASE("a server certificate that does not name the dialled host is refused") {
    controlplane::model::Store store;
    int port = 0;
    ControlPlane cp(store, port);  // its certificate names 127.0.0.1 only
    auto o = watchCall(port);
    o.target = "localhost:" + std::to_string(port);
    auto s = agent::rpc::call(o, watchRequest("node1"), [](const std::string&) { return true; });
    CHECK(s.code == agent::rpc::kUnavailable);
    CHECK(s.message.find("certificate verification failed") != std::string::npos);
    o = watchCall(port);
    o.trust_anchor_pem = "not PEM";
    CHECK(agent::rpc::call(o, watchRequest("node1"), [](const std::string&) {
            return true;
          }).message.find("no PEM certificate") != std::string::npos);
  }

  TEST_CASE(
      "a peer that is not a TLS server, or says nothing, gets a clear error in bounded time") {
    int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(lfd >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    REQUIRE(::listen(lfd, 8) == 0);
    socklen_t len = sizeof(a);
    getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
    int port = ntohs(a.sin_port);
    auto o = watchCall(port);
    o.connect_timeout = 300ms;
    // Silent: accepted by the kernel, never answers the ClientHello.
    auto started = std::chrono::steady_clock::now();
    auto silent =
        agent::rpc::call(o, watchRequest("node1"), [](const std::string&) { return true; });
    CHECK(silent.code == agent::rpc::kUnavailable);
    CHECK(silent.message.find("TLS handshake") != std::string::npos);
    CHECK(std::chrono::steady_clock::now() - started < 3s);
    // Garbage instead of a ServerHello.
    std::thread server([&] {
      for (int i = 0; i < 2; ++i) {
        int c = ::accept(lfd, nullptr, nullptr);
        if (c < 0) continue;
        const char junk[] = "HTTP/1.1 400 Bad Request\r\n\r\n";
        [[maybe_unused]] auto n = ::write(c, junk, sizeof(junk) - 1);
        ::close(c);
      }
    });
    auto garbage =
        agent::rpc::call(o, watchRequest("node1"), [](const std::string&) { return true; });
    CHECK(garbage.code == agent::rpc::kUnavailable);
    CHECK(garbage.message.find("TLS handshake") != std::string::npos);
    ::shutdown(lfd, SHUT_RDWR);
    ::close(lfd);
    server.join();
    // Nobody listening.
    CHECK(agent::rpc::call(o, watchRequest("node1"), [](const std::string&) {
            return true;
          }).message.find("connect to") != std::string::npos);
  }
}
