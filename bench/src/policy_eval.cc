// Benchmark: the cost of one authorization decision (PolicySet::evaluate, the
// call the proxy makes for every new inbound connection) with 1,000
// AuthorizationPolicies in scope, for an allowed, a denied and an unmatched
// connection. Two shapes of the 1,000:
//   node: what a node holds in a 20-namespace cluster: per namespace 48
//         per-workload policies (selector app=appN, ALLOW by principal and
//         port, DENY by address block) and 2 namespace-wide ones, plus 5
//         mesh-wide policies; the destination sees the handful that select it.
//   one workload: all 1,000 apply to the destination (900 ALLOW, each
//         one principal; 100 DENY, each one /24): the worst case, every
//         policy examined for an unmatched connection.
//   policy_eval [ITERATIONS] [ROUNDS]   (default 1000000 5; best round reported)
#include <arpa/inet.h>
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/policy/policy_set.h"

using namespace sluice::policy;
using Clock = std::chrono::steady_clock;

namespace {

Source principals(std::vector<std::string> p) {
  Source s;
  s.principals = std::move(p);
  return s;
}
Source block(std::string b) {
  Source s;
  s.ip_blocks = {std::move(b)};
  return s;
}
Operation ports(std::vector<std::string> p) {
  Operation o;
  o.ports = std::move(p);
  return o;
}
AuthorizationPolicy policy(std::string ns, std::string name, Action action, LabelMap selector,
                           std::vector<Rule> rules) {
  AuthorizationPolicy p;
  p.ns = std::move(ns);
  p.name = std::move(name);
  p.action = action;
  p.selector = std::move(selector);
  p.rules = std::move(rules);
  return p;
}
std::string spiffe(int ns, int sa) {
  return fmt::format("spiffe://cluster.local/ns/ns{}/sa/sa{}", ns, sa);
}
std::string principal(int ns, int sa) {
  return fmt::format("cluster.local/ns/ns{}/sa/sa{}", ns, sa);
}
uint32_t ip(const char* s) { return inet_addr(s); }

std::vector<AuthorizationPolicy> nodeSet() {
  std::vector<AuthorizationPolicy> out;
  for (int n = 0; n < 20; ++n) {
    std::string ns = fmt::format("ns{}", n);
    for (int a = 0; a < 48; ++a) {
      LabelMap sel = {{"app", fmt::format("app{}", a % 24)}};
      if (a < 24) {  // ALLOW three callers on two ports
        out.push_back(policy(ns, fmt::format("allow-app{}", a), Action::kAllow, sel,
                             {Rule{{principals({principal(n, a), principal((n + 1) % 20, a),
                                                principal((n + 2) % 20, a)})},
                                   {ports({"8080", "9090"})},
                                   {}}}));
      } else {  // DENY a block
        out.push_back(policy(ns, fmt::format("deny-app{}", a % 24), Action::kDeny, sel,
                             {Rule{{block(fmt::format("10.{}.{}.0/24", 200 + n, a))}, {}, {}}}));
      }
    }
    out.push_back(policy(ns, "deny-legacy", Action::kDeny, {},
                         {Rule{{block(fmt::format("192.168.{}.0/24", n))}, {}, {}}}));
    out.push_back(policy(ns, "audit-admin", Action::kAudit, {},
                         {Rule{{principals({"cluster.local/ns/ops/sa/admin"})}, {}, {}}}));
  }
  for (int m = 0; m < 5; ++m)
    out.push_back(policy(kRootNamespace, fmt::format("mesh-deny-{}", m), Action::kDeny, {},
                         {Rule{{block(fmt::format("172.16.{}.0/24", m))}, {}, {}}}));
  return out;
}

std::vector<AuthorizationPolicy> oneWorkloadSet() {
  std::vector<AuthorizationPolicy> out;
  for (int i = 0; i < 900; ++i)
    out.push_back(policy("ns7", fmt::format("allow-{}", i), Action::kAllow, {},
                         {Rule{{principals({principal(i % 20, i)})}, {ports({"8080"})}, {}}}));
  for (int i = 0; i < 100; ++i)
    out.push_back(
        policy("ns7", fmt::format("deny-{}", i), Action::kDeny, {},
               {Rule{{block(fmt::format("10.{}.{}.0/24", 100 + i / 200, i % 200))}, {}, {}}}));
  return out;
}

struct Scenario {
  const char* name;
  std::string principal;
  const char* source;
  bool allow;
};

double nsPerDecision(const PolicySet& set, const Request& r, long iterations, int rounds) {
  double best = 1e18;
  unsigned sink = 0;
  for (int round = 0; round < rounds; ++round) {
    auto t0 = Clock::now();
    for (long i = 0; i < iterations; ++i) sink += set.evaluate(r).allow;
    auto t1 = Clock::now();
    best = std::min(best, std::chrono::duration<double, std::nano>(t1 - t0).count() / iterations);
  }
  if (sink == 12345) std::puts("");  // keep the loop
  return best;
}

int run(const char* shape, std::vector<AuthorizationPolicy> policies,
        const std::vector<Scenario>& scenarios, long iterations, int rounds) {
  size_t count = policies.size();
  auto set = PolicySet::build(std::move(policies), {});
  if (!set) {
    std::fprintf(stderr, "%s\n", set.error().message.c_str());
    return 1;
  }
  Label labels[] = {{"app", "app3"}, {"version", "v1"}, {"pod-template-hash", "7d4b9c"}};
  Workload w{"ns7", "app3-7d4b9c-x2x", labels, "spiffe://cluster.local/ns/ns7/sa/sa3"};
  for (const auto& s : scenarios) {
    Request r;
    r.destination = w;
    r.destination_ip = ip("10.244.1.17");
    r.destination_port = 8080;
    r.source_ip = ip(s.source);
    r.source_principal = s.principal;
    r.mutual_tls = true;
    r.node_ip = ip("10.0.0.1");
    Decision d = (*set)->evaluate(r);
    if (d.allow != s.allow) {
      std::fprintf(stderr, "%s/%s: unexpected decision %s\n", shape, s.name, d.describe().c_str());
      return 1;
    }
    double ns = nsPerDecision(**set, r, iterations, rounds);
    std::printf("%-14s %-9s %5zu policies  %7.0f ns/decision  (%s)\n", shape, s.name, count, ns,
                d.describe().c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  long iterations = argc > 1 ? std::atol(argv[1]) : 1000000;
  int rounds = argc > 2 ? std::atoi(argv[2]) : 5;
  std::printf("policy evaluation: best of %d rounds of %ld decisions\n", rounds, iterations);
  // node: ns7/app3 is selected by allow-app3 (principals of sa3 in ns7, ns8,
  // ns9), deny-app3 (10.207.27.0/24), and the namespace-wide and mesh-wide ones.
  if (run("node", nodeSet(),
          {{"allow", spiffe(8, 3), "10.244.2.9", true},
           {"deny", spiffe(8, 3), "10.207.27.4", false},
           {"no-match", spiffe(4, 3), "10.244.2.9", false}},
          iterations, rounds))
    return 1;
  // one workload: the allowed principal is the last ALLOW examined, the
  // denied address is in the last DENY's block, no-match examines all 1,000.
  return run("one-workload", oneWorkloadSet(),
             {{"allow", spiffe(899 % 20, 899), "10.244.2.9", true},
              {"deny", spiffe(899 % 20, 899), "10.100.99.4", false},
              {"no-match", spiffe(3, 5000), "10.244.2.9", false}},
             iterations / 10, rounds);
}
