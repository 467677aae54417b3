#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>

#include "agent/admin/server.h"
#include "support/local_http.h"

using namespace sluice;

namespace {

using test::freePort;
using test::roundTrip;

std::string get(int port, const std::string& path) { return test::httpGet(port, path); }

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

    // The port is taken: a clear error, the first server unharmed.
    auto second = agent::admin::Server::create("127.0.0.1:" + std::to_string(port), src);
    REQUIRE_FALSE(second.has_value());
    CHECK(second.error().describe().find("another agent") != std::string::npos);
    CHECK(get(port, "/healthz").find("200 OK") != std::string::npos);
    CHECK_FALSE(agent::admin::Server::create("localhost:15000", src).has_value());
  }
}
