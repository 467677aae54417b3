// The proxy's view of meshed workloads by IP, built from the control
// plane's snapshot: enrolled workloads only, each with its SPIFFE ID. Updated
// by the discovery thread, read lock-free by the proxy workers.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>

#include "sluice.pb.h"
#include "sluice/common/addr.h"
#include "sluice/common/x509.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::discovery {

class MeshDirectory final : public ztunnel::MeshDirectory {
 public:
  explicit MeshDirectory(std::string trust_domain) : trust_domain_(std::move(trust_domain)) {}

  void update(const std::map<std::string, api::v1::Workload>& all) {
    auto next = std::make_shared<Index>();
    for (const auto& [uid, w] : all) {
      if (!w.enrolled()) continue;
      ztunnel::MeshWorkload m{
          x509::SpiffeId{trust_domain_, w.namespace_(), w.service_account()}.uri(),
          w.namespace_() + "/" + w.name(), w.node()};
      for (const auto& ip : w.ips())
        if (auto a = parseIp4(ip)) (*next)[*a] = m;
    }
    index_.store(std::move(next), std::memory_order_release);
  }

  std::optional<ztunnel::MeshWorkload> meshed(uint32_t ip4) override {
    auto index = index_.load(std::memory_order_acquire);
    auto it = index->find(ip4);
    if (it == index->end()) return std::nullopt;
    return it->second;
  }

 private:
  using Index = std::unordered_map<uint32_t, ztunnel::MeshWorkload>;
  std::string trust_domain_;
  std::atomic<std::shared_ptr<const Index>> index_{std::make_shared<const Index>()};
};

}  // namespace sluice::agent::discovery
