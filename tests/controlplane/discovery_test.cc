#include <doctest/doctest.h>
#include <grpcpp/grpcpp.h>

#include <thread>

#include "agent/discovery/client.h"
#include "controlplane/discovery/service.h"
#include "controlplane/local/source.h"

using namespace sluice;
using namespace std::chrono_literals;

namespace {

class Recorder : public agent::discovery::Listener {
 public:
  void onWorkloads(const std::map<std::string, agent::discovery::Workload>& all,
                   uint64_t version) override {
    std::lock_guard lk(mu);
    view = all;
    this->version = version;
    calls++;
  }
  template <typename Pred>
  bool waitUntil(Pred pred, std::chrono::milliseconds timeout = 5s) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      {
        std::lock_guard lk(mu);
        if (pred(*this)) return true;
      }
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }
  std::mutex mu;
  std::map<std::string, agent::discovery::Workload> view;
  uint64_t version = 0;
  int calls = 0;
};

struct ControlPlane {
  controlplane::model::Store& store;
  controlplane::discovery::Service service{store};
  std::unique_ptr<grpc::Server> server;
  ControlPlane(controlplane::model::Store& s, int& port) : store(s) {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:" + std::to_string(port), grpc::InsecureServerCredentials(),
                       &port);
    b.RegisterService(&service);
    server = b.BuildAndStart();
    REQUIRE(server);
  }
  ~ControlPlane() {
    service.stop();
    server->Shutdown(std::chrono::system_clock::now() + 1s);
  }
};

controlplane::model::Objects podObjects(const std::string& name) {
  controlplane::model::Objects o;
  o.namespaces.push_back({"shop", {{"sluice.dev/mesh", "enabled"}}});
  controlplane::model::Pod p;
  p.uid = "uid-" + name;
  p.name = name;
  p.ns = "shop";
  p.node = "node1";
  p.ips = {"10.244.1.5"};
  o.pods.push_back(p);
  return o;
}

}  // namespace

TEST_SUITE("discovery") {
  TEST_CASE("snapshot - deltas - and resume across a control plane restart") {
    controlplane::model::Store store;
    REQUIRE(store.setSource("a", podObjects("web")).has_value());
    int port = 0;
    auto cp = std::make_unique<ControlPlane>(store, port);
    REQUIRE(port != 0);
    Recorder rec;
    auto client = agent::discovery::Client::create(
        {"127.0.0.1:" + std::to_string(port), "node1", 50ms, 200ms}, rec);
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

  TEST_CASE("an agent already at the current version gets an up-to-date message - not a snapshot") {
    controlplane::model::Store store;
    REQUIRE(store.setSource("a", podObjects("web")).has_value());
    int port = 0;
    ControlPlane cp(store, port);
    auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                       grpc::InsecureChannelCredentials());
    auto stub = api::v1::Discovery::NewStub(channel);
    grpc::ClientContext ctx;
    api::v1::WatchRequest req;
    req.set_node("node1");
    req.set_resume_version(store.version());
    auto reader = stub->Watch(&ctx, req);
    api::v1::WatchResponse resp;
    REQUIRE(reader->Read(&resp));
    CHECK_FALSE(resp.full());
    CHECK(resp.upserts_size() == 0);
    CHECK(resp.version() == store.version());
    ctx.TryCancel();
    reader->Finish();
  }

  TEST_CASE("a request without a node name is refused") {
    controlplane::model::Store store;
    int port = 0;
    ControlPlane cp(store, port);
    auto stub = api::v1::Discovery::NewStub(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    api::v1::WatchRequest req;
    auto reader = stub->Watch(&ctx, req);
    api::v1::WatchResponse resp;
    CHECK_FALSE(reader->Read(&resp));
    CHECK(reader->Finish().error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  }
}
