// Policies on the control plane: per-node filtering, local mode's policy
// files (a malformed policy alone is rejected, its last good version stays),
// and the Watch stream's `policies` field (snapshot, deltas, resume).
#include <doctest/doctest.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "controlplane/discovery/service.h"
#include "controlplane/local/source.h"
#include "controlplane/model/policy_filter.h"

using namespace sluice;
using namespace sluice::controlplane;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

api::v1::Workload workload(const std::string& ns, const std::string& node,
                           std::map<std::string, std::string> labels) {
  api::v1::Workload w;
  w.set_uid(ns + "-" + node);
  w.set_namespace_(ns);
  w.set_node(node);
  for (const auto& [k, v] : labels) (*w.mutable_labels())[k] = v;
  return w;
}

std::string names(const api::v1::PolicySet& s) {
  std::string out;
  for (const auto& p : s.authorization()) out += "A:" + p.namespace_() + "/" + p.name() + " ";
  for (const auto& p : s.peer()) out += "P:" + p.namespace_() + "/" + p.name() + " ";
  return out;
}

std::string authz(const std::string& ns, const std::string& name, const std::string& selector,
                  const std::string& principal = "spiffe-less/ns/shop/sa/web") {
  std::string out =
      "apiVersion: security.sluice.dev/v1\nkind: AuthorizationPolicy\nmetadata:\n"
      "  name: " +
      name + "\n  namespace: " + ns + "\nspec:\n";
  if (!selector.empty()) out += "  selector:\n    matchLabels: {" + selector + "}\n";
  return out + "  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [\"" +
         principal + "\"]\n";
}

std::string peer(const std::string& ns, const std::string& name, const std::string& mode) {
  return "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: " + name +
         "\n  namespace: " + ns + "\nspec:\n  mtls:\n    mode: " + mode + "\n";
}

std::string namespaceDoc(const std::string& ns) {
  return "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: " + ns +
         "\n  labels: {sluice.dev/mesh: enabled}\n";
}

std::string podDoc(const std::string& name, const std::string& node, const std::string& app) {
  return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: " + name +
         "\n  namespace: shop\n  uid: uid-" + name + "\n  labels: {app: " + app +
         "}\nspec:\n  nodeName: " + node + "\nstatus:\n  podIP: 10.244.1." +
         std::to_string(name.size()) + "\n";
}

model::Objects parse(const std::string& text) {
  auto o = local::parseYaml(text);
  REQUIRE_MESSAGE(o.has_value(), o.error().describe());
  return std::move(*o);
}

struct TempDir {
  fs::path path = fs::temp_directory_path() / ("sluice-policy-test-" + std::to_string(getpid()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() { fs::remove_all(path); }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(path / (name + ".tmp")) << text;
    fs::rename(path / (name + ".tmp"), path / name);
  }
};

// A Discovery server without authentication, and a raw stream reader.
struct Server {
  discovery::Service service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  explicit Server(model::Store& store) : service(store) {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(&service);
    server = b.BuildAndStart();
    REQUIRE(server);
  }
  ~Server() {
    service.stop();
    server->Shutdown(std::chrono::system_clock::now() + 1s);
  }
};

struct Stream {
  grpc::ClientContext ctx;
  std::unique_ptr<api::v1::Discovery::Stub> stub;
  std::unique_ptr<grpc::ClientReader<api::v1::WatchResponse>> reader;
  Stream(int port, const std::string& node, uint64_t version = 0, uint64_t epoch = 0) {
    stub = api::v1::Discovery::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                           grpc::InsecureChannelCredentials()));
    api::v1::WatchRequest req;
    req.set_node(node);
    req.set_resume_version(version);
    req.set_resume_epoch(epoch);
    reader = stub->Watch(&ctx, req);
  }
  api::v1::WatchResponse next() {
    api::v1::WatchResponse r;
    REQUIRE(reader->Read(&r));
    return r;
  }
  ~Stream() {
    ctx.TryCancel();
    reader->Finish();
  }
};

}  // namespace

TEST_SUITE("policy.filter") {
  TEST_CASE("mesh root - namespace - selector - both kinds - only workloads on the node") {
    std::map<std::string, api::v1::Workload> ws;
    ws["a"] = workload("shop", "node1", {{"app", "web"}});
    ws["b"] = workload("bank", "node2", {{"app", "vault"}});
    auto all = [&] {
      model::Store store;
      auto o = parse(
          authz("sluice-system", "mesh-wide", "") + "---\n" +
          authz("sluice-system", "root-selector", "app: web") + "---\n" +
          authz("shop", "ns-wide", "") + "---\n" + authz("shop", "web-only", "app: web") + "---\n" +
          authz("shop", "api-only", "app: api") + "---\n" + authz("bank", "vault", "app: vault") +
          "---\n" + authz("shop", "two-labels", "app: web, tier: front") + "---\n" +
          peer("shop", "strict", "STRICT") + "---\n" + peer("bank", "strict", "STRICT"));
      REQUIRE(store.setSource("f", std::move(o)).has_value());
      return store.policies();
    }();
    REQUIRE(all.authorization_size() == 7);
    // An AuthorizationPolicy in the root namespace with a selector selects in
    // every namespace (Istio: "the selector will additionally match with pods
    // in all namespaces"), as the agents enforce it.
    CHECK(names(model::policiesForNode("node1", ws, all)) ==
          "A:shop/ns-wide A:shop/web-only A:sluice-system/mesh-wide A:sluice-system/root-selector "
          "P:shop/strict ");
    CHECK(names(model::policiesForNode("node2", ws, all)) ==
          "A:bank/vault A:sluice-system/mesh-wide P:bank/strict ");
    CHECK(names(model::policiesForNode("node3", ws, all)).empty());
    ws["a"] = workload("shop", "node1", {{"app", "web"}, {"tier", "front"}});
    CHECK(names(model::policiesForNode("node1", ws, all)) ==
          "A:shop/ns-wide A:shop/two-labels A:shop/web-only A:sluice-system/mesh-wide "
          "A:sluice-system/root-selector P:shop/strict ");
  }
}

TEST_SUITE("policy.local") {
  TEST_CASE("a malformed policy is rejected alone - its last good version stays in force") {
    TempDir dir;
    model::Store store;
    dir.write("p.yaml",
              authz("shop", "good", "app: web") + "---\n" + authz("shop", "changing", "app: web"));
    auto src = local::DirectorySource::create(dir.path.string(), store);
    REQUIRE(src.has_value());
    REQUIRE(store.policies().authorization_size() == 2);
    CHECK((*src)->rejectedPolicies().empty());

    // `changing` gets a bad CIDR and `good` a new selector, `fresh` is born bad.
    std::string bad = authz("shop", "changing", "app: web");
    bad.replace(bad.find("principals: [\"spiffe-less/ns/shop/sa/web\"]"), std::string::npos,
                "ipBlocks: [\"10.0.0.0/33\"]\n");
    std::string fresh = authz("shop", "fresh", "");
    fresh.replace(fresh.find("action: ALLOW"), 13, "action: MAYBE");
    dir.write("p.yaml", authz("shop", "good", "app: api") + "---\n" + bad + "---\n" + fresh);
    (*src)->rescan();
    auto rejected = (*src)->rejectedPolicies();
    REQUIRE(rejected.size() == 2);
    const std::string& why = rejected["p.yaml AuthorizationPolicy shop/changing"];
    CHECK(why.find("document 2") != std::string::npos);
    CHECK(why.find("AuthorizationPolicy shop/changing") != std::string::npos);
    CHECK(why.find("ipBlocks") != std::string::npos);
    CHECK(rejected.count("p.yaml AuthorizationPolicy shop/fresh") == 1);
    CHECK((*src)->rejected().empty());  // the file itself applied
    auto now = store.policies();
    REQUIRE(now.authorization_size() == 3);
    CHECK(now.authorization(0).name() == "changing");
    REQUIRE(now.authorization(0).rules_size() == 1);
    CHECK(now.authorization(0).rules(0).from(0).principals(0) == "spiffe-less/ns/shop/sa/web");
    // `fresh` never had a good version: its action cannot be read, so it
    // fails closed as a DENY of everything in its namespace.
    CHECK(now.authorization(1).name() == "fresh");
    CHECK(now.authorization(1).action() == "DENY");
    REQUIRE(now.authorization(1).rules_size() == 1);
    CHECK(now.authorization(1).rules(0).from_size() == 0);
    CHECK(now.authorization(1).selector().empty());
    REQUIRE(now.authorization(1).warnings_size() == 1);
    CHECK(now.authorization(1).warnings(0).find("enforced as a DENY of everything") !=
          std::string::npos);
    CHECK(now.authorization(2).name() == "good");
    CHECK(now.authorization(2).selector().at("app") == "api");

    // Fixed: it applies; the file taken away: its policies go.
    dir.write("p.yaml", authz("shop", "changing", "app: web", "x/ns/shop/sa/api"));
    (*src)->rescan();
    CHECK((*src)->rejectedPolicies().empty());
    REQUIRE(store.policies().authorization_size() == 1);
    CHECK(store.policies().authorization(0).rules(0).from(0).principals(0) == "x/ns/shop/sa/api");
    fs::remove(dir.path / "p.yaml");
    (*src)->rescan();
    CHECK(store.policies().authorization_size() == 0);
  }

  TEST_CASE("a control plane that starts with a policy invalid enforces it failing closed") {
    // Each was good once; the control plane restarts after each was edited
    // into a refused form: no last good version is known any more.
    TempDir dir;
    model::Store store;
    std::string allow = authz("shop", "allow-web", "app: web");
    allow.replace(allow.find("principals"), 10, "principal");  // unknown field
    std::string deny = authz("shop", "deny-evil", "app: web");
    deny.replace(deny.find("action: ALLOW"), 13, "action: DENY");
    deny.replace(deny.find("principals: [\"spiffe-less/ns/shop/sa/web\"]"), std::string::npos,
                 "ipBlocks: [\"10.0.0.0/33\"]\n");
    std::string audit = authz("shop", "audit", "");
    audit.replace(audit.find("action: ALLOW"), 13, "action: AUDIT");
    audit.replace(audit.find("principals"), 10, "principal");
    std::string strict = peer("shop", "strict", "STRIKT");
    // A typo in the group: refused for its apiVersion, and failing closed too.
    std::string group = authz("shop", "typo-group", "app: db");
    group.replace(group.find("security.sluice.dev/v1"), 22, "security.sluice.dve/v1");
    dir.write("p.yaml",
              allow + "---\n" + deny + "---\n" + audit + "---\n" + strict + "---\n" + group);
    auto src = local::DirectorySource::create(dir.path.string(), store);
    REQUIRE(src.has_value());
    CHECK((*src)->rejectedPolicies().size() == 5);
    auto now = store.policies();
    REQUIRE(now.authorization_size() == 3);  // the AUDIT decides nothing: no stand-in
    CHECK(now.authorization(2).name() == "typo-group");
    CHECK(now.authorization(2).action() == "ALLOW");
    CHECK(now.authorization(2).rules_size() == 0);  // allows nothing
    CHECK(now.authorization(2).selector().at("app") == "db");
    CHECK(now.authorization(0).name() == "allow-web");
    CHECK(now.authorization(0).action() == "ALLOW");
    CHECK(now.authorization(0).rules_size() == 0);  // allows nothing
    CHECK(now.authorization(0).selector().at("app") == "web");
    CHECK(now.authorization(1).name() == "deny-evil");
    CHECK(now.authorization(1).action() == "DENY");
    REQUIRE(now.authorization(1).rules_size() == 1);  // one empty rule: everything
    CHECK(now.authorization(1).selector().at("app") == "web");
    REQUIRE(now.peer_size() == 1);
    CHECK(now.peer(0).mode() == "STRICT");
    CHECK(now.peer(0).warnings(0).find("enforced as STRICT for every workload of namespace shop") !=
          std::string::npos);
    // A stand-in is never a "last good version": fixed, the fix applies;
    // broken again, the stand-in is back.
    dir.write("p.yaml", authz("shop", "allow-web", "app: web"));
    (*src)->rescan();
    REQUIRE(store.policies().authorization_size() == 1);
    CHECK(store.policies().authorization(0).rules_size() == 1);
    dir.write("p.yaml", allow);
    (*src)->rescan();
    REQUIRE(store.policies().authorization_size() == 1);
    CHECK(store.policies().authorization(0).rules_size() == 1);  // the last good version now
  }

  TEST_CASE("checkFile (--validate) names each object: valid, warning, rejected with its field") {
    std::string bad = authz("shop", "bad", "app: web");
    bad.replace(bad.find("action: ALLOW"), 13, "action: MAYBE");
    std::string warned = authz("shop", "warned", "app: web");
    warned.replace(warned.find("action: ALLOW"), 13, "action: DENY");
    warned += "    to:\n    - operation:\n        methods: [\"GET\"]\n";
    auto check =
        local::checkFile(warned + "---\n" + bad + "---\n" + peer("shop", "mtls", "STRICT"));
    CHECK_FALSE(check.ok);
    REQUIRE(check.lines.size() == 4);
    CHECK(check.lines[0] == "valid AuthorizationPolicy shop/warned");
    CHECK(check.lines[1].starts_with("warning AuthorizationPolicy shop/warned: "));
    CHECK(check.lines[1].find("methods") != std::string::npos);
    CHECK(check.lines[2] == "valid PeerAuthentication shop/mtls");
    CHECK(check.lines[3].starts_with("rejected AuthorizationPolicy shop/bad: document 2"));
    CHECK(check.lines[3].find("MAYBE") != std::string::npos);

    auto good = local::checkFile(authz("shop", "good", "app: web"));
    CHECK(good.ok);
    CHECK(good.lines == std::vector<std::string>{"valid AuthorizationPolicy shop/good"});

    auto junk = local::checkFile("kind: [AuthorizationPolicy\n");
    CHECK_FALSE(junk.ok);
    REQUIRE(junk.lines.size() == 1);
    CHECK(junk.lines[0].starts_with("rejected: YAML syntax error"));
  }

  TEST_CASE("Istio's root namespace: a security.istio.io policy in istio-system is mesh-wide") {
    std::string istio_pa = peer("istio-system", "default", "STRICT");  // security.istio.io/v1
    std::string istio_ap = authz("istio-system", "deny-evil", "");
    istio_ap.replace(istio_ap.find("security.sluice.dev/v1"), 22, "security.istio.io/v1");
    // Sluice's own group there is an ordinary namespace's policy.
    std::string own = authz("istio-system", "own", "");
    auto o = parse(istio_pa + "---\n" + istio_ap + "---\n" + own);
    REQUIRE(o.peer_authentications.size() == 1);
    CHECK(o.peer_authentications[0].ns == "sluice-system");
    CHECK(o.peer_authentications[0].name == "default");
    REQUIRE(o.peer_authentications[0].warnings.size() == 1);
    CHECK(o.peer_authentications[0].warnings[0].find("Istio's root namespace istio-system") !=
          std::string::npos);
    REQUIRE(o.authorization_policies.size() == 2);
    CHECK(o.authorization_policies[0].ns == "sluice-system");
    CHECK(o.authorization_policies[1].ns == "istio-system");
    std::map<std::string, api::v1::Workload> ws;
    ws["a"] = workload("shop", "node1", {{"app", "web"}});
    model::Store store;
    REQUIRE(store.setSource("f", std::move(o)).has_value());
    CHECK(names(model::policiesForNode("node1", ws, store.policies())) ==
          "A:sluice-system/deny-evil P:sluice-system/default ");
    // --validate says where it went.
    auto check = local::checkFile(istio_pa);
    CHECK(check.ok);
    REQUIRE(check.lines.size() == 2);
    CHECK(check.lines[0] == "valid PeerAuthentication sluice-system/default");
    CHECK(check.lines[1].find("read from Istio's root namespace istio-system") !=
          std::string::npos);
  }

  TEST_CASE(
      "a bare service account in an istio-system policy is istio-system's, as istiod reads it, "
      "after the move to Sluice's root namespace") {
    auto o = parse(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-gw, "
        "namespace: istio-system}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n"
        "        serviceAccounts: [istio-ingressgateway, other/sa]\n        notServiceAccounts: "
        "[x]\n---\n"
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: local, "
        "namespace: shop}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n"
        "        serviceAccounts: [web]\n");
    REQUIRE(o.authorization_policies.size() == 2);
    const auto& moved = o.authorization_policies[0];
    CHECK(moved.ns == "sluice-system");
    REQUIRE(moved.rules.size() == 1);
    REQUIRE(moved.rules[0].from.size() == 1);
    CHECK(moved.rules[0].from[0].service_accounts ==
          std::vector<std::string>{"istio-system/istio-ingressgateway", "other/sa"});
    CHECK(moved.rules[0].from[0].not_service_accounts ==
          std::vector<std::string>{"istio-system/x"});
    // In its own namespace a bare name stays as written (resolved there when evaluated).
    CHECK(o.authorization_policies[1].rules[0].from[0].service_accounts ==
          std::vector<std::string>{"web"});
  }

  TEST_CASE("a kind of the same name in another API group is ignored") {
    auto o = parse(
        "apiVersion: example.com/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: "
        "shop}\nspec: {whatever: 1}\n---\n" +
        peer("shop", "mtls", "STRICT"));
    CHECK(o.authorization_policies.empty());
    CHECK(o.peer_authentications.size() == 1);
  }

  TEST_CASE("a near miss of our API groups or policy kinds is refused, naming what it meant") {
    // A typo in the group would leave a DENY out of force without a word.
    std::string typo = authz("shop", "deny-all", "");
    typo.replace(typo.find("security.sluice.dev/v1"), 22, "security.istoi.io/v1");
    auto check = local::checkFile(typo + "---\n" + peer("shop", "mtls", "STRICT"));
    CHECK_FALSE(check.ok);
    REQUIRE(check.lines.size() == 2);
    CHECK(check.lines[0] == "valid PeerAuthentication shop/mtls");
    CHECK(check.lines[1].starts_with("rejected AuthorizationPolicy shop/deny-all: document 1"));
    CHECK(check.lines[1].find("security.istoi.io/v1") != std::string::npos);
    CHECK(check.lines[1].find("use security.sluice.dev/v1") != std::string::npos);
    std::string none = authz("shop", "deny-all", "");
    none.replace(none.find("apiVersion: security.sluice.dev/v1\n"), 35, "");
    CHECK_FALSE(local::checkFile(none).ok);
    // A kind spelled wrong, or in the wrong case: the file is refused.
    std::string kind = authz("shop", "deny-all", "");
    kind.replace(kind.find("AuthorizationPolicy"), 19, "AuthorisationPolicy");
    auto k = local::checkFile(kind);
    CHECK_FALSE(k.ok);
    REQUIRE(k.lines.size() == 1);
    CHECK(k.lines[0].find("did you mean \"AuthorizationPolicy\"") != std::string::npos);
    auto pod = local::checkFile("apiVersion: v1\nkind: pod\nmetadata: {name: a}\n");
    CHECK_FALSE(pod.ok);
    REQUIRE(pod.lines.size() == 1);
    CHECK(pod.lines[0].find("did you mean \"Pod\"") != std::string::npos);
    // Kinds that are not near ours stay someone else's.
    CHECK(local::checkFile("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\n").ok);
  }

  TEST_CASE("the same policy in two files - the second file is refused whole") {
    model::Store store;
    REQUIRE(store.setSource("a.yaml", parse(peer("shop", "mtls", "STRICT"))).has_value());
    auto again = store.setSource("b.yaml", parse(peer("shop", "mtls", "PERMISSIVE")));
    REQUIRE_FALSE(again.has_value());
    CHECK(again.error().describe().find(
              "PeerAuthentication shop/mtls is already defined by a.yaml") != std::string::npos);
    CHECK(store.policies().peer(0).mode() == "STRICT");
  }
}

TEST_SUITE("policy.stream") {
  TEST_CASE("snapshot - deltas on policy add change delete - label change - resume") {
    model::Store store;
    REQUIRE(store.setSource("ns", parse(namespaceDoc("shop"))).has_value());
    REQUIRE(store.setSource("web", parse(podDoc("web", "node1", "web"))).has_value());
    REQUIRE(store.setSource("p1", parse(authz("shop", "web-only", "app: web"))).has_value());
    Server server(store);
    Stream s(server.port, "node1");
    auto snap = s.next();
    CHECK(snap.full());
    REQUIRE(snap.has_policies());
    CHECK(names(snap.policies()) == "A:shop/web-only ");

    // Add: a namespace-wide STRICT.
    REQUIRE(store.setSource("p2", parse(peer("shop", "strict", "STRICT"))).has_value());
    auto d = s.next();
    CHECK_FALSE(d.full());
    REQUIRE(d.has_policies());
    CHECK(names(d.policies()) == "A:shop/web-only P:shop/strict ");

    // Change.
    REQUIRE(store.setSource("p2", parse(peer("shop", "strict", "PERMISSIVE"))).has_value());
    d = s.next();
    REQUIRE(d.has_policies());
    CHECK(d.policies().peer(0).mode() == "PERMISSIVE");

    // A policy that selects nothing on node1: a new version, no policies.
    REQUIRE(store.setSource("p3", parse(authz("shop", "api-only", "app: api"))).has_value());
    d = s.next();
    CHECK_FALSE(d.has_policies());
    CHECK(d.version() == store.version());

    // Delete.
    store.removeSource("p2");
    d = s.next();
    REQUIRE(d.has_policies());
    CHECK(names(d.policies()) == "A:shop/web-only ");

    // The pod's label changes: api-only now selects it, web-only no more,
    // in the same message as the workload's new labels.
    REQUIRE(store.setSource("web", parse(podDoc("web", "node1", "api"))).has_value());
    d = s.next();
    REQUIRE(d.upserts_size() == 1);
    CHECK(d.upserts(0).labels().at("app") == "api");
    REQUIRE(d.has_policies());
    CHECK(names(d.policies()) == "A:shop/api-only ");

    // A pod appearing on node1 arrives with the policies that select it.
    REQUIRE(store.setSource("p4", parse(authz("shop", "db-only", "app: db"))).has_value());
    d = s.next();
    CHECK_FALSE(d.has_policies());
    REQUIRE(store.setSource("db", parse(podDoc("db", "node1", "db"))).has_value());
    d = s.next();
    REQUIRE(d.upserts_size() == 1);
    CHECK(d.upserts(0).uid() == "uid-db");
    REQUIRE(d.has_policies());
    CHECK(names(d.policies()) == "A:shop/api-only A:shop/db-only ");

    // A pod on another node changes nothing for node1's policies.
    REQUIRE(store.setSource("x", parse(podDoc("other", "node2", "web"))).has_value());
    d = s.next();
    CHECK(d.upserts_size() == 1);
    CHECK_FALSE(d.has_policies());

    // Resume at the current version: "up to date", with the whole set.
    Stream resumed(server.port, "node1", store.version(), store.epoch());
    auto r = resumed.next();
    CHECK_FALSE(r.full());
    CHECK(r.upserts_size() == 0);
    REQUIRE(r.has_policies());
    CHECK(names(r.policies()) == "A:shop/api-only A:shop/db-only ");
    // Node2's stream: its own set only.
    Stream other(server.port, "node2");
    r = other.next();
    REQUIRE(r.has_policies());
    CHECK(names(r.policies()) == "A:shop/web-only ");
  }

  TEST_CASE("a snapshot of a node without workloads carries an empty set - present") {
    model::Store store;
    REQUIRE(store.setSource("p1", parse(authz("shop", "web-only", "app: web"))).has_value());
    Server server(store);
    Stream s(server.port, "node9");
    auto snap = s.next();
    CHECK(snap.has_policies());
    CHECK(snap.policies().authorization_size() == 0);
  }
}
