// The plaintext upstream: an app socket relayed to an upstream socket by two
// relay::Pipes, after a connect bounded by connect_timeout. Serves outbound
// passthrough, the same-node handoff and inbound connections from outside
// the mesh (15006). Worker thread only.
#pragma once

#include <memory>
#include <unordered_map>
#include <vector>

#include "sluice/common/unique_fd.h"
#include "ztunnel/proxy/attempt.h"
#include "ztunnel/proxy/context.h"
#include "ztunnel/proxy/pod.h"
#include "ztunnel/proxy/records.h"
#include "ztunnel/relay/pipe.h"

namespace sluice::ztunnel::proxy {

class PlainConnection;

class PlainUpstream {
 public:
  explicit PlainUpstream(WorkerContext& ctx);
  ~PlainUpstream();

  // Relays `client` to `dst` through `upstream` (unconnected, made in the
  // right netns). `live` is the record, filled in but not opened yet.
  // `pod` is the listener's pod; `target` the destination pod of a handoff.
  // An outbound connection carries its attempt (a Service may retry).
  void open(std::shared_ptr<LiveRecord> live, std::shared_ptr<PodState> pod,
            std::shared_ptr<PodState> target, UniqueFd client, Upstream upstream,
            const SockAddr& dst, std::unique_ptr<Attempt> attempt, SourceShare share = {});

  // An upgrade: continues a connection frozen by the predecessor (`pod`,
  // `target` are this engine's; the record is filled in from it).
  void adopt(ConnectionFd c, std::shared_ptr<PodState> pod, std::shared_ptr<PodState> target);
  // An upgrade: freezes every relaying connection (Engine::exportConnections);
  // returns how many. reap() moves each into frozen() once the ring is done.
  size_t freeze();
  std::vector<ConnectionFd>& frozen() { return frozen_; }
  size_t freezing() const { return freezing_; }  // frozen, not reaped yet

  void removePod(const std::string& uid);  // resets its connections (either end)
  // Adds what each spliced pair carried since the last call to its record.
  void countSpliced();
  void tick();      // about once a second: each pipe's tick (Pipe::tick)
  void shutdown();  // resets everything
  void reap();      // frees closed connections the ring is done with
  bool idle() const { return conns_.empty(); }

 private:
  friend class PlainConnection;
  WorkerContext& ctx_;
  std::unordered_map<PlainConnection*, std::unique_ptr<PlainConnection>> conns_;
  std::vector<PlainConnection*> closing_;
  std::vector<ConnectionFd> frozen_;
  size_t freezing_ = 0;
};

}  // namespace sluice::ztunnel::proxy
