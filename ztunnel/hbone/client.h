// HBONE, client side: one worker's outbound tunnels, pooled per (source
// pod, destination identity, destination IP) — the source pod, because a
// tunnel's socket lives in its netns and leaves with its IP, which is what
// the destination shows the app. Every app connection is one CONNECT
// stream. Worker thread only.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "sluice/ztunnel/engine.h"
#include "ztunnel/proxy/attempt.h"
#include "ztunnel/proxy/context.h"
#include "ztunnel/tls/tls.h"

namespace sluice::ztunnel::hbone {

using Clock = std::chrono::steady_clock;

class Client {
 public:
  Client(proxy::WorkerContext& ctx, CredentialSource& credentials, tls::Contexts& tls);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // An app connection to `target`, a meshed workload on another node. A
  // connection whose pod has no certificate yet waits for it (bounded by
  // certificate_wait). Failures go to the attempt (a Service moves on to
  // another endpoint) or reset the app's socket.
  void open(std::unique_ptr<proxy::Attempt> attempt, const MeshWorkload& target);

  void removePod(const std::string& uid);  // resets its tunnels, streams and waiters
  void shutdown();                         // resets everything (engine stop)
  void goAway();                           // every tunnel: Tunnel::goAway (an upgrade)
  bool idle() const;                       // nothing left that the ring may complete
  size_t receiveBufferBytes() const;       // held by its tunnels (0 when all are idle)
  void tick(Clock::time_point now);        // about once a second: deadlines, keepalive, idle
  bool fineTick(Clock::time_point now);    // certificates and redials; true: call again soon

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice::ztunnel::hbone
