// The mesh CA kept in Kubernetes (controlplane/ca/ca_secret.h) against the
// fake API server: generated once and stored, read back by the next start, a
// concurrent creator's CA used, bad Secrets and missing RBAC explained, and
// the trust anchor ConfigMap created and kept current.
#include "controlplane/ca/ca_secret.h"

#include <doctest/doctest.h>

#include "controlplane/fake_apiserver.h"

using namespace sluice;
using namespace sluice::controlplane;
using namespace sluice::testing;
using json = nlohmann::json;

namespace {

const ca::ObjectRef kSecret{"sluice-system", "sluice-ca"};
const ca::ObjectRef kConfigMap{"sluice-system", "sluice-ca-root"};

json getObject(const FakeApiServer& api, const std::string& path) {
  kube::Client client(api.clientConfig());
  auto r = client.get(path);
  REQUIRE(r.has_value());
  REQUIRE(r->status == 200);
  return json::parse(r->body);
}

json secretOf(const ca::CaMaterial& m) {
  return {{"metadata", {{"name", kSecret.name}, {"namespace", kSecret.ns}}},
          {"type", "Opaque"},
          {"data",
           {{"root-cert.pem", b64(m.trust_anchor_pem)},
            {"ca-cert.pem", b64(m.ca_cert_pem)},
            {"ca-key.pem", b64(m.ca_key_pem)}}}};
}

}  // namespace

TEST_SUITE("controlplane/ca secret") {
  TEST_CASE("no Secret: a self-signed CA is generated, stored, and found by the next start") {
    FakeApiServer api;
    kube::Client client(api.clientConfig());
    auto first = ca::loadOrCreateCa(client, kSecret);
    REQUIRE(first.has_value());
    CHECK(first->created);
    auto stored = getObject(api, "/api/v1/namespaces/sluice-system/secrets/sluice-ca");
    CHECK(stored["type"] == "Opaque");
    CHECK(stored["data"]["ca-key.pem"] == b64(first->material.ca_key_pem));
    CHECK(stored["data"]["root-cert.pem"] == b64(first->material.trust_anchor_pem));
    auto authority = ca::Authority::fromPem(first->material, "cluster.local", "Secret");
    REQUIRE(authority.has_value());
    CHECK((*authority)->issueServing({"127.0.0.1"}, std::chrono::hours(1)).has_value());

    auto second = ca::loadOrCreateCa(client, kSecret);
    REQUIRE(second.has_value());
    CHECK_FALSE(second->created);
    CHECK(second->material.ca_key_pem == first->material.ca_key_pem);
    CHECK(second->material.trust_anchor_pem == first->material.trust_anchor_pem);
  }

  TEST_CASE("a concurrent creator wins: its CA is read back and used") {
    FakeApiServer api;
    auto theirs = ca::Authority::generateSelfSigned();
    REQUIRE(theirs.has_value());
    api.call("race-create", {{"plural", "secrets"}, {"object", secretOf(*theirs)}});
    kube::Client client(api.clientConfig());
    auto got = ca::loadOrCreateCa(client, kSecret);
    REQUIRE(got.has_value());
    CHECK_FALSE(got->created);
    CHECK(got->material.ca_key_pem == theirs->ca_key_pem);
    CHECK(got->material.ca_cert_pem == theirs->ca_cert_pem);
  }

  TEST_CASE("a Secret without the CA's key is refused, saying what it must hold") {
    FakeApiServer api;
    auto m = ca::Authority::generateSelfSigned();
    REQUIRE(m.has_value());
    json secret = secretOf(*m);
    secret["data"].erase("ca-key.pem");
    api.call("put-object", {{"plural", "secrets"}, {"object", secret}});
    kube::Client client(api.clientConfig());
    auto got = ca::loadOrCreateCa(client, kSecret);
    REQUIRE_FALSE(got.has_value());
    CHECK(got.error().message.find("sluice-system/sluice-ca has no ca-key.pem") !=
          std::string::npos);
    CHECK(got.error().message.find("gen-ca.sh") != std::string::npos);
    // A key that does not match its certificate is caught when the authority is built.
    auto other = ca::Authority::generateSelfSigned();
    REQUIRE(other.has_value());
    ca::CaMaterial mixed = *m;
    mixed.ca_key_pem = other->ca_key_pem;
    auto a = ca::Authority::fromPem(mixed, "cluster.local", "Secret sluice-system/sluice-ca");
    REQUIRE_FALSE(a.has_value());
    CHECK(a.error().message.find("does not match") != std::string::npos);
    CHECK(a.error().message.find("Secret sluice-system/sluice-ca") != std::string::npos);
  }

  TEST_CASE("missing RBAC is named: creating the Secret forbidden") {
    FakeApiServer api;
    api.call("forbid", {{"method", "POST"}, {"plural", "secrets"}});
    kube::Client client(api.clientConfig());
    auto got = ca::loadOrCreateCa(client, kSecret);
    REQUIRE_FALSE(got.has_value());
    CHECK(got.error().message.find("HTTP 403") != std::string::npos);
    CHECK(got.error().message.find("create on secrets in sluice-system") != std::string::npos);
    CHECK(got.error().message.find("deploy/rbac.yaml") != std::string::npos);
  }

  TEST_CASE("the trust anchor ConfigMap is created, left alone when current, updated when stale") {
    FakeApiServer api;
    kube::Client client(api.clientConfig());
    const std::string path = "/api/v1/namespaces/sluice-system/configmaps/sluice-ca-root";
    auto created = ca::publishTrustAnchor(client, kConfigMap, "ANCHOR-1\n");
    REQUIRE(created.has_value());
    CHECK(*created);
    CHECK(getObject(api, path)["data"]["root-cert.pem"] == "ANCHOR-1\n");
    auto same = ca::publishTrustAnchor(client, kConfigMap, "ANCHOR-1\n");
    REQUIRE(same.has_value());
    CHECK_FALSE(*same);
    auto updated = ca::publishTrustAnchor(client, kConfigMap, "ANCHOR-2\n");
    REQUIRE(updated.has_value());
    CHECK(*updated);
    auto cm = getObject(api, path);
    CHECK(cm["data"]["root-cert.pem"] == "ANCHOR-2\n");
    CHECK(cm["metadata"]["labels"]["app.kubernetes.io/part-of"] == "sluice");
    auto puts = 0;
    for (const auto& r : api.requests()) puts += r.rfind("PUT ", 0) == 0;
    CHECK(puts == 1);
  }

  TEST_CASE("--ca-secret and --trust-anchor-configmap references") {
    CHECK(ca::parseObjectRef("ns/name", "--ca-secret")->text() == "ns/name");
    for (const char* bad : {"name", "/name", "ns/", "a/b/c", ""}) {
      auto r = ca::parseObjectRef(bad, "--ca-secret");
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().message.find("--ca-secret must be NAMESPACE/NAME") != std::string::npos);
    }
  }
}
