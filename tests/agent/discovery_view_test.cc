#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <unistd.h>

#include <string>

#include "agent/discovery/client.h"
#include "common/policy/wire.h"

using namespace sluice;
using sluice::agent::discovery::View;

namespace {

api::v1::PolicySet policySet(const char* name, const char* ip_block = "10.0.0.0/8") {
  policy::AuthorizationPolicy p;
  p.ns = "prod";
  p.name = name;
  p.action = policy::Action::kDeny;
  policy::Rule r;
  policy::Source s;
  s.ip_blocks = {ip_block};
  r.from.push_back(s);
  p.rules.push_back(r);
  std::vector<policy::AuthorizationPolicy> a{p};
  return policy::toProto(a, {});
}

api::v1::WatchResponse message(bool full, const api::v1::PolicySet* policies) {
  api::v1::WatchResponse m;
  m.set_full(full);
  m.set_version(1);
  m.set_epoch(7);
  if (policies) *m.mutable_policies() = *policies;
  return m;
}

}  // namespace

TEST_SUITE("discovery view policies") {
  TEST_CASE("a message's policy set replaces the previous one, a delta without one keeps it") {
    View v;
    CHECK(v.policies->authorizationPolicies().empty());
    auto first = policySet("first");
    CHECK(v.apply(message(true, &first)));
    REQUIRE(v.policies->authorizationPolicies().size() == 1);
    CHECK(v.policies->authorizationPolicies()[0].name == "first");
    CHECK_FALSE(v.apply(message(false, nullptr)));
    CHECK(v.policies->authorizationPolicies()[0].name == "first");
    CHECK_FALSE(v.apply(message(false, &first)));  // the same set: no change
    api::v1::PolicySet none;
    CHECK(v.apply(message(false, &none)));
    CHECK(v.policies->authorizationPolicies().empty());
  }

  TEST_CASE("a set that does not compile is rejected, naming the object, and the last stays") {
    View v;
    auto good = policySet("good");
    REQUIRE(v.apply(message(true, &good)));
    auto bad = policySet("bad-cidr", "10.0.0.0/99");
    CHECK_FALSE(v.apply(message(false, &bad)));
    CHECK(v.policy_sets_rejected == 1);
    CHECK(v.policy_error.find("prod/bad-cidr") != std::string::npos);
    REQUIRE(v.policies->authorizationPolicies().size() == 1);
    CHECK(v.policies->authorizationPolicies()[0].name == "good");
    auto fixed = policySet("fixed");
    CHECK(v.apply(message(false, &fixed)));
    CHECK(v.policy_error.empty());
  }

  TEST_CASE("the persisted view keeps the last good set") {
    View v;
    auto good = policySet("kept");
    REQUIRE(v.apply(message(true, &good)));
    auto bad = policySet("bad", "nope");
    v.apply(message(false, &bad));
    char dir[] = "/tmp/sluice-view-XXXXXX";
    REQUIRE(mkdtemp(dir) != nullptr);
    std::string path = std::string(dir) + "/view.pb";
    REQUIRE(
        agent::discovery::saveView(path, agent::discovery::snapshotOf(v, 3, 7).SerializeAsString())
            .has_value());
    auto loaded = agent::discovery::loadView(path);
    ::unlink(path.c_str());
    ::rmdir(dir);
    REQUIRE(loaded.has_value());
    REQUIRE(loaded->view.policies->authorizationPolicies().size() == 1);
    CHECK(loaded->view.policies->authorizationPolicies()[0].name == "kept");
  }
}
