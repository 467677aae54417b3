#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "agent/discovery/client.h"
#include "agent/identity/cert_manager.h"
#include "agent/rpc/call.h"
#include "controlplane/ca/authority.h"
#include "controlplane/ca/service.h"
#include "controlplane/discovery/service.h"
#include "controlplane/local/source.h"

using namespace sluice;
using namespace std::chrono_literals;

namespace {

class Recorder : public agent::discovery::Listener {
 public:
  void onView(const agent::discovery::View& all, uint64_t version) override {
    std::lock_guard lk(mu);
    view = all.workloads;
    services = all.services;
    this->version = version;
    calls++;
  }
  std::map<std::string, agent::discovery::Service> services;
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

// A development CA shared by the tests of this file (generated once).
const controlplane::ca::Authority& testCa() {
  static std::unique_ptr<controlplane::ca::Authority> ca = [] {
    auto dir = std::filesystem::temp_directory_path() /
               ("sluice-discovery-ca-" + std::to_string(getpid()));
    bool created = false;
    auto a = controlplane::ca::Authority::development(dir.string(), "cluster.local", &created);
    REQUIRE(a.has_value());
    std::filesystem::remove_all(dir);
    return std::move(*a);
  }();
  return *ca;
}

const std::string kNode1Token = "node1-token-0123456789abcdef";
const std::string kNode2Token = "node2-token-0123456789abcdef";

std::shared_ptr<grpc::Channel> tlsChannel(int port) {
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = testCa().trustAnchorPem();
  return grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::SslCredentials(tls));
}

struct ControlPlane {
  controlplane::model::Store& store;
  controlplane::discovery::Service service{store};
  controlplane::ca::CertificateService certificates;
  std::unique_ptr<grpc::Server> server;
  ControlPlane(controlplane::model::Store& s, int& port)
      : store(s),
        certificates(testCa(), s, {{"node1", kNode1Token}, {"node2", kNode2Token}},
                     std::chrono::hours(1)) {
    service.setAuthenticator(
        [this](grpc::ServerContext* ctx) { return certificates.authenticate(ctx); });
    auto serving = testCa().issueServing({"127.0.0.1"}, std::chrono::hours(1));
    REQUIRE(serving.has_value());
    grpc::SslServerCredentialsOptions tls(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    tls.pem_key_cert_pairs.push_back({serving->first, serving->second});
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:" + std::to_string(port), grpc::SslServerCredentials(tls), &port);
    b.RegisterService(&service);
    b.RegisterService(&certificates);
    server = b.BuildAndStart();
    REQUIRE(server);
  }
  ~ControlPlane() {
    service.stop();
    server->Shutdown(std::chrono::system_clock::now() + 1s);
  }
};

agent::discovery::ClientConfig clientConfig(int port, const std::string& node = "node1",
                                            const std::string& token = kNode1Token) {
  agent::discovery::ClientConfig c;
  c.target = "127.0.0.1:" + std::to_string(port);
  c.node_name = node;
  c.trust_anchor_pem = testCa().trustAnchorPem();
  c.token = token;
  c.initial_backoff = 50ms;
  c.max_backoff = 200ms;
  return c;
}

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

TEST_SUITE("certificates") {
  TEST_CASE("node authorization: a node gets identities of pods it runs - and nothing else") {
    controlplane::model::Store store;
    REQUIRE(
        store.setSource("a", podObjects("web")).has_value());  // shop/default on node1 with an IP
    int port = 0;
    ControlPlane cp(store, port);
    auto target = "127.0.0.1:" + std::to_string(port);
    agent::identity::GrpcSigner node1(target, testCa().trustAnchorPem(), kNode1Token);
    agent::identity::GrpcSigner node2(target, testCa().trustAnchorPem(), kNode2Token);
    agent::identity::GrpcSigner stranger(target, testCa().trustAnchorPem(),
                                         std::string("unknown-token-0000000000"));
    auto key = x509::generateP256();
    auto csr = *x509::makeCsr(key->get(), "spiffe://cluster.local/ns/shop/sa/default");

    auto ok = node1.sign(csr, 120s);
    REQUIRE_MESSAGE(ok.has_value(), (ok ? "" : ok.error().describe()));
    auto chain = x509::parseChain(*ok);
    CHECK(x509::uriSan((*chain)[0].get()) == "spiffe://cluster.local/ns/shop/sa/default");

    auto refused = node2.sign(csr, 120s);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().describe().find("runs no pod") != std::string::npos);
    CHECK(stranger.sign(csr, 120s).error().describe().find("unknown node token") !=
          std::string::npos);
    auto other_sa = *x509::makeCsr(key->get(), "spiffe://cluster.local/ns/shop/sa/admin");
    CHECK_FALSE(node1.sign(other_sa, 120s).has_value());
    CHECK_FALSE(node1.sign("garbage", 120s).has_value());
  }

  TEST_CASE(
      "the agent's certificate manager fetches ahead - renews and keeps serving while the CA is "
      "away") {
    controlplane::model::Store store;
    REQUIRE(store.setSource("a", podObjects("web")).has_value());
    int port = 0;
    auto cp = std::make_unique<ControlPlane>(store, port);
    agent::identity::GrpcSigner signer("127.0.0.1:" + std::to_string(port),
                                       testCa().trustAnchorPem(), kNode1Token);
    agent::identity::CertManagerConfig cfg;
    cfg.ttl = 60s;  // renews at ~30 s +/- 6 s
    cfg.initial_backoff = 50ms;
    cfg.max_backoff = 200ms;
    agent::identity::CertManager certs(signer, cfg);
    const std::string id = "spiffe://cluster.local/ns/shop/sa/default";
    const std::string denied = "spiffe://cluster.local/ns/shop/sa/nobody";
    certs.setIdentities({id, denied});
    Recorder wait;  // for its polling helper
    REQUIRE(wait.waitUntil([&](Recorder&) {
      if (!certs.get(id)) return false;
      auto dump = certs.dump();
      for (const auto& c : dump["certificates"])
        if (c["identity"] == denied && !c["error"].get<std::string>().empty()) return true;
      return false;
    }));
    auto first = certs.get(id);
    CHECK(first->not_after - std::chrono::system_clock::now() <= 61s);
    CHECK(x509::parsePrivateKey(first->key_pem).has_value());
    auto dump = certs.dump()["certificates"];
    REQUIRE(dump.size() == 2);
    bool saw_denied = false;
    for (const auto& c : dump) {
      if (c["identity"] == denied) {
        saw_denied = true;
        CHECK(c["state"] == "pending");
        CHECK(c["error"].get<std::string>().find("runs no pod") != std::string::npos);
      } else {
        CHECK(c["state"] == "valid");
        CHECK(c["renews_in_seconds"].get<long>() >= 20);
        CHECK(c["renews_in_seconds"].get<long>() <= 37);
      }
    }
    CHECK(saw_denied);
    // Expiry per identity (for the metrics): the served certificate only.
    auto expiries = certs.expiries();
    CHECK(expiries.size() == 1);
    CHECK(expiries[id] == first->not_after);
    cp.reset();  // the CA goes away: the certificate keeps serving
    CHECK(certs.get(id) == first);
    certs.setIdentities({});
    CHECK(certs.get(id) == nullptr);
  }

  TEST_CASE("an identity waiting out a long retry backoff is requested at once by retryNow") {
    controlplane::model::Store store;
    REQUIRE(store.setSource("a", podObjects("web")).has_value());
    int port = 0;
    auto cp = std::make_unique<ControlPlane>(store, port);
    const std::string target = "127.0.0.1:" + std::to_string(port);
    cp.reset();  // the agent starts while the control plane is down
    agent::identity::GrpcSigner signer(target, testCa().trustAnchorPem(), kNode1Token);
    agent::identity::CertManagerConfig cfg;
    cfg.initial_backoff = 60s;  // the first failure would wait a minute
    agent::identity::CertManager certs(signer, cfg);
    const std::string id = "spiffe://cluster.local/ns/shop/sa/default";
    certs.setIdentities({id});
    Recorder wait;
    REQUIRE(wait.waitUntil([&](Recorder&) {
      auto dump = certs.dump();
      for (const auto& c : dump["certificates"])
        if (!c["error"].get<std::string>().empty()) return true;
      return false;
    }));
    cp = std::make_unique<ControlPlane>(store, port);  // back, on the same port
    certs.retryNow();
    CHECK(wait.waitUntil([&](Recorder&) { return certs.get(id) != nullptr; }));
  }
}

// The agent's own gRPC client (agent/rpc) against the real gRPC server.
TEST_SUITE("agent rpc") {
  agent::rpc::CallOptions watchCall(int port, const std::string& token = kNode1Token) {
    agent::rpc::CallOptions o;
    o.target = "127.0.0.1:" + std::to_string(port);
    o.trust_anchor_pem = testCa().trustAnchorPem();
    o.path = "/sluice.api.v1.Discovery/Watch";
    if (!token.empty()) o.metadata.emplace_back("authorization", "Bearer " + token);
    o.connect_timeout = 1s;
    return o;
  }
  std::string watchRequest(const std::string& node) {
    api::v1::WatchRequest req;
    req.set_node(node);
    return req.SerializeAsString();
  }

  TEST_CASE("statuses and messages of the server come back as they were sent") {
    controlplane::model::Store store;
    int port = 0;
    ControlPlane cp(store, port);
    auto never = [](const std::string&) { return true; };
    auto denied = agent::rpc::call(watchCall(port), watchRequest("node2"), never);
    CHECK(denied.code == agent::rpc::kPermissionDenied);
    CHECK(denied.message == "this token belongs to node node1");
    CHECK(
        agent::rpc::call(watchCall(port, "not-a-token-at-all-00000"), watchRequest("node1"), never)
            .code == agent::rpc::kUnauthenticated);
    CHECK(agent::rpc::call(watchCall(port), watchRequest(""), never).code ==
          3);  // INVALID_ARGUMENT
    auto missing = watchCall(port);
    missing.path = "/sluice.api.v1.Discovery/NoSuchMethod";
    CHECK(agent::rpc::call(missing, watchRequest("node1"), never).code ==
          agent::rpc::kUnimplemented);
  }

  TEST_CASE("a snapshot arrives - then cancel, the deadline and silence each end the call") {
    controlplane::model::Store store;
    REQUIRE(store.setSource("a", podObjects("web")).has_value());
    int port = 0;
    ControlPlane cp(store, port);
    // The snapshot, then the caller ends the call by returning false.
    int messages = 0;
    auto first =
        agent::rpc::call(watchCall(port), watchRequest("node1"), [&](const std::string& bytes) {
          api::v1::WatchResponse r;
          CHECK(r.ParseFromString(bytes));
          CHECK(r.full());
          CHECK(r.upserts_size() == 1);
          ++messages;
          // What OpenSSL's write to a vanished peer does: it
          // must not kill a process that keeps SIGPIPE's default.
          ::raise(SIGPIPE);
          return false;
        });
    CHECK(first.code == agent::rpc::kCancelled);
    CHECK(messages == 1);
    sigset_t mask;
    pthread_sigmask(SIG_BLOCK, nullptr, &mask);
    CHECK_FALSE(sigismember(&mask, SIGPIPE));  // the thread's mask is as it was
    // Cancelled from another thread while waiting for the next message.
    agent::rpc::Canceller cancel;
    auto started = std::chrono::steady_clock::now();
    std::thread t([&] {
      std::this_thread::sleep_for(200ms);
      cancel.cancel();
    });
    auto cancelled = agent::rpc::call(
        watchCall(port), watchRequest("node1"), [](const std::string&) { return true; }, &cancel);
    t.join();
    CHECK(cancelled.code == agent::rpc::kCancelled);
    CHECK(std::chrono::steady_clock::now() - started < 2s);
    // A deadline (sent as grpc-timeout; either side may end it).
    auto o = watchCall(port);
    o.deadline = 300ms;
    CHECK(agent::rpc::call(o, watchRequest("node1"), [](const std::string&) {
            return true;
          }).code == agent::rpc::kDeadlineExceeded);
    // Nothing heard for idle_timeout (this test server sends no keepalive PINGs).
    o = watchCall(port);
    o.idle_timeout = 300ms;
    auto idle = agent::rpc::call(o, watchRequest("node1"), [](const std::string&) { return true; });
    CHECK(idle.code == agent::rpc::kUnavailable);
    CHECK(idle.message.find("nothing heard") != std::string::npos);
  }

  TEST_CASE("a server certificate that does not name the dialled host is refused") {
    controlplane::model::Store store;
    int port = 0;
    ControlPlane cp(store, port);  // its certificate names 127.0.0.1 only
    auto o = watchCall(port);
    o.target = "localhost:" + std::to_string(port);
    auto s = agent::rpc::call(o, watchRequest("node1"), [](const std::string&) { return true; });
    CHECK(s.code == agent::rpc::kUnavailable);
    CHECK(s.message.find("certificate verification failed") != std::string::npos);
    o = watchCall(port);
    o.trust_anchor_pem = "not PEM";
    CHECK(agent::rpc::call(o, watchRequest("node1"), [](const std::string&) {
            return true;
          }).message.find("no PEM certificate") != std::string::npos);
  }

  TEST_CASE(
      "a peer that is not a TLS server, or says nothing, gets a clear error in bounded time") {
    int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(lfd >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    REQUIRE(::listen(lfd, 8) == 0);
    socklen_t len = sizeof(a);
    getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
    int port = ntohs(a.sin_port);
    auto o = watchCall(port);
    o.connect_timeout = 300ms;
    // Silent: accepted by the kernel, never answers the ClientHello.
    auto started = std::chrono::steady_clock::now();
    auto silent =
        agent::rpc::call(o, watchRequest("node1"), [](const std::string&) { return true; });
    CHECK(silent.code == agent::rpc::kUnavailable);
    CHECK(silent.message.find("TLS handshake") != std::string::npos);
    CHECK(std::chrono::steady_clock::now() - started < 3s);
    // Garbage instead of a ServerHello.
    std::thread server([&] {
      for (int i = 0; i < 2; ++i) {
        int c = ::accept(lfd, nullptr, nullptr);
        if (c < 0) continue;
        const char junk[] = "HTTP/1.1 400 Bad Request\r\n\r\n";
        [[maybe_unused]] auto n = ::write(c, junk, sizeof(junk) - 1);
        ::close(c);
      }
    });
    auto garbage =
        agent::rpc::call(o, watchRequest("node1"), [](const std::string&) { return true; });
    CHECK(garbage.code == agent::rpc::kUnavailable);
    CHECK(garbage.message.find("TLS handshake") != std::string::npos);
    ::shutdown(lfd, SHUT_RDWR);
    ::close(lfd);
    server.join();
    // Nobody listening.
    CHECK(agent::rpc::call(o, watchRequest("node1"), [](const std::string&) {
            return true;
          }).message.find("connect to") != std::string::npos);
  }
}
