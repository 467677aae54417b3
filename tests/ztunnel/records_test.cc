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

namespace {
// Keeps what the records hand it at close.
class Collect final : public ConnectionObserver {
 public:
  void opened(unsigned, const ConnectionRecord&) override {}
  void transferred(unsigned, const ConnectionRecord&, uint64_t, uint64_t) override {}
  void closed(unsigned, const ConnectionRecord& r) override { closed_records.push_back(r); }
  std::vector<ConnectionRecord> closed_records;
};
}  // namespace

TEST_CASE("open connections closed out of order: the rest listed by id, per worker, once") {
  Collect observer;
  Records records(false, &observer);
  std::vector<std::shared_ptr<LiveRecord>> open;
  for (int i = 0; i < 6; ++i) {
    auto l = live("shop/p" + std::to_string(i));
    l->worker = i % 2;
    records.open(l);
    open.push_back(l);
  }
  records.moved(*open[3], 100, 7);
  // Close the middle, the last and the first: each close moves another
  // record into the closed one's place.
  for (int i : {3, 5, 0}) records.close(*open[i], CloseReason::kEof);
  auto all = records.snapshot();
  REQUIRE(all.size() == 6);
  std::vector<std::string> open_pods;
  for (size_t i = 3; i < all.size(); ++i) {
    CHECK((all[i].state == ConnState::kOpen));
    open_pods.push_back(all[i].pod);
    if (i > 3) CHECK(all[i - 1].id < all[i].id);
  }
  CHECK(open_pods == std::vector<std::string>{"shop/p1", "shop/p2", "shop/p4"});
  auto on1 = records.openOn(1);
  REQUIRE(on1.size() == 1);
  CHECK(on1[0] == open[1]);
  CHECK(records.openOn(0).size() == 2);
  // The observer got each final record: state, reason, bytes.
  REQUIRE(observer.closed_records.size() == 3);
  CHECK(observer.closed_records[0].pod == "shop/p3");
  CHECK((observer.closed_records[0].state == ConnState::kClosed));
  CHECK(observer.closed_records[0].bytes_sent == 100);
  CHECK(observer.closed_records[0].bytes_received == 7);
  CHECK(observer.closed_records[2].pod == "shop/p0");
  // A second close of the same record changes nothing.
  records.close(*open[3], CloseReason::kReset);
  CHECK(observer.closed_records.size() == 3);
  for (int i : {1, 2, 4}) records.close(*open[i], CloseReason::kEof);
  CHECK(records.openOn(0).empty());
  CHECK(records.openOn(1).empty());
  CHECK(records.snapshot().size() == 6);
}

namespace {
// Counts the events, in order.
class Events final : public ConnectionObserver {
 public:
  void opened(unsigned, const ConnectionRecord&) override { log += "o"; }
  void transferred(unsigned, const ConnectionRecord&, uint64_t, uint64_t) override { log += "t"; }
  void request(unsigned, const ConnectionRecord&, const RequestRecord&) override { log += "r"; }
  void closed(unsigned, const ConnectionRecord&) override { log += "c"; }
  std::string log;
};
}  // namespace

TEST_CASE("a Service attempt that may move on: announced once it connects, moves or ends") {
  Events seen;
  Records records(false, &seen);
  auto attempt = [&] {
    auto l = live("shop/client");
    l->may_retry = true;
    records.open(l);
    return l;
  };
  // Retried: the observer never hears of it (the app's connection goes on
  // elsewhere); connections() and the history still list it.
  auto retried = attempt();
  CHECK(seen.log.empty());
  records.close(*retried, CloseReason::kConnectError, "Connection refused", true);
  CHECK(seen.log.empty());
  CHECK(records.snapshot().back().retried);
  // Connected: opened then, once.
  auto connected = attempt();
  records.confirm(*connected);
  records.confirm(*connected);
  records.moved(*connected, 5, 0);
  records.request(*connected, RequestRecord{});
  records.close(*connected, CloseReason::kEof);
  CHECK(seen.log == "otrc");
  // Failed with no endpoint left (not retried): opened and closed at its end.
  seen.log.clear();
  auto failed = attempt();
  records.close(*failed, CloseReason::kConnectError, "Connection refused");
  CHECK(seen.log == "oc");
  // A first byte moved announces it too.
  seen.log.clear();
  auto moving = attempt();
  records.moved(*moving, 0, 3);
  CHECK(seen.log == "ot");
  // Any other connection: at open, as before.
  seen.log.clear();
  auto plain = live("shop/client");
  records.open(plain);
  CHECK(seen.log == "o");
}
