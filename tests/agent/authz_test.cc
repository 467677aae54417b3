#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <string>
#include <vector>

#include "agent/authz/node_sockets.h"
#include "agent/authz/policy_authorizer.h"
#include "agent/authz/probe_source.h"
#include "sluice/common/addr.h"

using namespace sluice;
using namespace sluice::agent::authz;
using sluice::ztunnel::InboundRequest;
using sluice::ztunnel::Path;
using sluice::ztunnel::Verdict;

namespace {

constexpr const char* kPodIp = "10.244.1.5";
constexpr const char* kProbeSource = "10.244.1.1";
constexpr const char* kPodIp6 = "fd00:244:1::5";
constexpr const char* kProbeSource6 = "fd00:244:1::1";

uint32_t ip(const char* s) { return *parseIp4(s); }

LocalWorkload api() {
  LocalWorkload w;
  w.uid = "uid-api";
  w.ns = "prod";
  w.name = "api-0";
  w.identity = "spiffe://cluster.local/ns/prod/sa/api";
  w.labels = {{"app", "api"}};
  w.ip4 = ip(kPodIp);
  w.probe_source = ip(kProbeSource);
  w.ip6 = *IpAddr::parse(kPodIp6);
  w.probe_source6 = *IpAddr::parse(kProbeSource6);
  return w;
}

policy::AuthorizationPolicy policyOf(const char* name, policy::Action action,
                                     std::vector<policy::Rule> rules) {
  policy::AuthorizationPolicy p;
  p.ns = "prod";
  p.name = name;
  p.selector = {{"app", "api"}};
  p.action = action;
  p.rules = std::move(rules);
  return p;
}

policy::Rule fromNamespace(const char* ns) {
  policy::Rule r;
  policy::Source s;
  s.namespaces = {ns};
  r.from.push_back(s);
  return r;
}

std::shared_ptr<const policy::PolicySet> set(std::vector<policy::AuthorizationPolicy> a,
                                             std::vector<policy::PeerAuthentication> p = {}) {
  auto s = policy::PolicySet::build(std::move(a), std::move(p));
  REQUIRE(s.has_value());
  return *s;
}

// An inbound request to the api pod's port 8080.
struct Ask {
  std::string principal;  // empty: plaintext
  std::string source = "10.244.2.7";
  uint16_t port = 8080;
  std::string pod = "prod/api-0";
  std::string destination = kPodIp;
  InboundRequest req() const {
    InboundRequest r;
    r.path = principal.empty() ? Path::kInbound : Path::kHbone;
    r.pod_uid = "container-1";
    r.pod = pod;
    r.source = SockAddr(*IpAddr::parse(source), 40000);
    r.destination = SockAddr(*IpAddr::parse(destination), port);
    r.source_principal = principal;
    r.mutual_tls = !principal.empty();
    return r;
  }
};

const char* kWeb = "spiffe://cluster.local/ns/front/sa/web";
const char* kEvil = "spiffe://cluster.local/ns/evil/sa/x";

uint64_t denied(const PolicyAuthorizer& a, DenyReason r) {
  return a.stats().denied[static_cast<size_t>(r)];
}

}  // namespace

TEST_SUITE("policy authorizer") {
  TEST_CASE("before any view and for a pod the view does not hold: refused, no policy view") {
    PolicyAuthorizer a({});
    auto r = a.authorize(Ask{kWeb}.req());
    CHECK(r.verdict == Verdict::kDeny);
    CHECK(r.why.find("no policy view") != std::string::npos);
    a.update(set({}), {api()});
    Ask other{kWeb};
    other.pod = "prod/api-1";
    CHECK(a.authorize(other.req()).verdict == Verdict::kDeny);
    CHECK(a.authorize(Ask{kWeb}.req()).verdict == Verdict::kAllow);
    CHECK(denied(a, DenyReason::kNoPolicyView) == 2);
    // A pod of the same name at another address (recreated): not this workload.
    auto moved = api();
    moved.ip4 = ip("10.244.1.99");
    a.update(set({}), {moved});
    CHECK(a.authorize(Ask{kWeb}.req()).verdict == Verdict::kDeny);
    // The view does not have the pod's IP yet: the name decides.
    moved.ip4 = 0;
    a.update(set({}), {moved});
    CHECK(a.authorize(Ask{kWeb}.req()).verdict == Verdict::kAllow);
  }

  TEST_CASE("DENY by namespace names the policy, ALLOW by principal lets others through") {
    PolicyAuthorizer a({});
    policy::Rule by_principal;
    policy::Source s;
    s.principals = {"cluster.local/ns/front/sa/web", "cluster.local/ns/evil/sa/x"};
    by_principal.from.push_back(s);
    a.update(set({policyOf("deny-evil", policy::Action::kDeny, {fromNamespace("evil")}),
                  policyOf("allow-web", policy::Action::kAllow, {by_principal})}),
             {api()});
    CHECK(a.authorize(Ask{kWeb}.req()).verdict == Verdict::kAllow);
    auto r = a.authorize(Ask{kEvil}.req());
    CHECK(r.verdict == Verdict::kDeny);
    CHECK(r.why == "DENY matched by policy prod/deny-evil");
    auto other = a.authorize(Ask{"spiffe://cluster.local/ns/front/sa/other"}.req());
    CHECK(other.verdict == Verdict::kDeny);
    CHECK(other.why == "no ALLOW matched");
    // Plaintext never matches `namespaces` nor principals.
    CHECK(a.authorize(Ask{}.req()).verdict == Verdict::kDeny);
    CHECK(denied(a, DenyReason::kDenyMatched) == 1);
    CHECK(denied(a, DenyReason::kNoAllowMatched) == 2);
  }

  TEST_CASE("STRICT refuses plaintext, not peers, and node probes pass unless turned off") {
    policy::PeerAuthentication strict;
    strict.ns = "prod";
    strict.name = "strict";
    strict.mode = policy::MtlsMode::kStrict;
    for (bool probes : {true, false}) {
      CAPTURE(probes);
      PolicyAuthorizer a({.allow_node_probes = probes, .node_opened = {}});
      a.update(set({}, {strict}), {api()});
      auto plain = a.authorize(Ask{}.req());
      CHECK(plain.verdict == Verdict::kDeny);
      CHECK(plain.why == "STRICT mTLS by policy prod/strict");
      CHECK(a.authorize(Ask{kWeb}.req()).verdict == Verdict::kAllow);
      Ask probe;
      probe.source = kProbeSource;
      CHECK((a.authorize(probe.req()).verdict == Verdict::kAllow) == probes);
      CHECK(denied(a, DenyReason::kStrictMtls) == (probes ? 1u : 2u));
      // The same to the pod's IPv6 address: from the node's IPv6 address on
      // the pod's link, a probe; from another IPv6 address, plaintext.
      Ask probe6;
      probe6.source = kProbeSource6;
      probe6.destination = kPodIp6;
      CHECK((a.authorize(probe6.req()).verdict == Verdict::kAllow) == probes);
      Ask plain6;
      plain6.source = "fd00:244:2::7";
      plain6.destination = kPodIp6;
      CHECK(a.authorize(plain6.req()).verdict == Verdict::kDeny);
      CHECK(denied(a, DenyReason::kStrictMtls) == (probes ? 2u : 4u));
    }
  }

  TEST_CASE(
      "from the node's address, a probe only if the node opened it: a forwarded NodePort "
      "connection is plaintext") {
    policy::PeerAuthentication strict;
    strict.ns = "prod";
    strict.name = "strict";
    strict.mode = policy::MtlsMode::kStrict;
    // The node's own sockets: one probe connection, from port 40000 to the pod's 8080.
    std::vector<std::pair<std::string, std::string>> asked;
    PolicyAuthorizer a({.allow_node_probes = true,
                        .node_opened = [&](const SockAddr& node_side, const SockAddr& pod_side) {
                          asked.emplace_back(formatEndpoint(node_side), formatEndpoint(pod_side));
                          return node_side.port() == 40000 && pod_side.port() == 8080;
                        }});
    a.update(set({}, {strict}), {api()});
    Ask probe;
    probe.source = kProbeSource;
    CHECK(a.authorize(probe.req()).verdict == Verdict::kAllow);
    REQUIRE(asked.size() == 1);
    CHECK(asked[0] ==
          std::pair<std::string, std::string>{"10.244.1.1:40000", std::string(kPodIp) + ":8080"});
    // The same source address on another port of the pod: no socket of the node's has
    // that tuple (kube-proxy forwarded it, masqueraded to the node's address).
    Ask forwarded = probe;
    forwarded.port = 9090;
    auto r = a.authorize(forwarded.req());
    CHECK(r.verdict == Verdict::kDeny);
    CHECK(r.why == "STRICT mTLS by policy prod/strict");
    // Another source is never looked up.
    CHECK(a.authorize(Ask{}.req()).verdict == Verdict::kDeny);
    CHECK(asked.size() == 2);
  }

  TEST_CASE("NodeSockets finds this namespace's TCP connections by their tuple, and no other") {
    auto opened = NodeSockets::open();
    REQUIRE_MESSAGE(opened.has_value(), (opened ? "" : opened.error().describe()));
    NodeSockets& ns = **opened;
    auto local = [](int fd) {
      sockaddr_storage a{};
      socklen_t len = sizeof(a);
      REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
      return SockAddr::fromRaw(reinterpret_cast<sockaddr*>(&a), len);
    };
    for (const char* loopback : {"127.0.0.1", "::1"}) {
      CAPTURE(loopback);
      SockAddr any(*IpAddr::parse(loopback), 0);
      UniqueFd server(::socket(any.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
      UniqueFd client(::socket(any.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
      REQUIRE(::bind(server.get(), any.sa(), any.len()) == 0);
      REQUIRE(::listen(server.get(), 4) == 0);
      SockAddr at = local(server.get());
      REQUIRE(::connect(client.get(), at.sa(), at.len()) == 0);
      UniqueFd accepted(::accept4(server.get(), nullptr, nullptr, SOCK_CLOEXEC));
      REQUIRE(accepted);
      SockAddr from = local(client.get());
      CHECK(ns.has(from, at));  // the client's socket
      CHECK(ns.has(at, from));  // the accepted one
      // Tuples nobody here has: another port, another address.
      CHECK_FALSE(ns.has(SockAddr(from.ip(), static_cast<uint16_t>(from.port() ^ 1)), at));
      CHECK_FALSE(ns.has(SockAddr(*IpAddr::parse("10.1.2.3"), from.port()), at));
    }
  }

  TEST_CASE("AUDIT allows and counts") {
    PolicyAuthorizer a({});
    a.update(set({policyOf("audit-all", policy::Action::kAudit, {policy::Rule{}})}), {api()});
    CHECK(a.authorize(Ask{kWeb}.req()).verdict == Verdict::kAllow);
    CHECK(a.authorize(Ask{}.req()).verdict == Verdict::kAllow);
    CHECK(a.stats().audit_matches == 2);
    // An open connection asked again after a policy change: audited once,
    // when it opened.
    Ask web{kWeb};  // req() views its strings
    InboundRequest again = web.req();
    again.recheck = true;
    CHECK(a.authorize(again).verdict == Verdict::kAllow);
    CHECK(a.stats().audit_matches == 2);
  }

  TEST_CASE("port rules") {
    PolicyAuthorizer a({});
    policy::Rule r;
    policy::Operation op;
    op.ports = {"8080"};
    r.to.push_back(op);
    a.update(set({policyOf("only-8080", policy::Action::kAllow, {r})}), {api()});
    CHECK(a.authorize(Ask{kWeb}.req()).verdict == Verdict::kAllow);
    Ask other{kWeb};
    other.port = 9090;
    CHECK(a.authorize(other.req()).verdict == Verdict::kDeny);
  }

  TEST_CASE("update says when open connections must be asked again") {
    PolicyAuthorizer a({});
    auto s = set({});
    CHECK(a.update(s, {api()}));
    CHECK_FALSE(a.update(s, {api()}));  // same set, same labels
    auto relabelled = api();
    relabelled.labels = {{"app", "web"}};
    CHECK(a.update(s, {relabelled}));
    CHECK(a.update(set({}), {relabelled}));  // another set
    auto deny_all = set({policyOf("deny-all", policy::Action::kDeny, {policy::Rule{}})});
    CHECK(a.update(deny_all, {api()}));
    CHECK(a.authorize(Ask{kWeb}.req()).verdict == Verdict::kDeny);
  }

  TEST_CASE("probe sources: what the routing picks towards the pod, in the pod address's family") {
    ProbeSources sources;
    // Towards a loopback address the node's routing picks that address itself.
    CHECK(sources.forPod(*IpAddr::parse("127.0.0.1")) == *IpAddr::parse("127.0.0.1"));
    CHECK(sources.forPod(*IpAddr::parse("::1")) == *IpAddr::parse("::1"));
    CHECK(sources.forPod(IpAddr{}).empty());
  }
}
