// Discovery views -> the MeshDirectory the proxy reads, PodManager's
// enrollment and any other reader of the whole view (telemetry's workload
// index); remembers where the view in use came from.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>

#include "agent/discovery/client.h"
#include "agent/discovery/mesh_directory.h"
#include "agent/pods/pod_manager.h"

namespace sluice::agent::wiring {

class DiscoveryBridge final : public discovery::Listener {
 public:
  // `on_view` (optional) gets every view in use, on the discovery thread.
  DiscoveryBridge(pods::PodManager& pods, discovery::MeshDirectory& directory,
                  std::function<void()> changed,
                  std::function<void(const discovery::View&)> on_view = {})
      : pods_(pods),
        directory_(directory),
        changed_(std::move(changed)),
        on_view_(std::move(on_view)) {}
  void onView(const discovery::View& view, uint64_t version) override {
    use(view, version, "live");
    changed_();
  }
  // At start, before the pods are re-adopted: the view the previous process
  // kept, so that the proxy routes by it from the first connection. Version
  // 0: not the control plane's word yet (pods it does not name are kept).
  void seed(const discovery::View& view) { use(view, 0, "persisted"); }
  // Where the view in use came from: "none" (outbound is refused),
  // "persisted" (the last process's, until the control plane answers), "live".
  std::string source() const {
    std::lock_guard lk(mu_);
    return source_;
  }

 private:
  void use(const discovery::View& view, uint64_t version, const char* source) {
    directory_.update(view);
    if (on_view_) on_view_(view);
    {
      std::lock_guard lk(mu_);
      services_ = view.services;
      source_ = source;
    }
    pods_.onWorkloads(view.workloads, version);
  }

  pods::PodManager& pods_;
  discovery::MeshDirectory& directory_;
  std::function<void()> changed_;
  std::function<void(const discovery::View&)> on_view_;
  mutable std::mutex mu_;
  std::map<std::string, api::v1::Service> services_;
  std::string source_ = "none";

 public:
  // The Services of the last view, for /config_dump.
  nlohmann::json servicesJson() const {
    std::lock_guard lk(mu_);
    nlohmann::json out = nlohmann::json::array();
    for (const auto& [key, svc] : services_) {
      nlohmann::json ports = nlohmann::json::array(), endpoints = nlohmann::json::array();
      for (const auto& p : svc.ports())
        ports.push_back({{"name", p.name()},
                         {"port", p.port()},
                         {"protocol", p.protocol()},
                         {"app_protocol", p.app_protocol()}});
      for (const auto& e : svc.endpoints()) {
        nlohmann::json targets = nlohmann::json::object();
        for (const auto& [name, port] : e.ports()) targets[name] = port;
        endpoints.push_back(
            {{"ip", e.ip()}, {"workload_uid", e.workload_uid()}, {"ports", targets}});
      }
      out.push_back({{"namespace", svc.namespace_()},
                     {"name", svc.name()},
                     {"vips", std::vector<std::string>(svc.vips().begin(), svc.vips().end())},
                     {"headless", svc.headless()},
                     {"ports", ports},
                     {"endpoints", endpoints}});
    }
    return out;
  }
};

}  // namespace sluice::agent::wiring
