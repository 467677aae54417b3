#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "agent/admin/server.h"
#include "sluice/common/unique_fd.h"
#ifdef SLUICE_HAVE_WIRING
#include "agent/wiring/admin_json.h"
#endif
#include "support/eventually.h"
#include "support/local_http.h"

using namespace sluice;

namespace {

using test::freePort;
using test::roundTrip;
using testing::eventually;

std::string get(int port, const std::string& path) { return test::httpGet(port, path); }

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = 0; (at = s.find(what, at)) != std::string::npos; at += what.size()) ++n;
  return n;
}

}  // namespace

TEST_SUITE("admin") {
  TEST_CASE("endpoints, readiness, unknown paths, bad requests - and it keeps serving") {
    std::atomic<bool> ready{false};
    agent::admin::Sources src;
    src.config_dump = [] { return nlohmann::json{{"workloads", nlohmann::json::array()}}; };
    src.connections = [] { return nlohmann::json{{"connections", nlohmann::json::array()}}; };
    src.stats = [] { return nlohmann::json{{"active", 3}}; };
    src.certs = [] { return nlohmann::json{{"certificates", nlohmann::json::array()}}; };
    src.not_ready_reason = [&] { return ready ? std::string() : std::string("BPF not loaded"); };
    src.ready_note = [] { return std::string("control plane unreachable"); };
    int port = freePort();
    auto server = agent::admin::Server::create("127.0.0.1:" + std::to_string(port), src);
    REQUIRE(server.has_value());

    CHECK(get(port, "/healthz").find("200 OK") != std::string::npos);
    auto r = get(port, "/ready");
    CHECK(r.find("503") != std::string::npos);
    CHECK(r.find("not ready: BPF not loaded") != std::string::npos);
    ready = true;
    CHECK(get(port, "/ready").find("ready: control plane unreachable") != std::string::npos);
    r = get(port, "/stats?x=1");
    CHECK(r.find("application/json") != std::string::npos);
    CHECK(r.find("\"active\": 3") != std::string::npos);
    r = get(port, "/nope");
    CHECK(r.find("404") != std::string::npos);
    CHECK(r.find("no such endpoint: /nope") != std::string::npos);
    // Garbage, a huge request line, other methods: refused, nothing breaks.
    CHECK(roundTrip(port, "\x16\x03\x01 not http\r\n\r\n").find("400") != std::string::npos);
    CHECK(roundTrip(port, "GET /" + std::string(70000, 'a') + " HTTP/1.1\r\n\r\n").find("400") !=
          std::string::npos);
    CHECK(roundTrip(port, "DELETE /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
              .find("200 OK") == std::string::npos);
    CHECK(get(port, "/config_dump").find("\"workloads\"") != std::string::npos);
    // A path that is not UTF-8 is echoed in the 404 with U+FFFD (JSON text
    // cannot hold the byte; it once threw and ended the agent).
    r = roundTrip(port, "GET /\xff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    CHECK(r.find("404") != std::string::npos);
    CHECK(r.find("no such endpoint: /\xef\xbf\xbd") != std::string::npos);
    CHECK(get(port, "/healthz").find("200 OK") != std::string::npos);

    // The port is taken: a clear error, the first server unharmed.
    auto second = agent::admin::Server::create("127.0.0.1:" + std::to_string(port), src);
    REQUIRE_FALSE(second.has_value());
    CHECK(second.error().describe().find("another agent") != std::string::npos);
    CHECK(get(port, "/healthz").find("200 OK") != std::string::npos);
    CHECK_FALSE(agent::admin::Server::create("localhost:15000", src).has_value());
  }

  TEST_CASE("actions: POST only, never from a web page, parameters checked by the action") {
    agent::admin::Sources src;
    src.config_dump = [] { return nlohmann::json::object(); };
    src.connections = [] { return nlohmann::json{{"connections", nlohmann::json::array()}}; };
    src.stats = [] { return nlohmann::json::object(); };
    src.certs = [] { return nlohmann::json::object(); };
    src.not_ready_reason = [] { return std::string(); };
    std::atomic<int> calls{0};
    std::string last_id;
    src.reset_connections = [&](const agent::admin::Query& q) -> std::pair<int, nlohmann::json> {
      ++calls;
      auto it = q.find("id");
      if (it == q.end()) return {400, {{"error", "expected id"}}};
      last_id = it->second;
      return {200, {{"reset", 1}, {"id", it->second}}};
    };
    int port = freePort();
    auto server = agent::admin::Server::create("127.0.0.1:" + std::to_string(port), src);
    REQUIRE(server.has_value());
    auto post = [&](const std::string& path, const std::string& extra = "") {
      return roundTrip(port, "POST " + path + " HTTP/1.1\r\nHost: x\r\n" + extra +
                                 "Content-Length: 0\r\nConnection: close\r\n\r\n");
    };

    auto r = post("/connections/reset?id=17");
    CHECK(r.find("200 OK") != std::string::npos);
    CHECK(r.find("\"reset\": 1") != std::string::npos);
    CHECK(calls == 1);
    CHECK(last_id == "17");
    // The action's own answer to bad parameters.
    r = post("/connections/reset");
    CHECK(r.find("400") != std::string::npos);
    CHECK(r.find("expected id") != std::string::npos);
    CHECK(calls == 2);

    // GET (a link, an <img>) and HEAD of an action: 405, the action not run.
    r = get(port, "/connections/reset?id=17");
    CHECK(r.find("405") != std::string::npos);
    CHECK(r.find("Allow: POST") != std::string::npos);
    CHECK(r.find("POST only") != std::string::npos);
    CHECK(roundTrip(port,
                    "HEAD /connections/reset?id=17 HTTP/1.1\r\nHost: x\r\nConnection: "
                    "close\r\n\r\n")
              .find("405") != std::string::npos);
    // A browser's POST (a form on some web page) carries Origin: refused.
    r = post("/connections/reset?id=17", "Origin: http://evil.example\r\n");
    CHECK(r.find("403") != std::string::npos);
    CHECK(r.find("Origin") != std::string::npos);
    // A body: refused before any handler (bounded at 0 bytes).
    r = roundTrip(port,
                  "POST /connections/reset?id=17 HTTP/1.1\r\nHost: x\r\nContent-Length: "
                  "5\r\nConnection: close\r\n\r\nid=17");
    CHECK(r.find("200 OK") == std::string::npos);
    // POST to a document: 405; unknown methods still refused.
    r = post("/stats");
    CHECK(r.find("405") != std::string::npos);
    CHECK(r.find("Allow: GET, HEAD") != std::string::npos);
    CHECK(roundTrip(port,
                    "DELETE /connections/reset?id=1 HTTP/1.1\r\nHost: x\r\nConnection: "
                    "close\r\n\r\n")
              .find("200 OK") == std::string::npos);
    CHECK(calls == 2);
    CHECK(get(port, "/healthz").find("200 OK") != std::string::npos);
  }

  TEST_CASE("HTTP/1: keep-alive, pipelining, HEAD, query decoding, a half-closed client") {
    std::string seen;
    int port = freePort();
    auto server = agent::admin::Server::create(
        "127.0.0.1:" + std::to_string(port), "test endpoint",
        agent::admin::Routes{{"/a",
                              [] {
                                return agent::admin::Response{200, "text/plain", "aaa"};
                              }},
                             {"/mid",
                              [] {
                                auto body = std::make_shared<const std::string>(3 << 19, 'm');
                                return agent::admin::Response{200, "text/plain", "", body};
                              }},
                             {"/big",
                              [] {
                                auto body = std::make_shared<const std::string>(3 << 20, 'x');
                                return agent::admin::Response{200, "text/plain", "", body};
                              }}},
        {}, agent::admin::QueryRoutes{{"/q", [&](const agent::admin::Query& q) {
                                         seen.clear();
                                         for (const auto& [k, v] : q) seen += k + "=" + v + ";";
                                         return agent::admin::Response{200, "text/plain", seen};
                                       }}});
    REQUIRE(server.has_value());
    // Three requests in one write on one connection: three answers, in order.
    auto r = roundTrip(port,
                       "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                       "HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n"
                       "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    CHECK(count(r, "HTTP/1.1 200 OK") == 2);
    CHECK(count(r, "Content-Length: 3") == 2);
    CHECK(count(r, "aaa") == 1);  // HEAD: the head only
    CHECK(r.find("404 Not Found") > r.rfind("200 OK"));
    CHECK(r.find("Connection: close") != std::string::npos);
    // HTTP/1.0 with keep-alive, then without: the answer says which.
    r = roundTrip(port, "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /a HTTP/1.0\r\n\r\n");
    CHECK(count(r, "HTTP/1.0 200 OK") == 2);
    CHECK(r.find("Connection: keep-alive") < r.find("Connection: close"));
    // Parameters decoded: %XX, '+', a name without a value, the last of a repeat.
    r = test::httpGet(port, "/q?path=%2Fapi%2Fv1&who=a+b&flag&n=1&n=2");
    CHECK(r.find("flag=;n=2;path=/api/v1;who=a b;") != std::string::npos);
    // A client that half-closes after its request still gets the answer,
    // and a large body by reference arrives whole.
    std::string got = test::exchange(port, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n", true).bytes;
    CHECK(got.find("Content-Length: 3145728") != std::string::npos);
    CHECK(got.size() - got.find("\r\n\r\n") - 4 == size_t(3 << 20));
    // Pipelined answers larger than the 1 MiB the server queues per
    // connection: every one arrives (the server answers on as the client
    // takes them).
    std::string pipelined;
    for (int i = 0; i < 6; ++i) pipelined += "GET /mid HTTP/1.1\r\nHost: x\r\n\r\n";
    auto [mids, closed] =
        test::exchange(port, pipelined + "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    CHECK(count(mids, "Content-Length: 1572864") == 6);
    CHECK(mids.size() > size_t(6 * (3 << 19)));
    CHECK(mids.substr(mids.size() - 3) == "aaa");
    CHECK(closed);  // at once, as the last request asked
    // A request with a body: 413, and the server goes on.
    r = roundTrip(port, "GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody");
    CHECK(r.find("413") != std::string::npos);
    CHECK(test::httpGet(port, "/a").find("aaa") != std::string::npos);
  }

  TEST_CASE("a stream: chunked to HTTP/1.1, the connection closed at its end - HEAD checks only") {
    struct Countdown : agent::admin::Stream {
      int left;
      explicit Countdown(int n) : left(n) {}
      agent::admin::StreamStep poll() override {
        --left;
        return {"line " + std::to_string(left) + "\n", left == 0};
      }
    };
    std::atomic<int> opened{0};
    int port = freePort();
    auto server = agent::admin::Server::create(
        "127.0.0.1:" + std::to_string(port), "test endpoint", agent::admin::Routes{},
        agent::admin::StreamRoutes{
            {"/s",
             [&](const agent::admin::Query& q) -> Result<std::unique_ptr<agent::admin::Stream>> {
               if (!q.count("n")) return fail("expected n");
               ++opened;
               return std::make_unique<Countdown>(std::stoi(q.at("n")));
             }}});
    REQUIRE(server.has_value());
    // A request sent behind the stream's is not answered: the stream's end
    // closes the connection (it says so in its head).
    auto r = roundTrip(port,
                       "GET /s?n=3 HTTP/1.1\r\nHost: x\r\n\r\nGET /s?n=1 HTTP/1.1\r\nHost: "
                       "x\r\n\r\n");
    CHECK(r.find("Transfer-Encoding: chunked") != std::string::npos);
    CHECK(r.find("Connection: close") != std::string::npos);
    CHECK(r.find("7\r\nline 2\n\r\n7\r\nline 1\n\r\n7\r\nline 0\n\r\n0\r\n\r\n") !=
          std::string::npos);
    CHECK(count(r, "HTTP/1.1 200") == 1);
    CHECK(opened == 1);
    CHECK(eventually([&] { return (*server)->streams() == 0; }));
    // HEAD: the opener's checks and the head, no body, no stream left.
    r = roundTrip(port, "HEAD /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    CHECK(r.rfind("HTTP/1.1 400", 0) == 0);
    CHECK(r.find("expected n") == std::string::npos);  // a HEAD: no body
    r = roundTrip(port, "HEAD /s?n=5 HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(r.rfind("HTTP/1.1 200", 0) == 0);
    CHECK(r.find("line") == std::string::npos);
    CHECK(r.find("0\r\n\r\n") == std::string::npos);
    CHECK((*server)->streams() == 0);
  }

  TEST_CASE(
      "clients that do not read hold at most the server's budget - all arrives once they do") {
    static constexpr size_t kBody = 3 << 19;  // 1.5 MiB
    constexpr int kClients = 48, kRequests = 3;
    int port = freePort();
    auto server = agent::admin::Server::create(
        "127.0.0.1:" + std::to_string(port), "test endpoint",
        agent::admin::Routes{{"/doc", [] {
                                auto body = std::make_shared<const std::string>(kBody, 'd');
                                return agent::admin::Response{200, "text/plain", "", body};
                              }}});
    REQUIRE(server.has_value());
    const std::string request = "GET /doc HTTP/1.1\r\nHost: x\r\n\r\n";
    auto connectClient = [&](int rcvbuf) {
      int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      REQUIRE(fd >= 0);
      // A small window: the answers wait in the server, not in the kernel.
      if (rcvbuf) ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
      sockaddr_in a{};
      a.sin_family = AF_INET;
      // From 127.0.1.1, .2 ...: 16 clients each, within the per-address bound.
      static uint32_t clients = 0;
      a.sin_addr.s_addr = htonl(0x7f000100 + 1 + clients++ / 16);
      REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
      a.sin_port = htons(static_cast<uint16_t>(port));
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
      return fd;
    };
    // The size of one keep-alive answer, from a client that reads its head.
    size_t answer = 0;
    {
      int fd = connectClient(0);
      REQUIRE(::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == ssize_t(request.size()));
      std::string head;
      char c;
      while (head.find("\r\n\r\n") == std::string::npos && ::recv(fd, &c, 1, 0) == 1) head += c;
      ::close(fd);
      REQUIRE(head.find("Content-Length: " + std::to_string(kBody)) != std::string::npos);
      REQUIRE(head.find("Connection: close") == std::string::npos);
      answer = head.size() + kBody;
    }

    // 48 clients ask for 3 answers each (216 MiB) and read nothing: each
    // would hold its 1 MiB and the answer that crossed it (2.5 MiB, 120 MiB
    // in all) beyond what the kernel's buffers take.
    std::vector<int> fds;
    for (int i = 0; i < kClients; ++i) {
      int fd = connectClient(16 * 1024);
      std::string pipelined;
      for (int r = 0; r < kRequests; ++r) pipelined += request;
      REQUIRE(::send(fd, pipelined.data(), pipelined.size(), MSG_NOSIGNAL) ==
              ssize_t(pipelined.size()));
      fds.push_back(fd);
    }
    const size_t budget = 16 << 20;
    CHECK(eventually([&] { return server.value()->queuedPeak() >= budget; }));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // more ticks: still bounded
    MESSAGE("peak queued: ", server.value()->queuedPeak(), " bytes");
    CHECK(server.value()->queuedPeak() <= budget + answer);

    // Every client now reads: each gets its three answers, whole.
    std::vector<size_t> got(fds.size(), 0);
    std::vector<char> buf(1 << 16);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    size_t complete = 0;
    while (complete < fds.size() && std::chrono::steady_clock::now() < deadline) {
      complete = 0;
      for (size_t i = 0; i < fds.size(); ++i) {
        if (got[i] >= kRequests * answer) {
          ++complete;
          continue;
        }
        ssize_t n = ::recv(fds[i], buf.data(), buf.size(), MSG_DONTWAIT);
        if (n > 0) got[i] += size_t(n);
      }
    }
    for (size_t i = 0; i < fds.size(); ++i) {
      CAPTURE(i);
      CHECK(got[i] == kRequests * answer);
      ::close(fds[i]);
    }
    // And it serves on.
    CHECK(test::httpGet(port, "/doc").size() > kBody);
  }

  TEST_CASE("one address holds at most 32 connections - other addresses are still served") {
    agent::admin::Sources src;
    src.stats = [] { return nlohmann::json{{"active", 1}}; };
    int port = freePort();
    auto server = agent::admin::Server::create("127.0.0.1:" + std::to_string(port), src);
    REQUIRE(server.has_value());
    auto open = [&](const char* from) {
      int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      REQUIRE(fd >= 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      inet_pton(AF_INET, from, &a.sin_addr);
      REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
      a.sin_port = htons(static_cast<uint16_t>(port));
      inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
      REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
      timeval tv{5, 0};
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      return UniqueFd(fd);
    };
    auto ask = [](int fd) {
      const std::string req = "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
      [[maybe_unused]] auto n = ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
      std::string got;
      char buf[4096];
      ssize_t r;
      while ((r = ::recv(fd, buf, sizeof(buf), 0)) > 0) got.append(buf, static_cast<size_t>(r));
      return got;
    };
    // A pod trickling 32 requests that never end.
    std::vector<UniqueFd> held;
    for (int i = 0; i < 32; ++i) {
      held.push_back(open("127.0.0.9"));
      ::send(held.back().get(), "GET /", 5, MSG_NOSIGNAL);
    }
    // Its 33rd is closed unanswered.
    REQUIRE(eventually([&] {
      auto extra = open("127.0.0.9");
      return ask(extra.get()).empty();
    }));
    // A scraper elsewhere is served.
    auto scraper = open("127.0.0.1");
    CHECK(ask(scraper.get()).find("200 OK") != std::string::npos);
    // One of the 32 goes: the address may open another.
    held.pop_back();
    CHECK(eventually([&] {
      auto again = open("127.0.0.9");
      return ask(again.get()).find("200 OK") != std::string::npos;
    }));
  }

  TEST_CASE("a request whose answer throws gets a 500 - the server goes on") {
    agent::admin::Routes routes;
    routes["/boom"] = []() -> agent::admin::Response { throw std::runtime_error("a defect"); };
    routes["/fine"] = [] { return agent::admin::Response{200, "text/plain", "fine\n"}; };
    int port = freePort();
    auto server = agent::admin::Server::create("127.0.0.1:" + std::to_string(port), "test", routes);
    REQUIRE(server.has_value());
    auto r = get(port, "/boom");
    CHECK(r.find("500") != std::string::npos);
    CHECK(r.find("internal error: a defect") != std::string::npos);
    CHECK(get(port, "/fine").find("fine") != std::string::npos);
  }

  TEST_CASE("a server without actions takes no POST") {
    int port = freePort();
    auto server = agent::admin::Server::create(
        "127.0.0.1:" + std::to_string(port), "metrics endpoint",
        agent::admin::Routes{{"/metrics", [] { return agent::admin::Response{}; }}});
    REQUIRE(server.has_value());
    auto r = roundTrip(port,
                       "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: "
                       "0\r\nConnection: close\r\n\r\n");
    // A POST where there are no actions: refused, saying what is allowed.
    CHECK(r.rfind("HTTP/1.1 405", 0) == 0);
    CHECK(r.find("Allow: GET, HEAD") != std::string::npos);
    // The admin API's action is no endpoint of this one, for any method.
    r = roundTrip(port,
                  "POST /connections/reset?id=1 HTTP/1.1\r\nHost: x\r\nContent-Length: "
                  "0\r\nConnection: close\r\n\r\n");
    CHECK(r.rfind("HTTP/1.1 404", 0) == 0);
  }

#ifdef SLUICE_HAVE_WIRING
  TEST_CASE("reset parameters: exactly one of id and pod, each well formed") {
    using agent::wiring::parseResetTarget;
    auto id = parseResetTarget({{"id", "42"}});
    REQUIRE(id.has_value());
    CHECK(id->id == 42);
    CHECK(id->pod.empty());
    auto pod = parseResetTarget({{"pod", "default/web-1"}});
    REQUIRE(pod.has_value());
    CHECK(pod->id == 0);
    CHECK(pod->pod == "default/web-1");
    for (const auto& [q, says] : std::vector<std::pair<agent::admin::Query, std::string>>{
             {{}, "exactly one"},
             {{{"id", "1"}, {"pod", "a/b"}}, "exactly one"},
             {{{"id", ""}}, "invalid connection id"},
             {{{"id", "0"}}, "invalid connection id"},
             {{{"id", "-1"}}, "invalid connection id"},
             {{{"id", "1x"}}, "invalid connection id"},
             {{{"id", "99999999999999999999999"}}, "invalid connection id"},
             {{{"pod", "nslash"}}, "invalid pod"},
             {{{"pod", "/b"}}, "invalid pod"},
             {{{"pod", "a/"}}, "invalid pod"},
             {{{"pod", "a/b/c"}}, "invalid pod"},
             {{{"pod", "a/b c"}}, "invalid pod"},
             {{{"pod", std::string(400, 'a') + "/b"}}, "invalid pod"},
             {{{"id", "1"}, {"all", "1"}}, "unknown parameter 'all'"},
         }) {
      auto r = parseResetTarget(q);
      REQUIRE_FALSE(r.has_value());
      CHECK_MESSAGE(r.error().message.find(says) != std::string::npos, r.error().message);
    }
  }
#endif
}
