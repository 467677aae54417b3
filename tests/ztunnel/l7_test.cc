// The HTTP detection table and the passive HTTP/1 observer, fed byte strings
// directly (no sockets, no root). HTTP/2: l7_http2_test.cc.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <arpa/inet.h>
#include <doctest/doctest.h>

#include <map>
#include <string>
#include <vector>

#include "ztunnel/l7/detect.h"
#include "ztunnel/l7/http1.h"
#include "ztunnel/l7/inspect_policy.h"
#include "ztunnel/l7/inspector.h"
#include "ztunnel/l7_observer.h"

using namespace sluice::ztunnel;
using sluice::IpAddr;
using namespace std::chrono_literals;
using namespace sluice::ztunnel::l7test;

namespace {

size_t http1MaxPipelined() { return l7::Http1Observer::kMaxPipelined; }

const std::string kTlsClientHello = std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11);

}  // namespace

TEST_SUITE("l7/detect") {
  TEST_CASE("the detection table") {
    struct Row {
      std::string bytes;
      const char* want;
    };
    const Row rows[] = {
        {"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "http1"},
        {"GET / HTTP/1.0\r\n\r\n", "http1"},
        {"POST /x?y=1 HTTP/1.1\r\n", "http1"},
        {"DELETE /a HTTP/1.1\r\n", "http1"},
        {"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "http2"},
        {"PRI * HTTP/2.0\r\n", "need_more"},
        {"GET", "need_more"},
        {"GET /index.html HTT", "need_more"},
        {"GET / HTTP/1.1", "need_more"},
        {"CONNECT a:443 HTTP/1.1\r\n\r\n", "opaque"},  // a tunnel
        {"GET / HTTP/2.0\r\n", "opaque"},
        {"GET / HTTP/1.1\n", "opaque"},
        {"get / HTTP/1.1\r\n", "opaque"},
        {"GET  / HTTP/1.1\r\n", "opaque"},
        {kTlsClientHello, "opaque"},                                     // TLS from the app
        {std::string("\x00\x00\x00\x08\x04\xd2\x16\x2f", 8), "opaque"},  // PostgreSQL SSLRequest
        {"*1\r\n$4\r\nPING\r\n", "opaque"},                              // Redis
        {"SSH-2.0-OpenSSH_9.2\r\n", "opaque"},
        {std::string("\xff\xfe\x00garbage", 10), "opaque"},
        {"GET /" + std::string(2000, 'a'), "opaque"},  // no request line within the bound
    };
    for (const auto& r : rows) {
      CAPTURE(r.bytes);
      CHECK(l7::toString(l7::detect(r.bytes)) == std::string(r.want));
    }
  }
}

TEST_SUITE("l7/http1") {
  TEST_CASE("one HTTP/1.1 exchange") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    CHECK(feed(in, "GET /a/b?q=1 HTTP/1.1\r\nHost: svc:8080\r\n\r\n", true));
    CHECK(toString(in.protocol()) == std::string("http/1.1"));
    CHECK(sink.seen.empty());
    CHECK(feed(in, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false));
    REQUIRE(sink.seen.size() == 1);
    CHECK(sink.seen[0].method == "GET");
    CHECK(sink.seen[0].authority == "svc:8080");
    CHECK(sink.seen[0].path == "/a/b");
    CHECK(sink.seen[0].status == 200);
    CHECK(sink.seen[0].grpc_status == -1);
    CHECK(sink.seen[0].response_bytes == 5);
  }

  TEST_CASE("HTTP/1.0 with a body read to the end of the connection") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    CHECK(feed(in, "GET / HTTP/1.0\r\n\r\n", true));
    CHECK(feed(in, "HTTP/1.0 503 Service Unavailable\r\n\r\nbusy!", false));
    CHECK(sink.seen.empty());
    in.serverEnd();
    REQUIRE(sink.seen.size() == 1);
    CHECK(sink.seen[0].status == 503);
    CHECK(sink.seen[0].response_bytes == 5);
  }

  TEST_CASE("keep-alive with several requests, each with a body") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    for (int i = 0; i < 3; ++i) {
      CHECK(feed(in, "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc", true));
      CHECK(feed(
          in,
          "HTTP/1.1 " + std::string(i == 1 ? "503" : "200") + " X\r\nContent-Length: 2\r\n\r\nok",
          false));
    }
    REQUIRE(sink.seen.size() == 3);
    CHECK(sink.seen[1].status == 503);
    CHECK(sink.seen[2].request_bytes == 3);
    CHECK(sink.seen[2].response_bytes == 2);
  }

  TEST_CASE("pipelining: responses matched to requests in order") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    CHECK(feed(in,
               "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: h\r\n\r\n"
               "GET /3 HTTP/1.1\r\nHost: h\r\n\r\n",
               true));
    // The HEAD response announces a body it does not carry.
    CHECK(feed(in,
               "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
               "HTTP/1.1 404 NF\r\nContent-Length: 100\r\n\r\n"
               "HTTP/1.1 500 E\r\nContent-Length: 0\r\n\r\n",
               false));
    REQUIRE(sink.seen.size() == 3);
    CHECK(sink.seen[0].path == "/1");
    CHECK(sink.seen[1].method == "HEAD");
    CHECK(sink.seen[1].status == 404);
    CHECK(sink.seen[1].response_bytes == 0);
    CHECK(sink.seen[2].path == "/3");
    CHECK(sink.seen[2].status == 500);
  }

  TEST_CASE("beyond 64 pipelined requests: the 64 held are counted as answered, then it ends") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    std::string requests, responses;
    for (int i = 0; i < 100; ++i) {
      requests += "GET /" + std::to_string(i) + " HTTP/1.1\r\nHost: h\r\n\r\n";
      responses += "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    }
    CHECK(feed(in, requests, true));  // still observing: 64 answers to come
    CHECK(feed(in, "GET /late HTTP/1.1\r\nHost: h\r\n\r\n", true));  // not read
    // The answers, in pieces: the first 64 are counted, then observing ends.
    CHECK_FALSE(feed(in, responses, false, 500));
    REQUIRE(sink.seen.size() == http1MaxPipelined());
    CHECK(sink.seen.front().path == "/0");
    CHECK(sink.seen.back().path == "/63");
    for (const auto& s : sink.seen) CHECK(s.status == 200);
    in.finish();  // nothing left to report
    CHECK(sink.seen.size() == http1MaxPipelined());
  }

  TEST_CASE("chunked bodies both ways, and 100 Continue") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    CHECK(feed(in,
               "PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: "
               "100-continue\r\n\r\n",
               true));
    CHECK(feed(in, "HTTP/1.1 100 Continue\r\n\r\n", false));
    CHECK(feed(in, "4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n", true));
    CHECK(feed(in,
               "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n0\r\n\r\n",
               false));
    REQUIRE(sink.seen.size() == 1);
    CHECK(sink.seen[0].status == 201);
    CHECK(sink.seen[0].request_bytes == 7);
    CHECK(sink.seen[0].response_bytes == 6);
  }

  TEST_CASE("split across many tiny reads") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    std::string req = "GET /tiny HTTP/1.1\r\nHost: tiny.example\r\nContent-Length: 2\r\n\r\nhi";
    std::string resp = "HTTP/1.1 204 No Content\r\n\r\n";
    for (int i = 0; i < 2; ++i) {
      CHECK(feed(in, req, true, 1));
      CHECK(feed(in, resp, false, 1));
    }
    REQUIRE(sink.seen.size() == 2);
    CHECK(sink.seen[1].authority == "tiny.example");
    CHECK(sink.seen[1].status == 204);
    CHECK(sink.seen[1].request_bytes == 2);
  }

  TEST_CASE("a WebSocket upgrade is reported once with 101, then left alone") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    CHECK(feed(in,
               "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
               true));
    CHECK_FALSE(feed(in,
                     "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "
                     "websocket\r\n\r\n\x81\x02hi",
                     false));
    CHECK_FALSE(in.observing());
    CHECK_FALSE(in.clientBytes("\x81\x82garbage frames"));
    REQUIRE(sink.seen.size() == 1);
    CHECK(sink.seen[0].status == 101);
  }

  TEST_CASE("a request without an answer is reported with status 0 at the end") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    CHECK(feed(in, "GET /slow HTTP/1.1\r\nHost: h\r\n\r\n", true));
    in.finish();
    REQUIRE(sink.seen.size() == 1);
    CHECK(sink.seen[0].status == 0);
    CHECK_FALSE(in.clientBytes("GET / HTTP/1.1\r\n\r\n"));
  }

  TEST_CASE("a response before the request's headers end gives up (fuzz finding)") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    CHECK(feed(in, "GET /a HTTP/1.1\r\nHost: h", true));
    CHECK_FALSE(feed(in, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false));
    CHECK_FALSE(in.clientBytes("Conn: x\r\n\r\n"));
    CHECK(sink.seen.empty());
  }

  TEST_CASE("garbage answering a good request gives up without reporting nonsense") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    CHECK(feed(in, "GET / HTTP/1.1\r\nHost: h\r\n\r\n", true));
    CHECK_FALSE(feed(in, "\x01\x02\x03 not a response", false));
    CHECK_FALSE(in.observing());
    CHECK(sink.seen.empty());
    in.finish();
    CHECK(sink.seen.empty());
  }

  TEST_CASE("a response past our header limit is dropped, not counted as a failure") {
    // http_parser stops at 80 KiB of headers: a limit of ours, not a failure
    // of the server, so the request is neither lost nor counted as failed.
    Sink sink;
    l7::Inspector in(sink, 10s);
    CHECK(feed(in, "GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n", true));
    CHECK(feed(in, "HTTP/1.1 204 No Content\r\n\r\n", false));
    REQUIRE(sink.seen.size() == 1);
    std::string big = "HTTP/1.1 200 OK\r\n";
    while (big.size() < 90 * 1024) big += "Set-Cookie: " + std::string(1000, 'c') + "\r\n";
    CHECK_FALSE(feed(in, big, false));
    CHECK_FALSE(in.observing());
    CHECK(sink.seen.size() == 1);  // /b's headers never ended: dropped, not failed
    CHECK(sink.seen[0].status == 204);
  }

  TEST_CASE("a response cut short by the server's end is reported with the status it had") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    CHECK(feed(in, "GET /big HTTP/1.1\r\nHost: h\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n",
               true));
    CHECK(feed(in, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789", false));
    CHECK(sink.seen.empty());
    in.serverEnd();
    CHECK_FALSE(in.observing());
    REQUIRE(sink.seen.size() == 2);
    CHECK(sink.seen[0].path == "/big");
    CHECK(sink.seen[0].status == 200);
    CHECK(sink.seen[0].response_bytes == 10);
    CHECK(sink.seen[1].path == "/next");
    CHECK(sink.seen[1].status == 0);
  }

  TEST_CASE("204, 304 and 1xx have no body, whatever their Content-Length says") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    std::string requests;
    for (const char* p : {"/304", "/204", "/201", "/404", "/500"})
      requests += std::string("GET ") + p + " HTTP/1.1\r\nHost: h\r\n\r\n";
    CHECK(feed(in, requests, true));
    CHECK(feed(in,
               "HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"
               "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n"
               "HTTP/1.1 100 Continue\r\nContent-Length: 3\r\n\r\n"
               "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
               "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
               "HTTP/1.1 500 Oops\r\nContent-Length: 1\r\n\r\n!",
               false));
    REQUIRE(sink.seen.size() == 5);
    std::vector<int> codes;
    for (const auto& r : sink.seen) codes.push_back(r.status);
    CHECK(codes == std::vector<int>{304, 204, 201, 404, 500});
    CHECK(sink.seen[0].response_bytes == 0);
    CHECK(sink.seen[2].response_bytes == 2);
    CHECK(in.observing());
  }
}

// Declarations by port, as the agent's directory would answer.
class PortsDirectory final : public MeshDirectory {
 public:
  std::map<uint16_t, bool> declared;
  std::optional<MeshWorkload> meshed(const IpAddr&) override { return std::nullopt; }
  std::shared_ptr<const ServiceTarget> service(const IpAddr&, uint16_t) override { return nullptr; }
  bool hasView() override { return true; }
  std::optional<bool> opaquePort(const IpAddr&, uint16_t port) override {
    auto it = declared.find(port);
    if (it == declared.end()) return std::nullopt;
    return it->second;
  }
};

TEST_SUITE("l7/opaque-ports") {
  TEST_CASE("appProtocol values: opaque, inspected, or unknown (as if unset)") {
    for (const char* v : {"tcp", "TCP", "tls", "https", "opaque", "linkerd.io/opaque",
                          "linkerd.io/tcp", "mysql", "mongo", "redis", "kubernetes.io/wss"}) {
      CAPTURE(v);
      CHECK(appProtocolOpaque(v) == std::optional<bool>(true));
    }
    for (const char* v : {"http", "HTTP", "http2", "h2c", "grpc", "grpc-web", "kubernetes.io/h2c",
                          "kubernetes.io/ws"}) {
      CAPTURE(v);
      CHECK(appProtocolOpaque(v) == std::optional<bool>(false));
    }
    for (const char* v : {"", "foo", "example.com/custom", "tcpx", "http "}) {
      CAPTURE(v);
      CHECK_FALSE(appProtocolOpaque(v).has_value());
    }
  }

  TEST_CASE("a declaration beats the default opaque ports, both ways") {
    EngineConfig config;
    PortsDirectory dir;
    dir.declared = {{9090, true}, {6379, false}};
    auto dst = [](uint16_t port) {
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(0x0af40105);
      a.sin_port = htons(port);
      return a;
    };
    CHECK(l7::shouldInspect(config, &dir, dst(8080)));           // nothing declared
    CHECK_FALSE(l7::shouldInspect(config, &dir, dst(9090)));     // annotation / appProtocol tcp
    CHECK(l7::shouldInspect(config, &dir, dst(6379)));           // appProtocol http on a default
    CHECK_FALSE(l7::shouldInspect(config, &dir, dst(3306)));     // a default, undeclared
    CHECK_FALSE(l7::shouldInspect(config, nullptr, dst(6379)));  // no directory: defaults
    CHECK(l7::shouldInspect(config, nullptr, dst(9090)));
    config.http_detection = false;
    CHECK_FALSE(l7::shouldInspect(config, &dir, dst(6379)));  // off is off
  }
}

TEST_SUITE("l7/opaque") {
  TEST_CASE("TLS, binary protocols and garbage are opaque at once") {
    for (std::string first : {kTlsClientHello, std::string("*1\r\n$4\r\nPING\r\n"),
                              std::string("\x00\x01\x02\x03", 4)}) {
      Sink sink;
      l7::Inspector in(sink, 10s);
      CHECK_FALSE(in.clientBytes(first));
      CHECK_FALSE(in.detecting());
      CHECK(toString(in.protocol()) == std::string("tcp"));
    }
  }

  TEST_CASE("a server-first protocol: the server's banner ends detection") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    CHECK_FALSE(in.serverBytes("220 mail.example ESMTP\r\n"));
    CHECK_FALSE(in.detecting());
    CHECK_FALSE(in.clientBytes("GET / HTTP/1.1\r\n\r\n"));  // too late: the connection is opaque
    CHECK(sink.seen.empty());
  }

  TEST_CASE("a client that sends nothing in time is opaque") {
    Sink sink;
    l7::Inspector in(sink, 0ms);
    CHECK_FALSE(in.clientBytes("GET / HTTP/1.1\r\n\r\n"));
    CHECK_FALSE(in.observing());
  }
}
