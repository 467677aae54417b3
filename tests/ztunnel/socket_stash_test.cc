// SocketStash (ztunnel/proxy/socket_stash.h): how many sockets one entry into
// a pod's netns makes, and what is never handed out.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "ztunnel/proxy/socket_stash.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <vector>

using namespace sluice;
using namespace sluice::ztunnel::proxy;
using namespace std::chrono_literals;

namespace {

// Makes real (unconnected) sockets and records each call's family and count.
struct Maker {
  std::vector<size_t> batches;
  std::vector<int> families;
  std::vector<int> made;  // every descriptor made, to check what was closed
  bool fail = false;
  size_t cap = 64;  // makes at most this many per call (descriptors running out)
  SocketStash::Make fn() {
    return [this](int family, size_t n, std::vector<UniqueFd>& out) -> Result<void> {
      batches.push_back(n);
      families.push_back(family);
      if (fail) return fail_("no sockets today");
      for (size_t i = 0; i < std::min(n, cap); ++i) {
        out.emplace_back(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
        REQUIRE(out.back().get() >= 0);
        made.push_back(out.back().get());
      }
      return {};
    };
  }
  static tl::unexpected<Error> fail_(const char* why) { return sluice::fail(why); }
};

bool open(int fd) { return ::fcntl(fd, F_GETFD) >= 0; }

// The socket's inode; 0 when fd is not open.
uint64_t inodeOf(int fd) {
  struct stat st {};
  return ::fstat(fd, &st) == 0 ? st.st_ino : 0;
}

int familyOf(const UniqueFd& s) {
  int family = 0;
  socklen_t len = sizeof(family);
  REQUIRE(::getsockopt(s.get(), SOL_SOCKET, SO_DOMAIN, &family, &len) == 0);
  return family;
}

}  // namespace

TEST_CASE("a burst doubles the batch up to 8 - a pause brings it back to 1") {
  SocketStash stash;
  Maker m;
  auto t = SocketStash::Clock::now();
  std::vector<UniqueFd> taken;
  // 1 + 2 + 4 + 8 + 8 = 23 sockets for 23 connections in quick succession.
  for (int i = 0; i < 23; ++i) {
    auto s = stash.take(AF_INET, t + i * 1ms, m.fn());
    REQUIRE(s.has_value());
    CHECK(familyOf(*s) == AF_INET);
    taken.push_back(std::move(*s));
  }
  CHECK(m.batches == std::vector<size_t>{1, 2, 4, 8, 8});
  CHECK(stash.stashed() == 0);
  // Later, one connection: one socket, nothing kept.
  auto later = t + 10s;
  REQUIRE(stash.take(AF_INET, later, m.fn()).has_value());
  CHECK(m.batches.back() == 1);
  CHECK(stash.stashed() == 0);
}

TEST_CASE("sockets left over for more than a second are closed, never handed out") {
  SocketStash stash;
  Maker m;
  auto t = SocketStash::Clock::now();
  auto first = stash.take(AF_INET, t, m.fn());
  auto second = stash.take(AF_INET, t + 1ms, m.fn());  // a burst: 2 made, 1 kept
  REQUIRE((first.has_value() && second.has_value()));
  CHECK(stash.stashed() == 1);
  int kept = m.made[1];  // the burst's first socket (the last one made is handed out first)
  uint64_t kept_inode = inodeOf(kept);
  REQUIRE(kept_inode != 0);
  auto s = stash.take(AF_INET, t + 1ms + SocketStash::kStale + 1ms, m.fn());
  REQUIRE(s.has_value());
  CHECK(inodeOf(s->get()) != kept_inode);  // a new one, not the stale one
  CHECK(inodeOf(kept) != kept_inode);      // which is closed (its number may be reused)
  CHECK(m.batches.back() == 1);            // no burst after a pause
  CHECK(stash.stashed() == 0);
}

TEST_CASE("families are stashed apart - clear() closes what is stashed") {
  SocketStash stash;
  Maker m;
  auto t = SocketStash::Clock::now();
  for (int i = 0; i < 3; ++i) {  // 1, then 2: one IPv4 socket kept
    auto s = stash.take(AF_INET, t + i * 1ms, m.fn());
    REQUIRE(s.has_value());
  }
  CHECK(stash.stashed() == 0);
  REQUIRE(stash.take(AF_INET, t + 3ms, m.fn()).has_value());  // the 4-batch: 3 kept
  CHECK(stash.stashed() == 3);
  auto v6 = stash.take(AF_INET6, t + 4ms, m.fn());  // its own batch, from 1
  REQUIRE(v6.has_value());
  CHECK(familyOf(*v6) == AF_INET6);
  CHECK(m.families.back() == AF_INET6);
  CHECK(m.batches.back() == 1);
  CHECK(stash.stashed() == 3);
  std::vector<int> stashed(m.made.begin() + 3, m.made.begin() + 6);  // the IPv4 three
  stash.clear();
  CHECK(stash.stashed() == 0);
  for (int fd : stashed) CHECK_FALSE(open(fd));
}

TEST_CASE("a failure to make sockets is the caller's error and keeps nothing") {
  SocketStash stash;
  Maker m;
  m.fail = true;
  auto s = stash.take(AF_INET, SocketStash::Clock::now(), m.fn());
  REQUIRE_FALSE(s.has_value());
  CHECK(s.error().describe().find("no sockets today") != std::string::npos);
  CHECK(stash.stashed() == 0);
  m.fail = false;
  CHECK(stash.take(AF_INET, SocketStash::Clock::now(), m.fn()).has_value());
}

TEST_CASE("fewer sockets than the batch asked for are handed out as made") {
  SocketStash stash;
  Maker m;
  m.cap = 2;
  auto t = SocketStash::Clock::now();
  std::vector<UniqueFd> taken;
  for (int i = 0; i < 6; ++i) {
    auto s = stash.take(AF_INET, t + i * 1ms, m.fn());
    REQUIRE(s.has_value());
    taken.push_back(std::move(*s));
  }
  // Asked 1, 2, 4 (2 made), then 8 (2 made: one handed out, one kept).
  CHECK(m.batches == std::vector<size_t>{1, 2, 4, 8});
  CHECK(m.made.size() == 7);
  CHECK(stash.stashed() == 1);
}
