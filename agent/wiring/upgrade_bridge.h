// The running agent's side of an upgrade (upgrade/handover.h): what
// freezing, releasing and thawing mean for its parts. The hooks run on the
// handover thread; the agent guards the parts they touch with a mutex.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "agent/upgrade/handover.h"
#include "sluice/common/log.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::wiring {

class UpgradeBridge final : public upgrade::HandoverServer::Handler {
 public:
  struct Hooks {
    std::function<void()> freeze;   // no enrolment changes: CNI server and control plane client off
    std::function<void()> thaw;     // both on again
    std::function<void()> release;  // after the engine stopped accepting: admin and metrics off
    // Where the drain's observations go (none: the successor did not ask).
    std::function<void(UniqueFd)> observations;
  };
  UpgradeBridge(ztunnel::Engine& engine, Hooks hooks) : engine_(engine), hooks_(std::move(hooks)) {}

  Result<std::vector<ztunnel::ListenerFd>> freeze() override {
    hooks_.freeze();
    return engine_.exportListeners();
  }
  void release() override {
    engine_.stopAccepting();
    hooks_.release();
  }
  std::vector<ztunnel::ConnectionFd> exportConnections() override {
    return engine_.exportConnections();
  }
  void observationsTo(UniqueFd sock) override {
    if (hooks_.observations) hooks_.observations(std::move(sock));
  }
  void thaw(const std::string& why) override {
    log::get("upgrade")->warn("the handover did not finish ({}); carrying on", why);
    hooks_.thaw();
  }

 private:
  ztunnel::Engine& engine_;
  Hooks hooks_;
};

}  // namespace sluice::agent::wiring
