// The proxy's view of the mesh, built from the control plane's snapshot:
// meshed (enrolled) workloads by IP, each with its SPIFFE ID, Services by
// VIP:port with their ready endpoints, and headless Services by endpoint
// IP:target port. Rebuilt by the discovery thread and
// swapped atomically; read lock-free by the proxy workers. Until the first
// update() (a view from disk or from the control plane) it has no view, and
// the proxy refuses outbound connections rather than guess.
//
// Opaque ports (HTTP inspection off) by destination IP:port: a pod's
// sluice.dev/opaque-ports annotation on its IPs; a Service's annotation and
// its ports' appProtocol on the VIP:port and on each endpoint's target port.
// When declarations disagree, opaque wins.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <vector>

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
    auto ports = std::make_shared<PortIndex>();
    for (const auto& [uid, w] : view.workloads) {
      if (!w.opaque_ports().empty()) {
        std::vector<Range> ranges;
        for (const auto& r : w.opaque_ports())
          if (r.first() >= 1 && r.first() <= r.last() && r.last() <= 65535)
            ranges.push_back({uint16_t(r.first()), uint16_t(r.last())});
        for (const auto& ip : w.ips())
          if (auto a = IpAddr::parse(ip)) {
            auto& mine = ports->pods[*a];
            mine.insert(mine.end(), ranges.begin(), ranges.end());
          }
        ports->dump.push_back({{"pod", w.namespace_() + "/" + w.name()},
                               {"ips", std::vector<std::string>(w.ips().begin(), w.ips().end())},
                               {"opaque_ports", rangesText(ranges)},
                               {"from", "annotation"}});
      }
      if (!w.enrolled()) continue;
      ztunnel::MeshWorkload m{x509::workloadUri(trust_domain_, w.namespace_(), w.service_account()),
                              w.namespace_() + "/" + w.name(), w.node()};
      for (const auto& ip : w.ips())
        if (auto a = IpAddr::parse(ip)) (*next)[*a] = m;
    }
    auto services = std::make_shared<ServiceIndex>();
    auto headless = std::make_shared<HeadlessIndex>();
    auto by_endpoint = std::make_shared<HeadlessIndex>();
    for (const auto& [key, svc] : view.services) {
      for (const auto& port : svc.ports()) declare(*ports, key, svc, port);
      indexEndpoints(key, svc, *by_endpoint);
      if (svc.headless()) {
        indexEndpoints(key, svc, *headless);
        continue;
      }
      for (const auto& port : svc.ports()) {
        if (!port.protocol().empty() && port.protocol() != "TCP") continue;
        // One target per family: a VIP balances over the endpoints of its own.
        std::shared_ptr<ztunnel::ServiceTarget> by_family[2];
        for (const auto& ep : svc.endpoints()) {
          auto ip = IpAddr::parse(ep.ip());
          auto p = ep.ports().find(port.name());
          if (!ip || p == ep.ports().end() || p->second == 0 || p->second > 65535) continue;
          auto& target = by_family[ip->isV6()];
          if (!target)
            target = std::make_shared<ztunnel::ServiceTarget>(ztunnel::ServiceTarget{key, {}});
          target->endpoints.emplace_back(*ip, static_cast<uint16_t>(p->second));
        }
        // A VIP without a ready endpoint of its family is still the
        // Service's: a connection to it is refused (no endpoint), never
        // passed through to the VIP outside the mesh.
        for (const auto& vip : svc.vips())
          if (auto a = IpAddr::parse(vip)) {
            auto& target = by_family[a->isV6()];
            if (!target)
              target = std::make_shared<ztunnel::ServiceTarget>(ztunnel::ServiceTarget{key, {}});
            (*services)[serviceKey(*a, htons(static_cast<uint16_t>(port.port())))] = target;
          }
      }
    }
    index_.store(std::move(next), std::memory_order_release);
    ports_.store(std::move(ports), std::memory_order_release);
    services_.store(std::move(services), std::memory_order_release);
    headless_.store(std::move(headless), std::memory_order_release);
    by_endpoint_.store(std::move(by_endpoint), std::memory_order_release);
    has_view_.store(true, std::memory_order_release);
  }

  bool hasView() override { return has_view_.load(std::memory_order_acquire); }

  std::shared_ptr<const ztunnel::ServiceTarget> service(const IpAddr& ip, uint16_t port) override {
    auto index = services_.load(std::memory_order_acquire);
    auto it = index->find(serviceKey(ip, port));
    return it == index->end() ? nullptr : it->second;
  }

  std::optional<std::string> headlessService(const IpAddr& ip, uint16_t port) override {
    return findEndpoint(*headless_.load(std::memory_order_acquire), ip, port, true);
  }

  // By target port only, as the metrics' guess (a Service without ports
  // forwards nothing to guess by).
  std::optional<std::string> endpointService(const IpAddr& ip, uint16_t port) override {
    return findEndpoint(*by_endpoint_.load(std::memory_order_acquire), ip, port, false);
  }

  std::optional<bool> opaquePort(const IpAddr& ip, uint16_t port) override {
    auto index = ports_.load(std::memory_order_acquire);
    if (auto pod = index->pods.find(ip); pod != index->pods.end())
      for (const auto& r : pod->second)
        if (port >= r.first && port <= r.last) return true;
    auto it = index->declared.find(serviceKey(ip, htons(port)));
    if (it == index->declared.end()) return std::nullopt;
    return it->second;
  }

  // The declared opaque / inspected ports, for /config_dump.
  nlohmann::json opaqueJson() const { return ports_.load(std::memory_order_acquire)->dump; }

  size_t serviceCount() const { return services_.load(std::memory_order_acquire)->size(); }

  // The addresses of the meshed workloads with `identity`, each with its
  // ns/name (a scan: for the admin API, not the data path).
  std::vector<std::pair<IpAddr, std::string>> withIdentity(const std::string& identity) const {
    std::vector<std::pair<IpAddr, std::string>> out;
    for (const auto& [ip, w] : *index_.load(std::memory_order_acquire))
      if (w.identity == identity) out.emplace_back(ip, w.name);
    return out;
  }

  std::optional<ztunnel::MeshWorkload> meshed(const IpAddr& ip) override {
    auto index = index_.load(std::memory_order_acquire);
    auto it = index->find(ip);
    if (it == index->end()) return std::nullopt;
    return it->second;
  }

 private:
  struct Range {
    uint16_t first, last;
  };
  struct PortIndex {
    std::unordered_map<IpAddr, std::vector<Range>> pods;  // pod IP -> annotated ranges
    std::unordered_map<SockAddr, bool> declared;          // serviceKey -> opaque
    nlohmann::json dump = nlohmann::json::array();
  };

  static std::string rangesText(const std::vector<Range>& ranges) {
    std::string out;
    for (const auto& r : ranges) {
      if (!out.empty()) out += ",";
      out += std::to_string(r.first);
      if (r.last != r.first) out += "-" + std::to_string(r.last);
    }
    return out;
  }

  // A Service port's declaration (annotation, else appProtocol) on its VIPs
  // and on its endpoints' target ports; opaque wins over inspect.
  static void declare(PortIndex& index, const std::string& key, const api::v1::Service& svc,
                      const api::v1::ServicePort& port) {
    std::optional<bool> opaque;
    std::string from;
    for (const auto& r : svc.opaque_ports())
      if (port.port() >= r.first() && port.port() <= r.last()) {
        opaque = true;
        from = "annotation";
      }
    if (!opaque && (opaque = ztunnel::appProtocolOpaque(port.app_protocol())))
      from = "appProtocol " + port.app_protocol();
    if (!opaque || port.port() == 0 || port.port() > 65535) return;
    auto set = [&](const IpAddr& ip, uint32_t p) {
      auto [it, fresh] = index.declared.emplace(serviceKey(ip, htons(uint16_t(p))), *opaque);
      if (!fresh) it->second = it->second || *opaque;
    };
    nlohmann::json targets = nlohmann::json::array();
    for (const auto& vip : svc.vips())
      if (auto a = IpAddr::parse(vip)) set(*a, port.port());
    for (const auto& ep : svc.endpoints()) {
      auto ip = IpAddr::parse(ep.ip());
      auto p = ep.ports().find(port.name());
      if (!ip || p == ep.ports().end() || p->second == 0 || p->second > 65535) continue;
      set(*ip, p->second);
      targets.push_back(SockAddr(*ip, uint16_t(p->second)).str());
    }
    index.dump.push_back({{"service", key},
                          {"port", port.port()},
                          {"opaque", *opaque},
                          {"from", from},
                          {"endpoints", targets}});
  }

  using Index = std::unordered_map<IpAddr, ztunnel::MeshWorkload>;
  // (VIP, port) -> endpoints of the VIP's family
  using ServiceIndex = std::unordered_map<SockAddr, std::shared_ptr<const ztunnel::ServiceTarget>>;
  // (endpoint IP, target port); port 0: any port -> "ns/name"
  using HeadlessIndex = std::unordered_map<SockAddr, std::string>;
  // port in network order (as the engine asks)
  static SockAddr serviceKey(const IpAddr& ip, uint16_t port_net) {
    return SockAddr(ip, ntohs(port_net));
  }

  static std::optional<std::string> findEndpoint(const HeadlessIndex& index, const IpAddr& ip,
                                                 uint16_t port_net, bool any_port) {
    auto it = index.find(serviceKey(ip, port_net));
    if (it == index.end() && any_port) it = index.find(serviceKey(ip, 0));  // no ports
    if (it == index.end()) return std::nullopt;
    return it->second;
  }

  // Every TCP target port of every ready endpoint. An endpoint of two
  // Services on the same port belongs to the first by name (the view's
  // services are ordered), so the answer does not flap.
  static void indexEndpoints(const std::string& key, const api::v1::Service& svc,
                             HeadlessIndex& out) {
    for (const auto& ep : svc.endpoints()) {
      auto ip = IpAddr::parse(ep.ip());
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
  std::atomic<std::shared_ptr<const PortIndex>> ports_{std::make_shared<const PortIndex>()};
  std::atomic<std::shared_ptr<const ServiceIndex>> services_{
      std::make_shared<const ServiceIndex>()};
  std::atomic<std::shared_ptr<const HeadlessIndex>> headless_{
      std::make_shared<const HeadlessIndex>()};
  // Every Service's endpoints, for the Service an inbound connection is under.
  std::atomic<std::shared_ptr<const HeadlessIndex>> by_endpoint_{
      std::make_shared<const HeadlessIndex>()};
};

}  // namespace sluice::agent::discovery
