// An outbound app connection on its way to a destination: the client socket,
// where it came from and where it goes; for a Service VIP also the endpoint
// chosen and the way to another. Upstreams (the plaintext relay, HBONE)
// report the outcome to the attempt; only the router acts on it, so no
// upstream knows another or the router.
#pragma once

#include <netinet/in.h>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/common/unique_fd.h"
#include "sluice/ztunnel/engine.h"
#include "ztunnel/proxy/pod.h"

namespace sluice::ztunnel::proxy {

class Attempt;

// Implemented by the router.
class AttemptSink {
 public:
  virtual void attemptResult(Attempt& a, bool ok) = 0;  // the balancer learns of it
  virtual void attemptReleased(Attempt& a) = 0;         // the endpoint is free again
  // Takes `a` (and its client socket) to try another endpoint, or leaves it
  // and returns false when no attempt is left.
  virtual bool attemptRetry(std::unique_ptr<Attempt>& a, std::string_view why) = 0;

 protected:
  ~AttemptSink() = default;
};

class Attempt {
 public:
  Attempt(std::shared_ptr<PodState> pod, UniqueFd client, const SockAddr& peer, const SockAddr& dst)
      : pod(std::move(pod)), client(std::move(client)), peer(peer), dst(dst) {}
  ~Attempt() {
    if (sink_ && picked_) sink_->attemptReleased(*this);
  }
  Attempt(const Attempt&) = delete;
  Attempt& operator=(const Attempt&) = delete;

  std::shared_ptr<PodState> pod;  // the source pod
  UniqueFd client;                // the app's socket
  SockAddr peer;                  // the app's address (pod IP:port)
  SockAddr dst;                   // where it goes (a Service: the endpoint picked)

  // --- Service VIPs ---
  bool isService() const { return service_ != nullptr; }
  // "" when neither a Service VIP nor an endpoint of a headless Service.
  const std::string& serviceName() const;
  const std::shared_ptr<const ServiceTarget>& service() const { return service_; }
  const SockAddr& vip() const { return vip_; }
  const std::vector<SockAddr>& tried() const { return tried_; }
  std::chrono::steady_clock::time_point attemptStart() const { return attempt_start_; }

  // The connect latency starts now (not before a certificate wait).
  void restartClock() { attempt_start_ = std::chrono::steady_clock::now(); }
  // The destination answered: a Service endpoint counts as healthy.
  void succeeded() {
    if (sink_ && picked_ && !reported_) {
      reported_ = true;
      sink_->attemptResult(*this, true);
    }
  }
  // Failed before a byte was relayed. A Service connection moves on to
  // another endpoint: returns true and `a` is gone (its client with it);
  // otherwise false and the caller resets the client.
  static bool retry(std::unique_ptr<Attempt>& a, std::string_view why) {
    if (!a || !a->sink_ || !a->picked_ || !a->client) return false;
    if (!a->reported_) {
      a->reported_ = true;
      a->sink_->attemptResult(*a, false);
    }
    return a->sink_->attemptRetry(a, why);
  }

  // --- router only ---
  void setService(AttemptSink* sink, std::shared_ptr<const ServiceTarget> svc,
                  const SockAddr& vip) {
    sink_ = sink;
    service_ = std::move(svc);
    vip_ = vip;
  }
  void pick(const SockAddr& endpoint) {
    if (sink_ && picked_) sink_->attemptReleased(*this);
    dst = endpoint;
    tried_.push_back(endpoint);
    picked_ = true;
    reported_ = false;
    restartClock();
  }
  void unpick() { picked_ = false; }  // the endpoint was released by the router
  // dst is an endpoint of this headless Service: named, not balanced.
  void setHeadless(std::string name) { headless_ = std::move(name); }

 private:
  AttemptSink* sink_ = nullptr;
  std::shared_ptr<const ServiceTarget> service_;
  SockAddr vip_;
  std::vector<SockAddr> tried_;
  std::string headless_;
  std::chrono::steady_clock::time_point attempt_start_{};
  bool picked_ = false;    // dst holds a balancer slot (released once)
  bool reported_ = false;  // the current endpoint's outcome went to the balancer
};

inline const std::string& Attempt::serviceName() const {
  return service_ ? service_->name : headless_;
}

}  // namespace sluice::ztunnel::proxy
