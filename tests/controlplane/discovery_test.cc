// The control plane's discovery service and the agent's discovery client:
// snapshots, deltas, resume, the view kept in a file, node authentication.
#include <filesystem>
#include <fstream>

#include "agent/identity/cert_manager.h"
#include "control_plane_rig.h"

using namespace sluice;
using namespace sluice::test;
using namespace std::chrono_literals;

TEST_SUITE("discovery") {
  TEST_CASE("snapshot - deltas - and resume across a control plane restart") {
    controlplane::model::Store store;
    REQUIRE(store.setSource("a", podObjects("web")).has_value());
    int port = 0;
    auto cp = std::make_unique<ControlPlane>(store, port);
    REQUIRE(port != 0);
    Recorder rec;
    auto client = agent::discovery::Client::create(clientConfig(port), rec);
    REQUIRE(client.has_value());
    CHECK(rec.waitUntil([](Recorder& r) { return r.view.count("uid-web") == 1; }));
    CHECK(rec.view["uid-web"].enrolled());
    CHECK((*client)->synced());

    // A delta: a namespace label flip is a change of the workload.
    auto objs = podObjects("web");
    objs.namespaces[0].labels.clear();
    REQUIRE(store.setSource("a", objs).has_value());
    CHECK(rec.waitUntil([](Recorder& r) { return !r.view["uid-web"].enrolled(); }));

    // Control plane goes away: the client keeps its view and reconnects.
    cp.reset();
    CHECK(rec.waitUntil([&](Recorder&) { return !(*client)->connected(); }));
    CHECK(rec.view.count("uid-web") == 1);
    auto api = podObjects("api");
    api.namespaces.clear();  // namespace shop is defined by source a
    REQUIRE(store.setSource("b", api).has_value());
    cp = std::make_unique<ControlPlane>(store, port);
    CHECK(rec.waitUntil([](Recorder& r) { return r.view.count("uid-api") == 1; }));
    CHECK((*client)->connected());
    CHECK((*client)->version() == store.version());
  }

  TEST_CASE(
      "a restarted control plane at the same version number sends a snapshot - not 'up to "
      "date'") {
    // The first instance: the namespace is meshed (version 1).
    auto store = std::make_unique<controlplane::model::Store>();
    REQUIRE(store->setSource("a", podObjects("web")).has_value());
    int port = 0;
    auto cp = std::make_unique<ControlPlane>(*store, port);
    Recorder rec;
    auto client = agent::discovery::Client::create(clientConfig(port), rec);
    REQUIRE(client.has_value());
    REQUIRE(rec.waitUntil([](Recorder& r) { return r.view["uid-web"].enrolled(); }));
    const uint64_t before = (*client)->version();
    cp.reset();
    REQUIRE(rec.waitUntil([&](Recorder&) { return !(*client)->connected(); }));
    // A new instance, with a change made while it was down, happens to be at
    // the same version: it has counted its changes from zero again.
    store = std::make_unique<controlplane::model::Store>();
    auto unlabelled = podObjects("web");
    unlabelled.namespaces[0].labels.clear();
    REQUIRE(store->setSource("a", unlabelled).has_value());
    REQUIRE(store->version() == before);
    cp = std::make_unique<ControlPlane>(*store, port);
    CHECK(rec.waitUntil([](Recorder& r) { return !r.view["uid-web"].enrolled(); }));
    CHECK((*client)->connected());
  }

  TEST_CASE(
      "before an expected source applied once (Kubernetes: its first whole list) an agent gets "
      "no view and no certificate - not an empty view") {
    controlplane::model::Store store;
    store.expect("kubernetes");
    CHECK_FALSE(store.ready());
    int port = 0;
    ControlPlane cp(store, port);
    Recorder rec;
    auto client = agent::discovery::Client::create(clientConfig(port), rec);
    REQUIRE(client.has_value());
    // An empty snapshot would take every workload, Service and policy from
    // the agent: it gets nothing, and keeps what it had.
    CHECK_FALSE(rec.waitUntil([](Recorder& r) { return r.calls > 0; }, 1500ms));
    CHECK_FALSE((*client)->synced());
    agent::identity::GrpcSigner signer("127.0.0.1:" + std::to_string(port),
                                       testCa().trustAnchorPem(), kNode1Token);
    auto key = x509::generateP256();
    auto csr = *x509::makeCsr(key->get(), "spiffe://cluster.local/ns/shop/sa/default");
    auto early = signer.sign(csr, 120s);
    REQUIRE_FALSE(early.has_value());  // not "runs no pod": the view is not read yet
    CHECK(early.error().describe().find("has not read the cluster yet") != std::string::npos);
    // Another source does not make the store whole.
    REQUIRE(store.setSource("other", {}).has_value());
    CHECK_FALSE(store.ready());
    REQUIRE(store.setSource("kubernetes", podObjects("web")).has_value());
    CHECK(store.ready());
    CHECK(rec.waitUntil([](Recorder& r) { return r.view.count("uid-web") == 1; }));
    CHECK((*client)->synced());
    CHECK(signer.sign(csr, 120s).has_value());
  }

  TEST_CASE("an agent already at the current version gets an up-to-date message - not a snapshot") {
    controlplane::model::Store store;
    REQUIRE(store.setSource("a", podObjects("web")).has_value());
    int port = 0;
    ControlPlane cp(store, port);
    auto stub = api::v1::Discovery::NewStub(tlsChannel(port));
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + kNode1Token);
    api::v1::WatchRequest req;
    req.set_node("node1");
    req.set_resume_version(store.version());
    req.set_resume_epoch(store.epoch());
    auto reader = stub->Watch(&ctx, req);
    api::v1::WatchResponse resp;
    REQUIRE(reader->Read(&resp));
    CHECK_FALSE(resp.full());
    CHECK(resp.upserts_size() == 0);
    CHECK(resp.version() == store.version());
    CHECK(resp.epoch() == store.epoch());
    ctx.TryCancel();
    reader->Finish();
  }

  TEST_CASE(
      "a resume at the current version number of another epoch - or of none - gets a snapshot") {
    controlplane::model::Store store;
    REQUIRE(store.setSource("a", podObjects("web")).has_value());
    CHECK(store.epoch() != 0);
    CHECK(controlplane::model::Store().epoch() != store.epoch());
    int port = 0;
    ControlPlane cp(store, port);
    auto stub = api::v1::Discovery::NewStub(tlsChannel(port));
    for (uint64_t epoch : {store.epoch() ^ 1, uint64_t{0}}) {
      CAPTURE(epoch);
      grpc::ClientContext ctx;
      ctx.AddMetadata("authorization", "Bearer " + kNode1Token);
      api::v1::WatchRequest req;
      req.set_node("node1");
      req.set_resume_version(store.version());
      req.set_resume_epoch(epoch);
      auto reader = stub->Watch(&ctx, req);
      api::v1::WatchResponse resp;
      REQUIRE(reader->Read(&resp));
      CHECK(resp.full());
      CHECK(resp.upserts_size() == 1);
      CHECK(resp.version() == store.version());
      CHECK(resp.epoch() == store.epoch());
      ctx.TryCancel();
      reader->Finish();
    }
  }

  TEST_CASE("the client keeps its view in a file: written after changes - read back whole") {
    controlplane::model::Store store;
    REQUIRE(store.setSource("a", podObjects("web")).has_value());
    int port = 0;
    ControlPlane cp(store, port);
    auto file = (std::filesystem::temp_directory_path() /
                 ("sluice-view-" + std::to_string(getpid()) + ".pb"))
                    .string();
    std::filesystem::remove(file);
    auto missing = agent::discovery::loadView(file);
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().code == ENOENT);
    Recorder rec;
    auto cfg = clientConfig(port);
    cfg.view_file = file;
    cfg.persist_interval = 200ms;
    auto client = agent::discovery::Client::create(cfg, rec);
    REQUIRE(client.has_value());
    auto persisted = [&](auto pred) {
      return rec.waitUntil([&](Recorder&) {
        auto v = agent::discovery::loadView(file);
        return v && pred(*v);
      });
    };
    CHECK(persisted([&](const agent::discovery::PersistedView& v) {
      return v.view.workloads.count("uid-web") && v.view.workloads.at("uid-web").enrolled() &&
             v.version == store.version() && v.epoch == store.epoch();
    }));
    // A burst of changes: the last one is written (within the interval).
    for (int i = 0; i < 5; ++i) {
      auto objs = podObjects("web");
      objs.pods[0].labels["round"] = std::to_string(i);
      REQUIRE(store.setSource("a", objs).has_value());
    }
    CHECK(persisted([&](const agent::discovery::PersistedView& v) {
      return v.version == store.version() && v.view.workloads.count("uid-web") &&
             v.view.workloads.at("uid-web").labels().at("round") == "4";
    }));
    // Services come back too; and the last change is written on shutdown.
    auto objs = podObjects("web");
    controlplane::model::Service svc;
    svc.ns = "shop";
    svc.name = "web";
    svc.vips = {"10.96.0.10"};
    svc.ports = {{"http", 80, "TCP", 8080, "", ""}};
    svc.has_selector = true;
    objs.services.push_back(svc);
    REQUIRE(store.setSource("a", objs).has_value());
    REQUIRE(rec.waitUntil([](Recorder& r) { return r.services.count("shop/web") == 1; }));
    client->reset();
    auto last = agent::discovery::loadView(file);
    REQUIRE(last.has_value());
    CHECK(last->version == store.version());
    CHECK(last->view.services.count("shop/web") == 1);
    // Garbage is refused as a whole, never half trusted.
    {
      std::ofstream out(file, std::ios::trunc | std::ios::binary);
      out << "not a view";
    }
    CHECK_FALSE(agent::discovery::loadView(file).has_value());
    std::filesystem::remove(file);
  }

  TEST_CASE("a request without a node name is refused") {
    controlplane::model::Store store;
    int port = 0;
    ControlPlane cp(store, port);
    auto stub = api::v1::Discovery::NewStub(tlsChannel(port));
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + kNode1Token);
    api::v1::WatchRequest req;
    auto reader = stub->Watch(&ctx, req);
    api::v1::WatchResponse resp;
    CHECK_FALSE(reader->Read(&resp));
    CHECK(reader->Finish().error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  }

  TEST_CASE("a node token only watches as its own node and unknown tokens are refused") {
    controlplane::model::Store store;
    int port = 0;
    ControlPlane cp(store, port);
    auto stub = api::v1::Discovery::NewStub(tlsChannel(port));
    auto watch = [&](const std::string& node, const std::string& token) {
      grpc::ClientContext ctx;
      if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
      api::v1::WatchRequest req;
      req.set_node(node);
      auto reader = stub->Watch(&ctx, req);
      api::v1::WatchResponse resp;
      while (reader->Read(&resp)) ctx.TryCancel();
      return reader->Finish().error_code();
    };
    CHECK(watch("node2", kNode1Token) == grpc::StatusCode::PERMISSION_DENIED);
    CHECK(watch("node1", "not-a-token-at-all-00000") == grpc::StatusCode::UNAUTHENTICATED);
    CHECK(watch("node1", "") == grpc::StatusCode::UNAUTHENTICATED);
  }

  TEST_CASE("a client that does not trust the control plane's CA cannot connect") {
    controlplane::model::Store store;
    int port = 0;
    ControlPlane cp(store, port);
    auto dir =
        std::filesystem::temp_directory_path() / ("sluice-other-ca-" + std::to_string(getpid()));
    bool created = false;
    auto other = controlplane::ca::Authority::development(dir.string(), "cluster.local", &created);
    std::filesystem::remove_all(dir);
    REQUIRE(other.has_value());
    Recorder rec;
    auto cfg = clientConfig(port);
    cfg.trust_anchor_pem = (*other)->trustAnchorPem();
    auto client = agent::discovery::Client::create(cfg, rec);
    REQUIRE(client.has_value());
    CHECK_FALSE(rec.waitUntil([&](Recorder&) { return (*client)->synced(); }, 1500ms));
    CHECK_FALSE((*client)->lastError().empty());
  }
}
