// The io_uring engine. Each Worker owns a ring, its listeners (one per pod
// and port, SO_REUSEPORT, so a connection stays on the worker that accepted
// it) and its connections; control threads talk to workers only through a
// command queue + eventfd. Nothing on the data path takes a lock.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "sluice/common/log_limiter.h"
#include "sluice/common/unique_fd.h"
#include "sluice/ztunnel/engine.h"
#include "ztunnel/proxy/balancer.h"
#include "ztunnel/tls/tls.h"
#include "ztunnel/uring/ring.h"
#include "ztunnel/uring/timer.h"

namespace sluice::ztunnel::proxy {

// close() then sends RST: the peer learns of a reset, not an orderly end.
inline void setLinger0(int fd) {
  linger lg{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

class Worker;
class EngineImpl;
class HboneWorker;

struct PodState {
  PodSpec spec;          // spec.netns_fd == netns.get()
  std::string identity;  // SPIFFE URI
  UniqueFd netns;
  std::atomic<unsigned> connections{0};
  std::atomic<bool> removed{false};
};

// What connections() reports; shared between a worker and the registry.
struct Record {
  uint64_t id = 0;
  std::string direction, pod, source, destination, path, service;
  std::string source_principal, destination_principal;
  bool mutual_tls = false;
  int64_t start_unix_ms = 0;
  std::chrono::steady_clock::time_point start;
  std::atomic<uint64_t> sent{0}, received{0};
  std::atomic<bool> open{false};
};

class Registry {
 public:
  static constexpr size_t kClosedHistory = 1024;
  void add(const std::shared_ptr<Record>& r);
  void close(const std::shared_ptr<Record>& r, const std::string& reason);
  std::vector<ConnectionInfo> snapshot() const;

 private:
  static ConnectionInfo toInfo(const Record& r, const char* state);
  mutable std::mutex mu_;
  std::map<uint64_t, std::shared_ptr<Record>> open_;
  std::deque<ConnectionInfo> closed_;
};

struct Listener;
struct Conn;
enum class ListenerKind { kOutbound, kInbound, kHbone };

struct Stats {
  std::atomic<uint64_t> accepted{0}, active{0}, closed{0}, connect_failures{0}, limit_rejected{0},
      no_original_dst{0}, direct_refused{0}, accept_errors{0}, certificate_waits{0},
      hbone_opened{0}, hbone_accepted{0}, hbone_active{0}, hbone_handshake_failures{0},
      hbone_timeouts{0}, hbone_bad_requests{0}, hbone_refused{0}, hbone_pending_evicted{0},
      hbone_connect_retries{0}, no_certificate{0}, lb_picks{0}, lb_retries{0}, lb_no_endpoint{0},
      lb_ejections{0}, no_view{0};
};

// An outbound connection to a Service VIP: what is needed to pick another
// endpoint when the connect to the chosen one fails before any byte moved.
struct ServiceRoute {
  std::shared_ptr<const ServiceTarget> service;  // the view it was picked from
  sockaddr_in vip{};                             // what the app connected to
  sockaddr_in peer{};                            // the app's address (pod IP:port)
  sockaddr_in endpoint{};                        // the current attempt
  std::vector<sockaddr_in> tried;
  std::chrono::steady_clock::time_point attempt_start{};
  bool reported = false;  // the current attempt's outcome went to the balancer
};

class Worker {
 public:
  Worker(EngineImpl& engine, unsigned index);
  ~Worker();
  Result<void> start();
  void stop();
  // Runs fn on the worker thread (soon); thread-safe.
  void post(std::function<void()> fn);

  // --- worker thread only ---
  void addListener(UniqueFd fd, std::shared_ptr<PodState> pod, ListenerKind kind);
  void removePod(const std::string& uid);
  void onAccept(Listener& l, const io_uring_cqe& cqe);
  void onConn(Conn& c, int kind, const io_uring_cqe& cqe);
  // Routes an app connection accepted on pod's 15001 to `dst`: a Service
  // VIP (an endpoint is chosen), a meshed pod on this node (handoff), on
  // another node (HBONE), or anything else (passthrough). `route` carries a
  // retry's earlier attempts.
  void routeOutbound(const std::shared_ptr<PodState>& pod, UniqueFd client, const sockaddr_in& peer,
                     sockaddr_in dst, std::unique_ptr<ServiceRoute> route);
  // A Service connection's attempt ended: report it to the balancer.
  void lbResult(ServiceRoute& route, bool ok);
  // After a failed attempt (nothing sent to the app yet): retries on another
  // endpoint (soon, on this worker) and returns true, or returns false when
  // the attempts are used up (the caller resets the client).
  bool retryService(const std::shared_ptr<PodState>& pod, UniqueFd& client,
                    std::unique_ptr<ServiceRoute>& route, const std::string& why);
  void lbClosed(const ServiceRoute& route) { balancer_.closed(route.endpoint); }
  // Something waits on a short deadline (a certificate, a redial, an accept
  // backoff): run fineTick() soon, every kFineTick while it returns true.
  void wantFineTick() { fine_timer_.arm(*ring_, kFineTick); }
  static constexpr std::chrono::milliseconds kFineTick{10};

 private:
  void fineTick();
  void loop();
  void drainCommands();
  void armAccept(Listener& l);
  void armWake();
  void accepted(Listener& l, int fd);
  void startConn(const std::shared_ptr<PodState>& pod, UniqueFd client, UniqueFd upstream,
                 const sockaddr_in& peer, const sockaddr_in& dst, bool inbound,
                 std::shared_ptr<PodState> handoff, std::unique_ptr<ServiceRoute> route);
  void pump(Conn& c, int dir);
  void closeConn(Conn& c, bool reset, const std::string& reason);
  void finish(Conn& c);
  std::unique_ptr<HboneWorker> hbone_;  // when mTLS is on
  Balancer balancer_;
  uring::Timer fine_timer_{[this] { fineTick(); }};
  log::Limiter accept_log_, refused_log_, limit_log_, socket_log_, no_view_log_;
  std::chrono::steady_clock::time_point last_tick_{};
  unsigned ticks_ = 0;

  EngineImpl& engine_;
  unsigned index_;
  std::unique_ptr<uring::Ring> ring_;
  std::jthread thread_;
  std::atomic<bool> stopping_{false};
  UniqueFd wake_fd_;
  struct WakeOp : uring::Operation {
    Worker* w = nullptr;
    uint64_t value = 0;
    void complete(const io_uring_cqe&) override;
  } wake_op_;
  std::mutex commands_mu_;
  std::vector<std::function<void()>> commands_;
  std::list<std::unique_ptr<Listener>> listeners_;
  std::unordered_map<Conn*, std::unique_ptr<Conn>> conns_;
};

class EngineImpl final : public Engine {
 public:
  EngineImpl(const EngineConfig& config, OrigDstResolver& resolver, CredentialSource* credentials,
             MeshDirectory* directory);
  ~EngineImpl() override;
  Result<void> start();

  Result<void> addPod(const PodSpec& pod) override;
  void removePod(const std::string& uid) override;
  std::vector<ListenerInfo> listeners() const override;
  std::vector<ConnectionInfo> connections() const override { return registry_.snapshot(); }
  EngineStats stats() const override;
  void stop() override;

  const EngineConfig& config() const { return config_; }
  unsigned workerCount() const { return worker_count_; }
  OrigDstResolver& resolver() { return resolver_; }
  bool hbone() const { return credentials_ != nullptr; }
  CredentialSource* credentials() { return credentials_; }
  MeshDirectory* directory() { return directory_; }
  tls::Contexts& tls() { return *tls_; }
  std::string identityOf(const PodSpec& spec) const;
  // A connection record, registered as open; closeRecord also writes the access log line.
  std::shared_ptr<Record> openRecord(const char* direction, const std::string& pod,
                                     const std::string& source, const std::string& destination,
                                     const char* path);
  void closeRecord(const std::shared_ptr<Record>& rec, const std::string& reason);
  Registry& registry() { return registry_; }
  Stats& counters() { return stats_; }
  uint64_t nextId() { return next_id_.fetch_add(1) + 1; }
  using PodIndex =
      std::unordered_map<uint32_t, std::shared_ptr<PodState>>;  // by IPv4 (network order)
  // Enrolled pods of this node by IP; read lock-free by workers.
  std::shared_ptr<const PodIndex> localPods() const {
    return by_ip_.load(std::memory_order_acquire);
  }

 private:
  EngineConfig config_;
  OrigDstResolver& resolver_;
  CredentialSource* credentials_;
  MeshDirectory* directory_;
  std::unique_ptr<tls::Contexts> tls_;
  Registry registry_;
  Stats stats_;
  std::atomic<uint64_t> next_id_{0};
  std::vector<std::unique_ptr<Worker>> workers_;
  unsigned worker_count_ = 1;   // set before the first worker starts
  mutable std::mutex pods_mu_;  // control plane side only
  std::map<std::string, std::shared_ptr<PodState>> pods_;
  std::atomic<std::shared_ptr<const PodIndex>> by_ip_{std::make_shared<const PodIndex>()};
  void publishIndex();  // needs pods_mu_
  bool stopped_ = false;
};

}  // namespace sluice::ztunnel::proxy
