// sluice.dev/opaque-ports and appProtocol: the annotation's syntax (table),
// and both reaching the discovery model from local YAML (a bad value is
// ignored, the object kept).
#include "controlplane/model/opaque_ports.h"

#include <doctest/doctest.h>

#include "controlplane/local/source.h"
#include "controlplane/model/store.h"

using namespace sluice::controlplane;
using model::PortRange;

TEST_SUITE("model.opaque_ports") {
  TEST_CASE("annotation values: ports and ranges, or an error naming the entry") {
    struct Case {
      const char* value;
      std::vector<PortRange> want;  // when ok
      const char* error;            // when not: a piece of the message
    } cases[] = {
        {"3306", {{3306, 3306}}, nullptr},
        {"3306,5000-5010", {{3306, 3306}, {5000, 5010}}, nullptr},
        {" 25 , 587 ,1-1 ", {{25, 25}, {587, 587}, {1, 1}}, nullptr},
        {"65535", {{65535, 65535}}, nullptr},
        {"1-65535", {{1, 65535}}, nullptr},
        {"", {}, nullptr},
        {"  ", {}, nullptr},
        {"0", {}, "'0' is not a port"},
        {"65536", {}, "'65536'"},
        {"80,", {}, "''"},
        {",80", {}, "''"},
        {"80,,81", {}, "''"},
        {"http", {}, "'http'"},
        {"5010-5000", {}, "'5010-5000'"},
        {"5000-", {}, "'5000-'"},
        {"-5000", {}, "'-5000'"},
        {"1-2-3", {}, "'1-2-3'"},
        {"80 81", {}, "'80 81'"},
        {"+80", {}, "'+80'"},
        {"0x50", {}, "'0x50'"},
        {"99999999999999999999", {}, "'99999999999999999999'"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.value);
      auto r = model::parseOpaquePorts(c.value);
      if (c.error) {
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().describe().find(c.error) != std::string::npos);
        CHECK(r.error().describe().find("3306,5000-5010") != std::string::npos);  // the fix
      } else {
        REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().describe()));
        CHECK(*r == c.want);
      }
    }
  }

  TEST_CASE("pod and Service annotations, appProtocol and generateName reach the model") {
    const char* text = R"(kind: Namespace
metadata: {name: shop, labels: {sluice.dev/mesh: enabled}}
---
kind: Pod
metadata:
  name: db-7c9-x2x4z
  generateName: db-7c9-
  namespace: shop
  uid: u-db
  labels: {app: db}
  annotations: {sluice.dev/opaque-ports: "3306,5000-5010"}
spec: {nodeName: node1}
status: {podIP: 10.244.1.5}
---
kind: Pod
metadata:
  name: one
  namespace: shop
  uid: u-one
  annotations: {sluice.dev/opaque-ports: 9090}
spec: {nodeName: node1}
status: {podIP: 10.244.1.6}
---
kind: Pod
metadata:
  name: typo
  namespace: shop
  uid: u-typo
  annotations: {sluice.dev/opaque-ports: "33o6"}
spec: {nodeName: node1}
status: {podIP: 10.244.1.7}
---
kind: Service
metadata:
  name: db
  namespace: shop
  annotations: {sluice.dev/opaque-ports: "9000-9001", other: x}
spec:
  clusterIP: 10.96.0.10
  selector: {app: db}
  ports:
  - {name: sql, port: 3306, appProtocol: tcp}
  - {name: web, port: 80, targetPort: 8080, appProtocol: http}
  - {name: raw, port: 9000}
---
kind: Service
metadata:
  name: bad
  namespace: shop
  annotations: {sluice.dev/opaque-ports: [1, 2]}
spec:
  clusterIP: 10.96.0.11
  ports: [{port: 80}]
)";
    auto objs = local::parseYaml(text);
    REQUIRE_MESSAGE(objs.has_value(), (objs ? "" : objs.error().describe()));
    model::Store store;
    REQUIRE(store.setSource("all.yaml", *objs).has_value());
    auto snap = store.snapshot();
    std::map<std::string, model::Workload> w;
    for (const auto& x : snap.upserts) w[x.uid()] = x;
    REQUIRE(w.size() == 3);  // the pod with a bad annotation is kept
    const auto& db = w["u-db"];
    CHECK(db.generate_name() == "db-7c9-");
    REQUIRE(db.opaque_ports_size() == 2);
    CHECK(db.opaque_ports(0).first() == 3306);
    CHECK(db.opaque_ports(0).last() == 3306);
    CHECK(db.opaque_ports(1).first() == 5000);
    CHECK(db.opaque_ports(1).last() == 5010);
    REQUIRE(w["u-one"].opaque_ports_size() == 1);  // an unquoted YAML number
    CHECK(w["u-one"].opaque_ports(0).first() == 9090);
    CHECK(w["u-one"].generate_name().empty());
    CHECK(w["u-typo"].opaque_ports_size() == 0);  // ignored (a warning in the log)
    CHECK(w["u-typo"].enrolled());

    std::map<std::string, model::ServiceView> s;
    for (const auto& x : snap.services) s[x.name()] = x;
    REQUIRE(s.size() == 2);
    const auto& svc = s["db"];
    REQUIRE(svc.opaque_ports_size() == 1);
    CHECK(svc.opaque_ports(0).first() == 9000);
    CHECK(svc.opaque_ports(0).last() == 9001);
    REQUIRE(svc.ports_size() == 3);
    CHECK(svc.ports(0).app_protocol() == "tcp");
    CHECK(svc.ports(1).app_protocol() == "http");
    CHECK(svc.ports(2).app_protocol().empty());
    CHECK(s["bad"].opaque_ports_size() == 0);  // not a string: ignored, Service kept
  }
}
