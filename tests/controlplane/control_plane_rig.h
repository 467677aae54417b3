// The control plane's gRPC services (discovery and certificates) on a TLS
// port of 127.0.0.1 with a development CA, and what the tests of them and of
// the agent's clients share: a discovery listener that records each view,
// the clients' configuration, a meshed pod's objects.
#pragma once

#include <doctest/doctest.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "agent/discovery/client.h"
#include "controlplane/ca/authority.h"
#include "controlplane/ca/service.h"
#include "controlplane/discovery/service.h"
#include "controlplane/local/source.h"

namespace sluice::test {

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
  bool waitUntil(Pred pred, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      {
        std::lock_guard lk(mu);
        if (pred(*this)) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
  std::mutex mu;
  std::map<std::string, agent::discovery::Workload> view;
  uint64_t version = 0;
  int calls = 0;
};

// A development CA shared by the tests of this binary (generated once).
inline const controlplane::ca::Authority& testCa() {
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

inline const std::string kNode1Token = "node1-token-0123456789abcdef";
inline const std::string kNode2Token = "node2-token-0123456789abcdef";

inline std::shared_ptr<grpc::Channel> tlsChannel(int port) {
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
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }
};

inline agent::discovery::ClientConfig clientConfig(int port, const std::string& node = "node1",
                                                   const std::string& token = kNode1Token) {
  agent::discovery::ClientConfig c;
  c.target = "127.0.0.1:" + std::to_string(port);
  c.node_name = node;
  c.trust_anchor_pem = testCa().trustAnchorPem();
  c.token = token;
  c.initial_backoff = std::chrono::milliseconds(50);
  c.max_backoff = std::chrono::milliseconds(200);
  return c;
}

inline controlplane::model::Objects podObjects(const std::string& name) {
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

}  // namespace sluice::test
