// Whether the node itself opened a TCP connection: a socket of the agent's
// network namespace (the node's: the agent runs with hostNetwork) with
// exactly that 4-tuple, looked up with NETLINK_SOCK_DIAG. It tells a kubelet
// probe, whose socket is the node's own, from a connection the node only
// forwarded with its own address as the source (a NodePort's or a
// LoadBalancer's, masqueraded by kube-proxy): only the first is a probe, as
// Istio ambient's `-m owner --socket-exists` rule tells them apart.
#pragma once

#include <memory>
#include <mutex>

#include "sluice/common/addr.h"
#include "sluice/common/result.h"
#include "sluice/common/unique_fd.h"

namespace sluice::agent::authz {

class NodeSockets {
 public:
  // A sock_diag socket of the calling thread's network namespace; fails
  // when the kernel cannot answer a TCP socket lookup (checked once here).
  static Result<std::unique_ptr<NodeSockets>> open();

  // Whether a TCP socket here (any state, TIME_WAIT included) has local
  // address `local` and remote address `remote`. Any thread. A failed
  // query answers false: the connection is then not taken for a probe.
  bool has(const SockAddr& local, const SockAddr& remote);

 private:
  explicit NodeSockets(UniqueFd fd) : fd_(std::move(fd)) {}
  // 1: found, 0: not found, -errno: the query failed.
  int query(const SockAddr& local, const SockAddr& remote);

  std::mutex mu_;  // one request and its answer at a time on fd_
  UniqueFd fd_;
  uint32_t seq_ = 0;
};

}  // namespace sluice::agent::authz
