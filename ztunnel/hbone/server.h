// HBONE, server side: one worker's share of the TCP connections accepted
// on its pods' 15008 listeners. Each is a tunnel from another node; each
// CONNECT on it asks the authorization hook, then connects to the app in the
// pod (with the client pod's IP as source). Tunnels still in their handshake
// are bounded per pod and per node (the oldest goes first). Worker thread
// only.
#pragma once

#include <netinet/in.h>

#include <chrono>
#include <memory>
#include <string>

#include "sluice/common/unique_fd.h"
#include "sluice/ztunnel/engine.h"
#include "ztunnel/proxy/context.h"
#include "ztunnel/proxy/pod.h"
#include "ztunnel/tls/tls.h"

namespace sluice::ztunnel::hbone {

class Server {
 public:
  using Clock = std::chrono::steady_clock;
  Server(proxy::WorkerContext& ctx, CredentialSource& credentials, tls::Contexts& tls);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // A TCP connection accepted on pod's 15008 listener.
  void accept(const std::shared_ptr<proxy::PodState>& pod, UniqueFd fd, const SockAddr& peer);
  // Closes the oldest tunnel still in its handshake (to free a descriptor);
  // returns whether there was one.
  bool evictOldestPending(const char* why);

  void removePod(const std::string& uid);
  void shutdown();
  void goAway();  // every tunnel: Tunnel::goAway (an upgrade)
  bool idle() const;
  size_t receiveBufferBytes() const;  // held by its tunnels (0 when all are idle)
  void tick(Clock::time_point now);
  bool fineTick(Clock::time_point now);  // tunnels waiting for their pod's certificate

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice::ztunnel::hbone
