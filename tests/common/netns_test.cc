#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "sluice/common/netns.h"

#include <doctest/doctest.h>
#include <fcntl.h>

#include <stdexcept>

#include "support/scratch_netns.h"

namespace {
uint64_t currentCookie() {
  sluice::UniqueFd self(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  REQUIRE(self.valid());
  auto c = sluice::netnsCookie(self.get());
  REQUIRE(c.has_value());
  return *c;
}
}  // namespace

TEST_SUITE("netns") {
  TEST_CASE("runInNetns runs inside the namespace and always comes back - an exception included") {
    sluice::test::ScratchNetns pod;
    uint64_t home = currentCookie();
    uint64_t pod_cookie = *sluice::netnsCookie(pod.fd());
    REQUIRE(home != pod_cookie);
    uint64_t inside = 0;
    auto r = sluice::runInNetns(pod.fd(), [&] { inside = currentCookie(); });
    REQUIRE(r.has_value());
    CHECK(inside == pod_cookie);
    CHECK(currentCookie() == home);
    CHECK_THROWS_AS((void)sluice::runInNetns(pod.fd(), [] { throw std::runtime_error("boom"); }),
                    std::runtime_error);
    CHECK(currentCookie() == home);
  }
}
