// The proxy's view of the mesh, built from the control plane's snapshot:
// meshed (enrolled) workloads by IP, each with its SPIFFE ID, Services by
// VIP:port with their ready endpoints, and headless Services by endpoint
// IP:target port. Rebuilt by the discovery thread and
// swapped atomically; read lock-free by the proxy workers. Until the first
// update() (a view from disk or from the control plane) it has no view, and
// the proxy refuses outbound connections rather than guess.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>

#include "agent/discovery/client.h"
#include "sluice.pb.h"
#include "sluice/common/addr.h"
#include "sluice/common/x509.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::discovery {

class MeshDirectory final : public ztunnel::MeshDirectory {
 public:
  explicit MeshDirectory(std::string trust_domain) : trust_domain_(std::move(trust_domain)) {}

  void update(const View& view) {
    auto next = std::make_shared<Index>();
    for (const auto& [uid, w] : view.workloads) {
      if (!w.enrolled()) continue;
      ztunnel::MeshWorkload m{x509::workloadUri(trust_domain_, w.namespace_(), w.service_account()),
                              w.namespace_() + "/" + w.name(), w.node()};
      for (const auto& ip : w.ips())
        if (auto a = parseIp4(ip)) (*next)[*a] = m;
    }
    auto services = std::make_shared<ServiceIndex>();
    auto headless = std::make_shared<HeadlessIndex>();
    for (const auto& [key, svc] : view.services) {
      if (svc.headless()) {
        indexHeadless(key, svc, *headless);
        continue;
      }
      for (const auto& port : svc.ports()) {
        if (!port.protocol().empty() && port.protocol() != "TCP") continue;
        auto target = std::make_shared<ztunnel::ServiceTarget>();
        target->name = key;
        for (const auto& ep : svc.endpoints()) {
          auto ip = parseIp4(ep.ip());
          auto p = ep.ports().find(port.name());
          if (!ip || p == ep.ports().end() || p->second == 0 || p->second > 65535) continue;
          sockaddr_in a{};
          a.sin_family = AF_INET;
          a.sin_addr.s_addr = *ip;
          a.sin_port = htons(static_cast<uint16_t>(p->second));
          target->endpoints.push_back(a);
        }
        if (target->endpoints.empty()) continue;
        for (const auto& vip : svc.vips())
          if (auto a = parseIp4(vip))
            (*services)[serviceKey(*a, htons(static_cast<uint16_t>(port.port())))] = target;
      }
    }
    index_.store(std::move(next), std::memory_order_release);
    services_.store(std::move(services), std::memory_order_release);
    headless_.store(std::move(headless), std::memory_order_release);
    has_view_.store(true, std::memory_order_release);
  }

  bool hasView() override { return has_view_.load(std::memory_order_acquire); }

  std::shared_ptr<const ztunnel::ServiceTarget> service(uint32_t ip4, uint16_t port) override {
    auto index = services_.load(std::memory_order_acquire);
    auto it = index->find(serviceKey(ip4, port));
    return it == index->end() ? nullptr : it->second;
  }

  std::optional<std::string> headlessService(uint32_t ip4, uint16_t port) override {
    auto index = headless_.load(std::memory_order_acquire);
    auto it = index->find(serviceKey(ip4, port));
    if (it == index->end()) it = index->find(serviceKey(ip4, 0));  // a Service without ports
    if (it == index->end()) return std::nullopt;
    return it->second;
  }

  size_t serviceCount() const { return services_.load(std::memory_order_acquire)->size(); }

  std::optional<ztunnel::MeshWorkload> meshed(uint32_t ip4) override {
    auto index = index_.load(std::memory_order_acquire);
    auto it = index->find(ip4);
    if (it == index->end()) return std::nullopt;
    return it->second;
  }

 private:
  using Index = std::unordered_map<uint32_t, ztunnel::MeshWorkload>;
  // (VIP, port), both network order -> endpoints
  using ServiceIndex = std::unordered_map<uint64_t, std::shared_ptr<const ztunnel::ServiceTarget>>;
  // (endpoint IP, target port), both network order; port 0: any port -> "ns/name"
  using HeadlessIndex = std::unordered_map<uint64_t, std::string>;
  static uint64_t serviceKey(uint32_t ip4, uint16_t port) { return (uint64_t(ip4) << 16) | port; }

  // Every TCP target port of every ready endpoint. An endpoint of two
  // headless Services on the same port belongs to the first by name (the
  // view's services are ordered), so the answer does not flap.
  static void indexHeadless(const std::string& key, const api::v1::Service& svc,
                            HeadlessIndex& out) {
    for (const auto& ep : svc.endpoints()) {
      auto ip = parseIp4(ep.ip());
      if (!ip) continue;
      if (svc.ports().empty()) out.emplace(serviceKey(*ip, 0), key);
      for (const auto& port : svc.ports()) {
        if (!port.protocol().empty() && port.protocol() != "TCP") continue;
        auto p = ep.ports().find(port.name());
        if (p == ep.ports().end() || p->second == 0 || p->second > 65535) continue;
        out.emplace(serviceKey(*ip, htons(static_cast<uint16_t>(p->second))), key);
      }
    }
  }
  std::string trust_domain_;
  std::atomic<bool> has_view_{false};
  std::atomic<std::shared_ptr<const Index>> index_{std::make_shared<const Index>()};
  std::atomic<std::shared_ptr<const ServiceIndex>> services_{
      std::make_shared<const ServiceIndex>()};
  std::atomic<std::shared_ptr<const HeadlessIndex>> headless_{
      std::make_shared<const HeadlessIndex>()};
};

}  // namespace sluice::agent::discovery
