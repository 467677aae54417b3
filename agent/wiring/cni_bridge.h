// CNI requests -> PodManager: ADD enrolls (waiting for the control plane
// to know the pod), DEL unenrolls, CHECK compares.
#pragma once

#include <cerrno>
#include <chrono>
#include <functional>

#include "agent/cni/server.h"
#include "agent/pods/pod_manager.h"
#include "sluice/common/addr.h"
#include "sluice/common/ip6.h"

namespace sluice::agent::wiring {

class CniBridge final : public cni::Handler {
 public:
  CniBridge(pods::PodManager& pods, std::chrono::milliseconds wait, std::function<void()> changed)
      : pods_(pods), wait_(wait), changed_(std::move(changed)) {}

  cni::CniReply handle(const cni::CniRequest& req) override {
    cni::CniReply reply;
    if (req.command == "ADD") {
      pods::PodRef ref{req.pod_uid,
                       req.pod_namespace,
                       req.pod_name,
                       req.container_id,
                       req.netns,
                       req.ifname.empty() ? "eth0" : req.ifname,
                       0,
                       {}};
      // The first address of each family (a runtime lists the primary first).
      for (const auto& ip : req.ips) {
        if (auto a = parseIp4(ip); a && ref.ip4 == 0) ref.ip4 = *a;
        if (auto a6 = parseIp6(ip); a6 && ref.ip6.empty()) ref.ip6 = formatIp6(*a6);
      }
      auto r = pods_.add(ref, wait_);
      reply.ok = r.has_value();
      if (r)
        reply.enrolled = *r;
      else
        reply.error = r.error().describe();
      // An upgrade's handover: the runtime retries, and the successor answers.
      if (!r && r.error().code == EAGAIN) reply.code = sluice::cni::kReplyTryAgainLater;
    } else if (req.command == "DEL") {
      pods_.remove(req.container_id, req.pod_uid, req.netns);
      reply.ok = true;
    } else if (req.command == "CHECK") {
      auto r = pods_.check(req.container_id, req.pod_uid);
      reply.ok = r.has_value();
      if (!r) reply.error = r.error().describe();
      if (!r && !pods_.knows(req.container_id)) reply.code = sluice::cni::kReplyUnknownContainer;
    } else {
      reply.ok = false;
      reply.error = "unknown command " + req.command;
    }
    if (req.command != "CHECK") changed_();
    return reply;
  }

 private:
  pods::PodManager& pods_;
  std::chrono::milliseconds wait_;
  std::function<void()> changed_;
};

}  // namespace sluice::agent::wiring
