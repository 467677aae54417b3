// What a worker lends the parts that run on its thread (router, upstreams,
// HBONE client and server): its ring, the engine's records and settings,
// and the hooks. Worker thread only.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "sluice/common/log_limiter.h"
#include "sluice/common/result.h"
#include "sluice/common/unique_fd.h"
#include "sluice/ztunnel/engine.h"
#include "ztunnel/proxy/pod.h"
#include "ztunnel/proxy/records.h"
#include "ztunnel/uring/ops.h"
#include "ztunnel/uring/ring.h"

namespace sluice::ztunnel::proxy {

// An unconnected upstream socket and what its connect does first.
struct Upstream {
  UniqueFd fd;
  uring::SocketSetup setup;  // setup.pending: uring::Connect queues it ahead of the connect
};

// Sockets for upstream connections, made inside a pod's netns (the engine's
// is inpod::upstreamSocket); tests without root make plain ones.
class SocketFactory {
 public:
  // An unconnected TCP socket of `family` (AF_INET, AF_INET6) in pod's
  // netns carrying `mark`; bound to `bind` (transparent) unless empty.
  // may_defer: the factory may leave the marking and binding to the
  // connect (a pending setup); else the socket is ready as returned.
  virtual Result<Upstream> upstream(const PodState& pod, uint32_t mark, int family,
                                    const IpAddr& bind, bool may_defer) = 0;

 protected:
  ~SocketFactory() = default;
};

// The first descriptor number at which a new connection is refused:
// RLIMIT_NOFILE less `reserve` (at most a quarter of the limit). The kernel
// gives the lowest free number, so a socket at or above it means at most
// the reserve is left.
int descriptorCeiling(unsigned reserve);

struct WorkerContext {
  const EngineConfig& config;
  uring::Ring& ring;
  Records& records;
  unsigned worker = 0;   // this worker's index
  unsigned workers = 1;  // how many there are (bounds are shared out)
  SocketFactory& sockets;
  InboundAuthorizer* authorizer = nullptr;
  uint16_t hbone_port = 15008;  // SLUICE_HBONE_PORT; tests run tunnels elsewhere
  // Something waits on a short deadline (a certificate, a redial, a backoff):
  // the worker calls its parts' fineTick() every ~10 ms until none waits.
  std::function<void()> want_fine_tick;
  MeshDirectory* directory = nullptr;  // null: no view (HTTP inspection uses the defaults)
  SpliceControl* splice = nullptr;     // null: no same-node splice

  // Refusals by the authorization hook are logged at most once a second
  // per worker (each is counted and has its access log line).
  log::Limiter denied_log{};
  // CONNECTs the destination refused: at most once a second per worker too.
  log::Limiter refused_log{};
  // HBONE tunnels nghttp2 ended with an error GOAWAY of its own (a flood).
  log::Limiter goaway_log{};
  // Read once, when the worker starts (the agent raises its limit first).
  int descriptor_ceiling = descriptorCeiling(config.descriptor_reserve);
  log::Limiter descriptor_log{};

  Counters& counters() { return records.counters(); }
  // Whether socket `fd` (just accepted or made) is within the descriptor
  // reserve; if so counts proxy.limit_rejected and logs (rate limited) that
  // `what` of pod `pod` is refused. The caller refuses it.
  bool withinDescriptorReserve(int fd, const std::string& pod, const char* what);
  // The one place the authorization hook is asked (15006, 15008 CONNECT,
  // same-node handoff, reauthorize): about `live`'s inboundRequestOf. On a
  // deny counts proxy.denied, logs (rate limited) and returns why (for the
  // close record); nullopt: allowed (no authorizer allows everything). What
  // a deny does to the connection (reset, 401, abort) stays with the caller.
  std::optional<std::string> denied(const LiveRecord& live, bool recheck = false);
  // An inbound connection to pod address `dst`: the Service it is recorded
  // under (MeshDirectory::endpointService), or "".
  std::string inboundService(const SockAddr& dst) const {
    if (!directory) return {};
    return directory->endpointService(dst.ip(), dst.portNet()).value_or(std::string());
  }
};

// close() then sends RST: the peer learns of a reset, not an orderly end.
void setLinger0(int fd);
// What the app has sent on fd so far (up to kPeekMax bytes), left in the
// socket; empty when nothing is there yet (or on an error).
inline constexpr size_t kPeekMax = 16 * 1024;
std::string peekPending(int fd);
// An upstream socket to an app is born with linger 0, as an accepted one
// (Worker::accepted): in its connect's ring chain when its setup is
// pending there (no system call, and the socket is the connection's from
// then on), else now.
void appSocketLinger0(Upstream& sock);

}  // namespace sluice::ztunnel::proxy
