#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "ztunnel/proxy/balancer.h"

#include <arpa/inet.h>
#include <doctest/doctest.h>

#include <cmath>
#include <map>

using namespace sluice::ztunnel;
using namespace sluice::ztunnel::proxy;
using namespace std::chrono_literals;

namespace {
sockaddr_in ep(const char* ip, uint16_t port = 8080) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  inet_pton(AF_INET, ip, &a.sin_addr);
  a.sin_port = htons(port);
  return a;
}
std::string str(const sluice::SockAddr& a) { return a.ip().str(); }
ServiceTarget three() {
  return ServiceTarget{"shop/web", {ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")}};
}
}  // namespace

TEST_SUITE("ztunnel/balancer") {
  TEST_CASE("healthy endpoints with sub-floor latency share the load") {
    Balancer b({}, 1);
    auto svc = three();
    auto now = Balancer::Clock::now();
    std::map<std::string, int> count;
    for (int i = 0; i < 3000; ++i) {
      auto e = b.pick(svc, {}, now);
      REQUIRE(e.has_value());
      // One endpoint is "local" (fast), the others slower but under the floor.
      b.result(*e, true, str(*e) == "10.0.0.1" ? 50us : 600us, now);
      b.closed(*e);
      count[str(*e)]++;
    }
    for (auto& [ip, n] : count) {
      CAPTURE(ip);
      CHECK(n > 3000 * 0.25);
    }
  }

  TEST_CASE("slow and busy endpoints get fewer new connections") {
    Balancer b({}, 2);
    auto svc = three();
    auto now = Balancer::Clock::now();
    for (int i = 0; i < 10; ++i) b.result(ep("10.0.0.3"), true, 20ms, now);
    std::map<std::string, int> count;
    for (int i = 0; i < 3000; ++i) {
      auto e = b.pick(svc, {}, now);
      count[str(*e)]++;
      b.closed(*e);
    }
    CHECK(count["10.0.0.3"] < 3000 / 10);
    // Open connections count: the endpoint holding many is avoided.
    Balancer c({}, 3);
    std::vector<sluice::SockAddr> held;
    for (int i = 0; i < 50; ++i) {
      auto e = c.pick(ServiceTarget{"s", {ep("10.0.0.1")}}, {}, now);
      held.push_back(*e);
    }
    CHECK(c.open(ep("10.0.0.1")) == 50);
    int first = 0;
    for (int i = 0; i < 300; ++i) {
      auto e = c.pick(svc, {}, now);
      first += str(*e) == "10.0.0.1";
      c.closed(*e);
    }
    CHECK(first == 0);  // any pair containing it picks the other one
  }

  TEST_CASE("an average decays by halves: 2^-x without libm, as exact as std::exp2") {
    CHECK(halvings(0) == 1.0);
    CHECK(halvings(-3) == 1.0);
    CHECK(halvings(std::nan("")) == 1.0);
    CHECK(halvings(1) == 0.5);
    CHECK(halvings(10) == std::ldexp(1.0, -10));
    CHECK(halvings(5000) == 0.0);
    CHECK(halvings(1022) == 0.0);
    for (double x : {1e-9, 0.001, 0.25, 0.5, 0.999999, 1.5, 2.2, 7.75, 33.3, 100.01, 1021.5})
      CHECK(halvings(x) == doctest::Approx(std::exp2(-x)).epsilon(1e-12));
  }

  TEST_CASE("one slow connect keeps an endpoint out only until its average has decayed") {
    // Connections one at a time (none open at a pick): an endpoint whose
    // first connect was slow (its tunnel's handshake) loses every choice,
    // so only the decay of its average brings it back.
    Balancer b({}, 7);
    auto svc = three();
    auto t0 = Balancer::Clock::now();
    for (int i = 0; i < 5; ++i) b.result(ep("10.0.0.2"), true, 25ms, t0);  // 21.6 ms
    std::map<std::string, int> first_second, later;
    for (int i = 0; i < 6000; ++i) {  // one every 10 ms for a minute
      auto now = t0 + i * 10ms;
      auto e = b.pick(svc, {}, now);
      REQUIRE(e.has_value());
      b.result(*e, true, 300us, now);
      b.closed(*e);
      (i < 100 ? first_second : later)[str(*e)]++;
    }
    CHECK(first_second["10.0.0.2"] < 5);  // still avoided while the sample is fresh
    // 21.6 ms halves every 5 s: under the 5 ms floor after ~11 s; from
    // then on it shares the load as an equal.
    CHECK(later["10.0.0.2"] > 5900 / 5);
    CHECK(later["10.0.0.1"] > 5900 / 5);
    CHECK(later["10.0.0.3"] > 5900 / 5);
  }

  TEST_CASE("consecutive failures eject for a while - tried endpoints are skipped") {
    Balancer::Config cfg;
    cfg.eject_after = 3;
    cfg.eject_for = 5s;
    Balancer b(cfg, 4);
    auto svc = three();
    auto now = Balancer::Clock::now();
    CHECK_FALSE(b.result(ep("10.0.0.2"), false, 0us, now));
    CHECK_FALSE(b.result(ep("10.0.0.2"), false, 0us, now));
    CHECK(b.result(ep("10.0.0.2"), false, 0us, now));
    CHECK(b.ejected(ep("10.0.0.2"), now + 4s));
    CHECK_FALSE(b.ejected(ep("10.0.0.2"), now + 6s));
    for (int i = 0; i < 200; ++i) {
      auto e = b.pick(svc, {}, now + 1s);
      CHECK(str(*e) != "10.0.0.2");
      b.closed(*e);
    }
    // Retries never repeat an endpoint; with all tried there is none left.
    std::vector<sluice::SockAddr> tried = {ep("10.0.0.1"), ep("10.0.0.3")};
    auto last = b.pick(svc, tried, now + 1s);
    REQUIRE(last.has_value());  // only the ejected one is left: trying beats refusing
    CHECK(str(*last) == "10.0.0.2");
    tried.push_back(*last);
    CHECK_FALSE(b.pick(svc, tried, now).has_value());
    // Failures while ejected (every endpoint down: it is still tried) neither
    // eject it again nor extend it; after its time, eject_after failures
    // eject it again, for twice as long.
    for (int i = 0; i < 10; ++i) CHECK_FALSE(b.result(ep("10.0.0.2"), false, 0us, now + 1s));
    CHECK_FALSE(b.ejected(ep("10.0.0.2"), now + 6s));
    CHECK_FALSE(b.result(ep("10.0.0.2"), false, 0us, now + 6s));
    CHECK_FALSE(b.result(ep("10.0.0.2"), false, 0us, now + 6s));
    CHECK(b.result(ep("10.0.0.2"), false, 0us, now + 6s));
    CHECK(b.ejected(ep("10.0.0.2"), now + 15s));
    CHECK_FALSE(b.ejected(ep("10.0.0.2"), now + 17s));
    // A success resets the failure count.
    b.result(ep("10.0.0.1"), false, 0us, now);
    b.result(ep("10.0.0.1"), false, 0us, now);
    b.result(ep("10.0.0.1"), true, 100us, now);
    CHECK_FALSE(b.result(ep("10.0.0.1"), false, 0us, now));
  }

  TEST_CASE("IPv6 endpoints are kept apart by address and port") {
    auto now = Balancer::Clock::now();
    auto e6 = [](const char* text) { return *sluice::SockAddr::parse(text); };
    ServiceTarget svc{"shop/six", {e6("[fd00:244:1::7]:8080"), e6("[fd00:244:2::8]:8080")}};
    Balancer b({}, 11);
    std::vector<sluice::SockAddr> tried;
    auto first = b.pick(svc, tried, now);
    REQUIRE(first.has_value());
    tried.push_back(*first);
    auto second = b.pick(svc, tried, now);
    REQUIRE(second.has_value());
    CHECK(*second != *first);
    tried.push_back(*second);
    CHECK_FALSE(b.pick(svc, tried, now).has_value());
    CHECK(b.open(e6("[fd00:244:1::7]:8080")) == 1);
    CHECK(b.open(e6("[fd00:244:1::7]:8081")) == 0);
    for (int i = 0; i < 3; ++i) b.result(e6("[fd00:244:2::8]:8080"), false, 0us, now);
    CHECK(b.ejected(e6("[fd00:244:2::8]:8080"), now));
    CHECK_FALSE(b.ejected(e6("[fd00:244:1::7]:8080"), now));
    for (int i = 0; i < 5; ++i) {
      auto p = b.pick(svc, {}, now);
      REQUIRE(p.has_value());
      CHECK(p->str() == "[fd00:244:1::7]:8080");  // the healthy one
      b.closed(*p);
    }
  }
}
