#include <doctest/doctest.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "controlplane/ca/authority.h"
#include "controlplane/ca/service.h"

using namespace sluice;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

struct Dir {
  fs::path path = fs::temp_directory_path() / ("sluice-ca-test-" + std::to_string(getpid()));
  ~Dir() { fs::remove_all(path); }
};

bool chainsTo(const std::string& anchor_pem, const std::string& chain_pem) {
  auto anchors = x509::parseChain(anchor_pem);
  auto chain = x509::parseChain(chain_pem);
  if (!anchors || !chain) return false;
  std::unique_ptr<X509_STORE, decltype(&X509_STORE_free)> store(X509_STORE_new(), X509_STORE_free);
  for (auto& c : *anchors) X509_STORE_add_cert(store.get(), c.get());
  STACK_OF(X509)* untrusted = sk_X509_new_null();
  for (size_t i = 1; i < chain->size(); ++i) sk_X509_push(untrusted, (*chain)[i].get());
  std::unique_ptr<X509_STORE_CTX, decltype(&X509_STORE_CTX_free)> ctx(X509_STORE_CTX_new(),
                                                                      X509_STORE_CTX_free);
  X509_STORE_CTX_init(ctx.get(), store.get(), (*chain)[0].get(), untrusted);
  bool ok = X509_verify_cert(ctx.get()) == 1;
  sk_X509_free(untrusted);
  return ok;
}

}  // namespace

TEST_SUITE("ca") {
  TEST_CASE("the development CA is created once and keeps its trust across restarts") {
    Dir dir;
    bool created = false;
    auto a = controlplane::ca::Authority::development(dir.path.string(), "cluster.local", &created);
    REQUIRE_MESSAGE(a.has_value(), (a ? "" : a.error().describe()));
    CHECK(created);
    CHECK((fs::status(dir.path / "ca-key.pem").permissions() & fs::perms::others_read) ==
          fs::perms::none);
    auto again =
        controlplane::ca::Authority::development(dir.path.string(), "cluster.local", &created);
    REQUIRE(again.has_value());
    CHECK_FALSE(created);
    CHECK((*again)->trustAnchorPem() == (*a)->trustAnchorPem());
  }

  TEST_CASE("a workload CSR is signed into a P-256 leaf with only the SPIFFE URI SAN") {
    Dir dir;
    bool created = false;
    auto ca =
        controlplane::ca::Authority::development(dir.path.string(), "cluster.local", &created);
    REQUIRE(ca.has_value());
    auto key = x509::generateP256();
    REQUIRE(key.has_value());
    auto csr = x509::makeCsr(key->get(), "spiffe://cluster.local/ns/shop/sa/web");
    REQUIRE(csr.has_value());
    auto s = (*ca)->sign(*csr, 120s);
    REQUIRE_MESSAGE(s.has_value(), (s ? "" : s.error().describe()));
    CHECK(s->identity == "spiffe://cluster.local/ns/shop/sa/web");
    auto chain = x509::parseChain(s->chain_pem);
    REQUIRE(chain.has_value());
    REQUIRE(chain->size() == 2);  // leaf + issuer
    X509* leaf = (*chain)[0].get();
    CHECK(x509::uriSan(leaf) == s->identity);
    CHECK(X509_NAME_entry_count(X509_get_subject_name(leaf)) == 0);
    CHECK(X509_check_private_key(leaf, key->get()) == 1);
    CHECK(X509_check_ca(leaf) == 0);
    auto life = x509::notAfter(leaf) - std::chrono::system_clock::now();
    CHECK(life > 100s);
    CHECK(life <= 121s);
    CHECK(chainsTo((*ca)->trustAnchorPem(), s->chain_pem));
    CHECK_FALSE(s->serial.empty());
  }

  TEST_CASE("bad CSRs are refused with a reason") {
    Dir dir;
    bool created = false;
    auto ca =
        controlplane::ca::Authority::development(dir.path.string(), "cluster.local", &created);
    REQUIRE(ca.has_value());
    auto key = x509::generateP256();
    struct Case {
      std::string csr;
      std::chrono::seconds ttl;
      const char* expect;
    };
    EVP_PKEY* rsa = EVP_RSA_gen(2048);
    std::vector<Case> cases = {
        {"garbage", 3600s, "not a PEM"},
        {*x509::makeCsr(key->get(), "spiffe://evil.example/ns/shop/sa/web"), 3600s, "trust domain"},
        {*x509::makeCsr(key->get(), "spiffe://cluster.local/ns/shop"), 3600s, "not a spiffe"},
        {*x509::makeCsr(key->get(), "https://cluster.local/ns/a/sa/b"), 3600s, "not a spiffe"},
        {*x509::makeCsr(rsa, "spiffe://cluster.local/ns/shop/sa/web"), 3600s, "P-256"},
        {*x509::makeCsr(key->get(), "spiffe://cluster.local/ns/shop/sa/web"), 30s, "one minute"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.expect);
      auto r = (*ca)->sign(c.csr, c.ttl);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().describe().find(c.expect) != std::string::npos);
    }
    EVP_PKEY_free(rsa);
  }

  TEST_CASE("CA files that do not belong together are refused") {
    Dir a_dir, b_dir;
    b_dir.path += "-b";
    bool created = false;
    REQUIRE(
        controlplane::ca::Authority::development(a_dir.path.string(), "td", &created).has_value());
    REQUIRE(
        controlplane::ca::Authority::development(b_dir.path.string(), "td", &created).has_value());
    auto p = [](const Dir& d, const char* f) { return (d.path / f).string(); };
    auto mismatch = controlplane::ca::Authority::fromFiles(
        p(a_dir, "trust-anchor.pem"), p(a_dir, "ca.pem"), p(b_dir, "ca-key.pem"), "td");
    REQUIRE_FALSE(mismatch.has_value());
    CHECK(mismatch.error().describe().find("does not match") != std::string::npos);
    auto foreign = controlplane::ca::Authority::fromFiles(
        p(b_dir, "trust-anchor.pem"), p(a_dir, "ca.pem"), p(a_dir, "ca-key.pem"), "td");
    REQUIRE_FALSE(foreign.has_value());
    CHECK(foreign.error().describe().find("does not chain") != std::string::npos);
    CHECK_FALSE(controlplane::ca::Authority::fromFiles("/nonexistent", p(a_dir, "ca.pem"),
                                                       p(a_dir, "ca-key.pem"), "td")
                    .has_value());
  }
}

TEST_SUITE("spiffe") {
  TEST_CASE("bootstrap tokens: one line per node, a token per node, refusals name the lines") {
    Dir d;
    fs::create_directories(d.path);
    auto load = [&](const std::string& text) {
      std::string file = (d.path / "tokens").string();
      std::ofstream(file) << text;
      return controlplane::ca::loadBootstrapTokens(file);
    };
    auto ok = load("# node: token\nnode1: aaaaaaaaaaaaaaaa\nnode2: \"bbbbbbbbbbbbbbbb\"\n");
    REQUIRE(ok.has_value());
    CHECK(ok->at("node1") == "aaaaaaaaaaaaaaaa");
    CHECK(ok->at("node2") == "bbbbbbbbbbbbbbbb");
    auto node_twice =
        load("node1: aaaaaaaaaaaaaaaa\nnode2: bbbbbbbbbbbbbbbb\nnode1: cccccccccccccccc\n");
    REQUIRE_FALSE(node_twice.has_value());
    CHECK(node_twice.error().describe().find("line 3: node node1 already has a token (line 1)") !=
          std::string::npos);
    auto token_twice = load("node1: aaaaaaaaaaaaaaaa\nnode2: aaaaaaaaaaaaaaaa\n");
    REQUIRE_FALSE(token_twice.has_value());
    CHECK(token_twice.error().describe().find("line 2: the token of line 1 again") !=
          std::string::npos);
    CHECK_FALSE(load("node1: short\n").has_value());
  }

  TEST_CASE("SPIFFE IDs parse only in the ns/sa form") {
    auto id = x509::SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web");
    REQUIRE(id.has_value());
    CHECK(id->ns == "shop");
    CHECK(id->sa == "web");
    CHECK(id->uri() == "spiffe://cluster.local/ns/shop/sa/web");
    // What the agent derives for a pod is what the CA accepts for it.
    CHECK(x509::workloadUri("cluster.local", "shop", "web") == id->uri());
    for (const char* bad :
         {"spiffe://cluster.local", "spiffe:///ns/a/sa/b", "spiffe://td/ns//sa/b",
          "spiffe://td/ns/a/sa/", "spiffe://td/ns/a b/sa/c", "http://td/ns/a/sa/b"}) {
      CAPTURE(bad);
      CHECK_FALSE(x509::SpiffeId::parse(bad).has_value());
    }
  }
}
