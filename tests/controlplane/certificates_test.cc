// The control plane's certificate service and the agent's certificate
// manager: node authorization, renewal, retry.
#include "agent/identity/cert_manager.h"
#include "control_plane_rig.h"

using namespace sluice;
using namespace sluice::test;
using namespace std::chrono_literals;

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
