// How full a BPF map is: its entries against max_entries. A full map makes
// the kernel side fail (a connect not captured, a pod not enrolled), so the
// metrics endpoint exports every hash map's fill level.
#pragma once

#include <cstdint>
#include <string>

#include "sluice/common/result.h"

namespace sluice::agent::bpf {

struct MapFill {
  std::string name;  // e.g. sluice_orig_dst_v1
  uint64_t entries = 0;
  uint64_t max_entries = 0;
};

// Counts the entries of the hash map `fd` by walking its keys: one syscall
// per key, so a full 65536-entry map costs tens of milliseconds. Keys added
// or removed during the walk may or may not be counted. `name` is the map's
// name in the BPF object (the kernel keeps only its first 15 characters).
Result<MapFill> mapFill(int fd, std::string name);

}  // namespace sluice::agent::bpf
