// The engine: the pods of this node, their listeners (made here, in the
// pod's netns, then handed to the workers), and the workers. Control-thread
// side only; everything per connection happens on a worker (worker.h).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "sluice/ztunnel/engine.h"
#include "ztunnel/proxy/context.h"
#include "ztunnel/proxy/pod.h"
#include "ztunnel/proxy/records.h"
#include "ztunnel/proxy/worker.h"
#include "ztunnel/tls/tls.h"

namespace sluice::ztunnel::proxy {

// Upstream sockets inside the pod's netns (inpod::upstreamSocket).
class NetnsSockets final : public SocketFactory {
 public:
  // Keeps the calling thread's netns open: the workers' home (they are
  // started from this thread and never stay in another netns).
  Result<void> init();
  Result<Upstream> upstream(const PodState& pod, uint32_t mark, int family, const IpAddr& bind,
                            bool may_defer) override;

 private:
  Result<UniqueFd> take(const PodState& pod, int family);
  // A socket bound to `bind` at a port no plaintext inbound connection of
  // the pod from `bind` holds (PodState::plain_clients), ready.
  Result<Upstream> clearOfClients(const PodState& pod, uint32_t mark, int family,
                                  const IpAddr& bind);
  UniqueFd home_;
};

class EngineImpl final : public Engine {
 public:
  EngineImpl(const EngineConfig& config, OrigDstResolver& resolver, CredentialSource* credentials,
             MeshDirectory* directory, EngineHooks hooks);
  ~EngineImpl() override;
  Result<void> start();

  Result<void> addPod(const PodSpec& pod) override;
  void removePod(const std::string& uid) override;
  std::vector<ListenerInfo> listeners() const override;
  std::vector<ConnectionRecord> connections() const override {
    countSpliced();
    return records_.snapshot();
  }
  void countSpliced() const override;
  size_t resetConnections(uint64_t id, const std::string& pod) override;
  EngineStats stats() const override { return records_.counters().snapshot(); }
  void reauthorize() override;
  std::vector<ListenerFd> exportListeners() override;
  void adoptListeners(std::vector<ListenerFd> listeners) override;
  void stopAccepting() override;
  size_t drain(std::chrono::milliseconds deadline) override;
  std::vector<ConnectionFd> exportConnections() override;
  size_t adoptConnections(std::vector<ConnectionFd> connections) override;
  void stop() override;

 private:
  bool hbone() const { return credentials_ != nullptr; }
  bool wanted(const PodSpec& spec, ListenerKind kind) const;
  void publishIndex();  // needs pods_mu_
  // Runs fn(worker) on every worker and waits (bounded) until all are done;
  // on a stopped engine (no workers) it returns at once.
  void onEveryWorker(const std::function<void(Worker&)>& fn) const;

  EngineConfig config_;
  OrigDstResolver& resolver_;
  CredentialSource* credentials_;
  MeshDirectory* directory_;
  EngineHooks hooks_;
  std::unique_ptr<tls::Contexts> tls_;
  Records records_;
  NetnsSockets sockets_;
  PodIndexRef by_ip_{std::make_shared<const PodIndex>()};
  std::unique_ptr<EngineShared> shared_;
  // Shared by onEveryWorker, exclusive while stop() ends the workers: a
  // call racing stop() finds either running workers or none. addPod and
  // adoptConnections read workers_ under pods_mu_ after checking stopped_.
  mutable std::shared_mutex workers_mu_;
  std::vector<std::unique_ptr<Worker>> workers_;
  mutable std::mutex pods_mu_;  // control plane side only
  std::map<std::string, std::shared_ptr<PodState>> pods_;
  // Handed over by the predecessor, by pod uid, until addPod takes them.
  std::map<std::string, std::vector<std::pair<UniqueFd, ListenerKind>>> adopted_;
  bool stopped_ = false;
};

}  // namespace sluice::ztunnel::proxy
