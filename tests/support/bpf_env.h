// Where the kernel-facing tests attach: the host's cgroup-v2 mount, found the
// same way the agent finds it (unified or hybrid hierarchy).
#pragma once

#include <doctest/doctest.h>

#include <string>

#include "agent/bpf/loader.h"

namespace sluice::test {

inline std::string cgroup2() {
  auto c = agent::bpf::Loader::findCgroup2();
  REQUIRE_MESSAGE(c.has_value(), "no cgroup2 mount: the BPF programs cannot be attached");
  return *c;
}

}  // namespace sluice::test
