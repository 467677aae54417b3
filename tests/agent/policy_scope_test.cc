#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "policy_cases.h"

using namespace sluice;
using namespace sluice::policy;
using namespace sluice::policy::test_cases;

// Which policies apply (scope, the index), PeerAuthentication, kubelet probes.
TEST_SUITE("policy") {
  TEST_CASE("scope: selector, namespace, root namespace, dry-run") {
    const std::string deny_admin =
        R"({action: DENY, rules: [{from: [{source: {namespaces: [ops]}}]}]})";
    run({
        {"a mesh-wide policy (root namespace, no selector) applies in every namespace",
         ap("sluice-system", "mesh-deny", deny_admin), admin(), false, kDenied,
         "sluice-system/mesh-deny"},
        {"a root-namespace selector policy applies to matching workloads everywhere",
         ap("sluice-system", "mesh-web",
            R"({selector: {matchLabels: {app: web}}, action: DENY, rules: [{from: [{source: {namespaces: [ops]}}]}]})"),
         admin(), false, kDenied, "sluice-system/mesh-web"},
        {"... and not to the others",
         ap("sluice-system", "mesh-api",
            R"({selector: {matchLabels: {app: api}}, action: DENY, rules: [{}]})"),
         admin(), true, kNoPolicy},
        {"a mesh-wide ALLOW makes ALLOW policies apply in prod",
         ap("sluice-system", "mesh-allow",
            R"({rules: [{from: [{source: {namespaces: [front]}}]}]})"),
         admin(), false, kNoAllow},
        {"a mesh-wide ALLOW and a namespace ALLOW: either allows",
         ap("sluice-system", "mesh-allow",
            R"({rules: [{from: [{source: {namespaces: [front]}}]}]})") +
             rule("ns-allow", from("{namespaces: [ops]}")),
         admin(), true, kAllowed, "prod/ns-allow"},
        {"a policy of another namespace does not apply",
         ap("staging", "deny-all", "{action: DENY, rules: [{}]}"),
         {},
         true,
         kNoPolicy},
        {"a selector that selects the workload",
         ap("prod", "web",
            R"({selector: {matchLabels: {app: web, version: v1}}, action: DENY, rules: [{}]})"),
         {},
         false,
         kDenied,
         "prod/web"},
        {"a selector with a label the workload lacks",
         ap("prod", "web",
            R"({selector: {matchLabels: {app: web, tier: db}}, action: DENY, rules: [{}]})"),
         {},
         true,
         kNoPolicy},
        {"a selector with another value",
         ap("prod", "api", R"({selector: {matchLabels: {app: api}}, action: DENY, rules: [{}]})"),
         {},
         true,
         kNoPolicy},
        {"an ALLOW for another workload does not make ALLOW apply here",
         ap("prod", "api",
            R"({selector: {matchLabels: {app: api}}, rules: [{from: [{source: {namespaces: [ops]}}]}]})"),
         {},
         true,
         kNoPolicy},
        {"a dry-run policy is not enforced",
         ap("prod", "dry", "{action: DENY, rules: [{}]}",
            R"(, annotations: {"istio.io/dry-run": "true"})"),
         {},
         true,
         kNoPolicy},
    });
  }

  // Policies whose every rule needs an exact principal are found by the
  // peer's principal; selector policies are grouped by selector. Neither
  // may change an answer.
  TEST_CASE("index: principal keys and selector groups answer as a scan would") {
    const std::string front = R"("cluster.local/ns/front/sa/frontend")";
    const std::string ops = R"("cluster.local/ns/ops/sa/admin")";
    const std::string web = "selector: {matchLabels: {app: web}}, ";
    run({
        {"a principal rule OR an address rule: not keyed, plaintext from the address allowed",
         ap("prod", "p",
            "{rules: [{from: [{source: {principals: [" + ops +
                "]}}]}, {from: [{source: {ipBlocks: [\"10.0.1.0/24\"]}}]}]}"),
         plain(), true, kAllowed, "prod/p"},
        {"sources OR'd, one without principals: not keyed",
         rule("p",
              "{from: [{source: {principals: [" + ops + "]}}, {source: {namespaces: [front]}}]}"),
         {},
         true,
         kAllowed,
         "prod/p"},
        {"keyed, and the rest of the rule still has to match",
         rule("p", "{from: [{source: {principals: [" + front +
                       "]}}], to: [{operation: {ports: [\"9090\"]}}]}"),
         {},
         false,
         kNoAllow},
        {"two keyed policies under one principal: the second matches",
         rule("a", "{from: [{source: {principals: [" + front +
                       "]}}], to: [{operation: {ports: [\"9090\"]}}]}") +
             rule("b", "{from: [{source: {principals: [" + front +
                           "]}}], to: [{operation: {ports: [\"8080\"]}}]}"),
         {},
         true,
         kAllowed,
         "prod/b"},
        {"keyed by a source.principal condition",
         rule("p", "{when: [{key: source.principal, values: [" + front + "]}]}"),
         {},
         true,
         kAllowed,
         "prod/p"},
        {"a keyed ALLOW never matches plaintext", rule("p", from("{principals: [" + front + "]}")),
         plain(), false, kNoAllow},
        {"keyed DENY",
         rule("d", from("{principals: [" + front + "]}"), "DENY"),
         {},
         false,
         kDenied,
         "prod/d"},
        {"keyed DENY, another peer", rule("d", from("{principals: [" + front + "]}"), "DENY"),
         admin(), true, kNoPolicy},
        {"keyed AUDIT",
         rule("a", from("{principals: [" + front + "]}"), "AUDIT"),
         {},
         true,
         kNoPolicy,
         "",
         {"prod/a"}},
        {"an ALLOW with an HTTP-only rule applies though it has no key and no rule",
         rule("p", R"({to: [{operation: {methods: [GET]}}]})") +
             ap("prod", "q",
                "{" + web + "rules: [{from: [{source: {principals: [" + ops + "]}}]}]}"),
         {},
         false,
         kNoAllow},
        {"policies sharing a selector are grouped",
         ap("prod", "a", "{" + web + "rules: [{from: [{source: {principals: [" + ops + "]}}]}]}") +
             ap("prod", "b",
                "{" + web + "rules: [{from: [{source: {principals: [" + front + "]}}]}]}"),
         {},
         true,
         kAllowed,
         "prod/b"},
        {"same first label, a longer selector the workload does not match",
         ap("prod", "a", "{" + web + "action: DENY, rules: [{}]}") +
             ap("prod", "v2", "{selector: {matchLabels: {app: web, version: v2}}, rules: [{}]}"),
         {},
         false,
         kDenied,
         "prod/a"},
        {"... and one it does",
         ap("prod", "v1",
            "{selector: {matchLabels: {app: web, version: v1}}, action: DENY, rules: [{}]}") +
             ap("prod", "web", "{" + web + "rules: [{}]}"),
         {},
         false,
         kDenied,
         "prod/v1"},
    });
  }

  TEST_CASE("PeerAuthentication: STRICT, PERMISSIVE, precedence, port level") {
    const std::string mesh_strict = pa("sluice-system", "default", "{mtls: {mode: STRICT}}");
    const std::string web = "selector: {matchLabels: {app: web}}, ";
    run({
        {"mesh STRICT refuses plaintext", mesh_strict, plain(), false, kStrict,
         "sluice-system/default"},
        {"mesh STRICT lets mTLS through", mesh_strict, {}, true, kNoPolicy},
        {"no PeerAuthentication: PERMISSIVE", "", plain(), true, kNoPolicy},
        {"namespace PERMISSIVE overrides mesh STRICT",
         mesh_strict + pa("prod", "ns", "{mtls: {mode: PERMISSIVE}}"), plain(), true, kNoPolicy},
        {"namespace STRICT over mesh PERMISSIVE",
         pa("sluice-system", "default", "{mtls: {mode: PERMISSIVE}}") +
             pa("prod", "ns", "{mtls: {mode: STRICT}}"),
         plain(), false, kStrict, "prod/ns"},
        {"namespace UNSET inherits mesh STRICT",
         mesh_strict + pa("prod", "ns", "{mtls: {mode: UNSET}}"), plain(), false, kStrict,
         "sluice-system/default"},
        {"workload PERMISSIVE overrides namespace STRICT",
         pa("prod", "ns", "{mtls: {mode: STRICT}}") +
             pa("prod", "web", "{" + web + "mtls: {mode: PERMISSIVE}}"),
         plain(), true, kNoPolicy},
        {"workload STRICT over mesh PERMISSIVE",
         pa("prod", "web", "{" + web + "mtls: {mode: STRICT}}"), plain(), false, kStrict,
         "prod/web"},
        {"workload UNSET inherits namespace STRICT",
         pa("prod", "ns", "{mtls: {mode: STRICT}}") + pa("prod", "web", "{" + web + "mtls: {}}"),
         plain(), false, kStrict, "prod/ns"},
        {"a workload policy that selects another workload does not apply",
         pa("prod", "api", "{selector: {matchLabels: {app: api}}, mtls: {mode: STRICT}}"), plain(),
         true, kNoPolicy},
        {"portLevelMtls: STRICT workload, PERMISSIVE port",
         pa("prod", "web",
            "{" + web + "mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: PERMISSIVE}}}"),
         plain(), true, kNoPolicy},
        {"portLevelMtls: ... other ports stay STRICT",
         pa("prod", "web",
            "{" + web + "mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: PERMISSIVE}}}"),
         plain(port(9090)), false, kStrict, "prod/web"},
        {"portLevelMtls: STRICT port under a PERMISSIVE namespace",
         pa("prod", "web", "{" + web + "portLevelMtls: {\"9090\": {mode: STRICT}}}"),
         plain(port(9090)), false, kStrict, "prod/web"},
        {"portLevelMtls: UNSET workload mode inherits mesh STRICT on other ports",
         mesh_strict + pa("prod", "web", "{" + web + "portLevelMtls: {8080: {mode: PERMISSIVE}}}"),
         plain(port(9090)), false, kStrict, "sluice-system/default"},
        {"the oldest namespace policy wins",
         pa("prod", "b-old", "{mtls: {mode: STRICT}}",
            ", creationTimestamp: \"2026-01-01T00:00:00Z\"") +
             pa("prod", "a-new", "{mtls: {mode: PERMISSIVE}}",
                ", creationTimestamp: \"2026-02-01T00:00:00Z\""),
         plain(), false, kStrict, "prod/b-old"},
        {"DISABLE is enforced as PERMISSIVE",
         mesh_strict + pa("prod", "web", "{" + web + "mtls: {mode: DISABLE}}"), plain(), true,
         kNoPolicy},
        {"a root-namespace PeerAuthentication with a selector is ignored",
         pa("sluice-system", "web", "{" + web + "mtls: {mode: STRICT}}"), plain(), true, kNoPolicy},
        {"STRICT is decided before DENY policies",
         mesh_strict + ap("prod", "deny-all", "{action: DENY, rules: [{}]}"), plain(), false,
         kStrict, "sluice-system/default"},
        {"STRICT then ALLOW: mTLS still needs an ALLOW match",
         mesh_strict + rule("p", from("{namespaces: [ops]}")),
         {},
         false,
         kNoAllow},
    });
  }

  TEST_CASE("kubelet probes from the node's own address") {
    const std::string strict = pa("sluice-system", "default", "{mtls: {mode: STRICT}}");
    Conn probe = plain(from_ip("10.0.0.1"));
    run({
        {"a plaintext probe passes STRICT", strict, probe, true, kProbe},
        {"... and an ALLOW-nothing policy", strict + ap("prod", "nothing", "{}"), probe, true,
         kProbe},
        {"plaintext from another address is refused", strict, plain(from_ip("10.0.0.2")), false,
         kStrict, "sluice-system/default"},
        {"with allow_node_probes off, a probe is ordinary plaintext",
         strict,
         probe,
         false,
         kStrict,
         "sluice-system/default",
         {},
         false},
        {"an authenticated peer on the node address is not a probe", ap("prod", "nothing", "{}"),
         from_ip("10.0.0.1"), false, kNoAllow},
        {"an IPv6 probe from the node's IPv6 address passes STRICT", strict,
         [] {
           Conn c = plain(from_ip("fd00:244:1::1", to_ip("fd00:244:1::5")));
           c.node6 = "fd00:244:1::1";
           return c;
         }(),
         true, kProbe},
        {"IPv6 plaintext from another address is refused", strict,
         [] {
           Conn c = plain(from_ip("fd00:244:2::7", to_ip("fd00:244:1::5")));
           c.node6 = "fd00:244:1::1";
           return c;
         }(),
         false, kStrict, "sluice-system/default"},
        {"an authenticated peer on the node's IPv6 address is not a probe",
         ap("prod", "nothing", "{}"),
         [] {
           Conn c = from_ip("fd00:244:1::1", to_ip("fd00:244:1::5"));
           c.node6 = "fd00:244:1::1";
           return c;
         }(),
         false, kNoAllow},
        {"unknown node IPv6 address: no allowance for an IPv6 probe", strict,
         plain(from_ip("fd00:244:1::1", to_ip("fd00:244:1::5"))), false, kStrict,
         "sluice-system/default"},
        {"unknown node address: no allowance", strict,
         [] {
           Conn c = plain(from_ip("10.0.0.1"));
           c.node = "";
           return c;
         }(),
         false, kStrict, "sluice-system/default"},
    });
  }
}
