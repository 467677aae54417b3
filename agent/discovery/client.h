// The agent's control-plane client: one Discovery.Watch stream, reconnected
// with exponential backoff + jitter, resuming from the last applied version.
// The last good view is kept while the control plane is away.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "agent/rpc/call.h"
#include "sluice.pb.h"
#include "sluice/common/bearer_token.h"
#include "sluice/common/result.h"

namespace sluice::agent::discovery {

using Workload = sluice::api::v1::Workload;
using Service = sluice::api::v1::Service;

// The agent's whole view of the mesh, as the control plane last sent it.
struct View {
  std::map<std::string, Workload> workloads;  // by uid
  std::map<std::string, Service> services;    // by "namespace/name"
  // Applies one Watch message (a snapshot replaces everything). Returns
  // whether anything changed.
  bool apply(const sluice::api::v1::WatchResponse& resp);
};

class Listener {
 public:
  virtual ~Listener() = default;
  // Called on the client's thread after every applied message with the whole
  // view. Must not call back into the Client's stop()/destructor.
  virtual void onView(const View& view, uint64_t version) = 0;
};

struct ClientConfig {
  std::string target;  // host:port
  std::string node_name;
  std::string trust_anchor_pem;  // verifies the control plane's TLS certificate
  BearerToken token;             // node bootstrap / service account token (empty: none sent)
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{5000};
  // Nothing from the control plane for this long (it sends keepalive PINGs
  // every 20 s) and the stream is presumed dead and redialled.
  std::chrono::milliseconds idle_timeout{60000};
};

class Client {
 public:
  static Result<std::unique_ptr<Client>> create(const ClientConfig& config, Listener& listener);
  ~Client();  // cancels the stream and joins the thread

  bool connected() const { return connected_; }
  bool synced() const { return synced_; }
  uint64_t version() const { return version_; }
  std::string lastError() const;
  // When the stream to the control plane was last lost (connected() false);
  // epoch when it never was.
  std::chrono::system_clock::time_point disconnectedSince() const;

 private:
  Client(ClientConfig config, Listener& listener)
      : config_(std::move(config)), listener_(listener) {}
  void run();
  void setError(const std::string& e);

  ClientConfig config_;
  Listener& listener_;
  View view_;  // client thread only
  std::atomic<bool> connected_{false};
  std::atomic<bool> synced_{false};
  std::atomic<uint64_t> version_{0};
  std::atomic<bool> stopping_{false};
  mutable std::mutex mu_;  // guards last_error_, disconnected_since_
  std::condition_variable wake_;
  rpc::Canceller cancel_;
  std::string last_error_;
  std::chrono::system_clock::time_point disconnected_since_{};
  std::thread thread_;
};

}  // namespace sluice::agent::discovery
