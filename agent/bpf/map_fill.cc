#include "agent/bpf/map_fill.h"

#include <bpf/bpf.h>

#include <vector>

#include "sluice/common/fmt.h"

namespace sluice::agent::bpf {

Result<MapFill> mapFill(int fd, std::string name) {
  bpf_map_info info{};
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0)
    return failErrno(fmt::format("cannot query BPF map {} for its fill level", name));
  MapFill fill;
  fill.name = std::move(name);
  fill.max_entries = info.max_entries;
  // Two key buffers: get_next_key reads one and writes the other.
  std::vector<unsigned char> cur(info.key_size), next(info.key_size);
  const void* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, next.data()) == 0) {
    ++fill.entries;
    if (fill.entries > fill.max_entries) break;  // keys churning under the walk: good enough
    cur.swap(next);
    prev = cur.data();
  }
  return fill;
}

}  // namespace sluice::agent::bpf
