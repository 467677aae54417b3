// Connection records (ztunnel/proxy/records.cc): the closed history is a ring
// of the last kClosedHistory closes, listed oldest first, then the open ones.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "ztunnel/proxy/records.h"

#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <vector>

using namespace sluice::ztunnel;
using namespace sluice::ztunnel::proxy;

namespace {
std::shared_ptr<LiveRecord> live(const std::string& pod) {
  auto l = std::make_shared<LiveRecord>();
  l->rec.pod = pod;
  l->rec.destination = "10.0.0.2:80";
  return l;
}
}  // namespace

TEST_CASE("the closed history keeps the last closes, oldest first, then the open ones") {
  Records records(false, nullptr);
  constexpr size_t kClosed = Records::kClosedHistory + 300;
  std::vector<uint64_t> ids;
  for (size_t i = 0; i < kClosed; ++i) {
    auto l = live("shop/p" + std::to_string(i));
    records.open(l);
    records.close(*l, CloseReason::kEof, i % 2 ? std::string() : "detail " + std::to_string(i));
    ids.push_back(l->rec.id);
  }
  auto still = live("shop/open");
  records.open(still);
  for (size_t round = 0; round < 2; ++round) {  // listing twice changes nothing
    auto all = records.snapshot();
    REQUIRE(all.size() == Records::kClosedHistory + 1);
    for (size_t i = 0; i < Records::kClosedHistory; ++i) {
      size_t n = kClosed - Records::kClosedHistory + i;
      CHECK(all[i].id == ids[n]);
      CHECK(all[i].pod == "shop/p" + std::to_string(n));
      CHECK((all[i].state == ConnState::kClosed));
      std::string detail = n % 2 ? std::string() : "detail " + std::to_string(n);
      CHECK(all[i].reason_detail == detail);
    }
    CHECK(all.back().pod == "shop/open");
    CHECK((all.back().state == ConnState::kOpen));
  }
}

TEST_CASE("before the history is full, every close is listed in order") {
  Records records(false, nullptr);
  for (int i = 0; i < 3; ++i) {
    auto l = live("shop/p" + std::to_string(i));
    records.open(l);
    records.close(*l, CloseReason::kReset);
  }
  auto all = records.snapshot();
  REQUIRE(all.size() == 3);
  for (int i = 0; i < 3; ++i) {
    CHECK(all[i].pod == "shop/p" + std::to_string(i));
    CHECK((all[i].reason == CloseReason::kReset));
  }
}
