// A throwaway network namespace for root-only tests. It has no name and no
// bind mount: it disappears when the last fd/socket referencing it closes,
// so a failing test cannot leak it.
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sched.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "sluice/common/netns.h"

namespace sluice::test {

// Fails the test (never skips) when not root: kernel tests must really run.
inline void requireRoot() {
  REQUIRE_MESSAGE(geteuid() == 0,
                  "this test loads BPF programs / creates namespaces and must run as root");
}

class ScratchNetns {
 public:
  ScratchNetns() {
    requireRoot();
    UniqueFd original(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
    REQUIRE(original.valid());
    REQUIRE_MESSAGE(::unshare(CLONE_NEWNET) == 0, "unshare(CLONE_NEWNET) failed");
    fd_ = UniqueFd(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
    REQUIRE(::setns(original.get(), CLONE_NEWNET) == 0);
    REQUIRE(fd_.valid());
    sh("ip link set lo up");
  }
  int fd() const { return fd_.get(); }
  std::string path() const {
    return "/proc/" + std::to_string(::getpid()) + "/fd/" + std::to_string(fd_.get());
  }

  // Runs a shell command inside the namespace; fails the test on non-zero exit.
  void sh(const std::string& cmd) const {
    int rc = -1;
    auto r = runInNetns(fd_.get(), [&] { rc = run(cmd); });
    REQUIRE(r.has_value());
    REQUIRE_MESSAGE(rc == 0, "command failed in scratch netns: " << cmd);
  }

  // /bin/sh -c cmd; its wait status. Not std::system(): that blocks SIGCHLD
  // in the calling thread only, so the kernel hands the child's SIGCHLD to
  // another thread of the test (the default action is to ignore it, but
  // only once delivered), and a blocking call there with SO_RCVTIMEO/
  // SO_SNDTIMEO fails with EINTR instead of being restarted: an echo server
  // or client thread of an engine test sees a connection fail.
  static int run(const std::string& cmd) {
    const char* argv[] = {"sh", "-c", cmd.c_str(), nullptr};
    pid_t pid = -1;
    if (::posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char* const*>(argv), environ) !=
        0)
      return -1;
    int status = -1;
    while (::waitpid(pid, &status, 0) < 0)
      if (errno != EINTR) return -1;
    return status;
  }

 private:
  UniqueFd fd_;
};

}  // namespace sluice::test
