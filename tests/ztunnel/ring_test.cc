#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "ztunnel/uring/ring.h"

#include <doctest/doctest.h>
#include <sys/eventfd.h>
#include <unistd.h>

using namespace sluice::ztunnel::uring;

namespace {
struct Counter final : Operation {
  int completions = 0;
  int last_res = 0;
  void complete(const io_uring_cqe& cqe) override {
    completions++;
    last_res = cqe.res;
  }
};
}  // namespace

TEST_SUITE("ring") {
  TEST_CASE("completions are handed back to their operation") {
    auto ring = Ring::create(8);
    REQUIRE_MESSAGE(ring.has_value(), (ring ? "" : ring.error().describe()));
    Counter nop;
    io_uring_prep_nop((*ring)->sqe(&nop));
    CHECK(*(*ring)->run(1000) == 1);
    CHECK(nop.completions == 1);
    CHECK(nop.last_res == 0);
  }
  TEST_CASE("more submissions than SQ entries are all queued and completed") {
    auto ring = Ring::create(4);
    REQUIRE(ring.has_value());
    Counter op;
    for (int i = 0; i < 20; ++i) io_uring_prep_nop((*ring)->sqe(&op));
    int done = 0;
    for (int i = 0; i < 20 && done < 20; ++i) done += static_cast<int>(*(*ring)->run(100));
    CHECK(op.completions == 20);
  }
  TEST_CASE("run() returns after its timeout when nothing completes") {
    auto ring = Ring::create(4);
    REQUIRE(ring.has_value());
    int efd = eventfd(0, EFD_CLOEXEC);
    Counter rd;
    uint64_t value = 0;
    io_uring_prep_read((*ring)->sqe(&rd), efd, &value, sizeof(value), 0);
    CHECK(*(*ring)->run(20) == 0);
    CHECK(rd.completions == 0);
    uint64_t one = 7;
    REQUIRE(write(efd, &one, sizeof(one)) == 8);
    CHECK(*(*ring)->run(1000) == 1);
    CHECK(value == 7);
    close(efd);
  }
}
