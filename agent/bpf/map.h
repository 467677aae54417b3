// Typed wrapper over a BPF map fd: sizes checked once against the kernel's
// view of the map, no void* at call sites.
#pragma once

#include <bpf/bpf.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/common/unique_fd.h"

namespace sluice::agent::bpf {

template <typename Key, typename Value>
class BpfMap {
 public:
  BpfMap() = default;
  // Takes ownership of fd after checking key/value sizes.
  static Result<BpfMap> adopt(UniqueFd fd, const std::string& name) {
    bpf_map_info info{};
    uint32_t len = sizeof(info);
    if (bpf_obj_get_info_by_fd(fd.get(), &info, &len) != 0)
      return failErrno(fmt::format("cannot query BPF map {}", name));
    if (info.key_size != sizeof(Key) || info.value_size != sizeof(Value))
      return fail(
          fmt::format("BPF map {} has key/value size {}/{}, expected {}/{}: the pinned map is from "
                      "an incompatible build; remove it and restart the agent",
                      name, info.key_size, info.value_size, sizeof(Key), sizeof(Value)));
    BpfMap m;
    m.fd_ = std::move(fd);
    m.name_ = name;
    return m;
  }
  // Opens a pinned map.
  static Result<BpfMap> openPinned(const std::string& path) {
    UniqueFd fd(bpf_obj_get(path.c_str()));
    if (!fd) return failErrno(fmt::format("cannot open pinned BPF map {}", path));
    return adopt(std::move(fd), path);
  }

  bool valid() const { return fd_.valid(); }
  int fd() const { return fd_.get(); }

  Result<void> update(const Key& k, const Value& v, uint64_t flags = BPF_ANY) {
    if (bpf_map_update_elem(fd_.get(), &k, &v, flags) != 0)
      return failErrno(fmt::format("update of BPF map {} failed", name_));
    return {};
  }
  std::optional<Value> lookup(const Key& k) const {
    Value v{};
    if (bpf_map_lookup_elem(fd_.get(), &k, &v) != 0) return std::nullopt;
    return v;
  }
  // Atomically looks up and deletes (hash maps); falls back to lookup+delete.
  std::optional<Value> take(const Key& k) {
    Value v{};
    if (bpf_map_lookup_and_delete_elem(fd_.get(), &k, &v) == 0) return v;
    auto found = lookup(k);
    if (found) erase(k);
    return found;
  }
  bool erase(const Key& k) { return bpf_map_delete_elem(fd_.get(), &k) == 0; }
  std::vector<std::pair<Key, Value>> entries() const {
    std::vector<std::pair<Key, Value>> out;
    Key cur{};
    Key next{};
    const Key* prev = nullptr;
    while (bpf_map_get_next_key(fd_.get(), prev, &next) == 0) {
      if (auto v = lookup(next)) out.emplace_back(next, *v);
      cur = next;
      prev = &cur;
    }
    return out;
  }

 private:
  UniqueFd fd_;
  std::string name_;
};

}  // namespace sluice::agent::bpf
