// One worker thread: its io_uring ring, its listeners (one per pod and port),
// and the parts that run on its thread — the router, the plaintext upstream
// and the HBONE client and server. Control threads reach it only through
// post() (a command queue + eventfd); nothing on the data path takes a lock.
#pragma once

#include <atomic>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "sluice/common/unique_fd.h"
#include "sluice/ztunnel/engine.h"
#include "ztunnel/proxy/listener.h"
#include "ztunnel/proxy/pod.h"
#include "ztunnel/proxy/records.h"
#include "ztunnel/tls/tls.h"
#include "ztunnel/uring/ring.h"

namespace sluice::ztunnel::proxy {

class CpuWait;

class SocketFactory;

// What every worker shares, owned by the engine.
struct EngineShared {
  const EngineConfig& config;
  Records& records;
  OrigDstResolver& resolver;
  SocketFactory& sockets;
  const PodIndexRef& local_pods;
  unsigned workers = 1;
  MeshDirectory* directory = nullptr;
  CredentialSource* credentials = nullptr;  // with tls: HBONE on
  tls::Contexts* tls = nullptr;
  InboundAuthorizer* authorizer = nullptr;
  SpliceControl* splice = nullptr;
};

class Worker final : public Listener::Handler {
 public:
  Worker(const EngineShared& shared, unsigned index);
  ~Worker();
  Result<void> start();
  void stop();
  // Runs fn on the worker thread (soon); thread-safe.
  void post(std::function<void()> fn);

  // --- worker thread only (through post) ---
  void addListener(UniqueFd fd, std::shared_ptr<PodState> pod, ListenerKind kind);
  void removePod(const std::string& uid);
  void reauthorize();  // resets open connections the authorizer now denies
  // Resets the open connection `id` (non-zero) or those of `pod` (ns/name,
  // either end); returns how many (Engine::resetConnections).
  size_t resetOpen(uint64_t id, const std::string& pod, const std::string& detail);
  void countSpliced();  // Engine::countSpliced
  // Upgrades (Engine::exportListeners, stopAccepting, drain).
  void exportListeners(std::vector<ListenerFd>& out) const;
  void stopAccepting();
  // Listeners told to stop whose accept the kernel has not ended yet.
  size_t acceptsInFlight() const;
  void goAway();  // GOAWAY on every HBONE tunnel
  // Plaintext connections (Engine::exportConnections, adoptConnections).
  size_t freezePlain();
  // Moves the frozen connections the ring is done with into `out`; returns
  // how many are still freezing.
  size_t takeFrozen(std::vector<ConnectionFd>& out);
  void adoptPlain(ConnectionFd c, std::shared_ptr<PodState> pod, std::shared_ptr<PodState> target);
  // Closes every open connection of this worker; returns how many.
  size_t abortOpen(const std::string& detail);

 private:
  struct Parts;
  void loop();
  void tick(std::chrono::steady_clock::time_point now);
  void fineTick();
  void gateBusyPoll(std::chrono::steady_clock::time_point now);
  void onWake(const io_uring_cqe&);
  void drainCommands();
  void reap();
  bool idle() const;
  // Listener::Handler
  void accepted(Listener& l, UniqueFd fd) override;
  bool outOfDescriptors(Listener& l) override;
  void backingOff(Listener& l) override;

  const EngineShared& shared_;
  unsigned index_;
  std::unique_ptr<uring::Ring> ring_;
  std::unique_ptr<Parts> parts_;  // made on the worker thread, after the ring
  std::jthread thread_;
  std::atomic<bool> stopping_{false};
  UniqueFd wake_fd_;
  uint64_t wake_value_ = 0;
  uring::Op<&Worker::onWake> wake_{this};
  uring::Timer fine_timer_{[this] { fineTick(); }};
  std::mutex commands_mu_;
  std::vector<std::function<void()>> commands_;
  std::list<std::unique_ptr<Listener>> listeners_;
  std::vector<Listener*> backing_off_;
  std::chrono::steady_clock::time_point last_tick_{};
  uint64_t ring_errors_seen_ = 0;
  uint64_t poll_hits_seen_ = 0, poll_misses_seen_ = 0;  // the ring's, counted so far
  std::unique_ptr<CpuWait> cpu_wait_;  // with busy polling: gates it (gateBusyPoll)
  std::chrono::steady_clock::time_point last_poll_gate_{};
  unsigned ticks_ = 0;
  log::Limiter ring_log_, limit_log_;
};

}  // namespace sluice::ztunnel::proxy
