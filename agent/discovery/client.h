// The agent's control-plane client: one Discovery.Watch stream, reconnected
// with exponential backoff + jitter, resuming from the last applied (epoch,
// version). The last good view is kept while the control plane is away, and
// written to a file (ClientConfig::view_file) so that a restarted agent has
// it before the control plane answers (loadView).
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
#include "common/policy/policy_set.h"
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
  // The policies that can apply to this node's workloads: the last complete
  // set that compiled (WatchResponse.policies replaces it; a set that does
  // not compile is logged, naming the object, and ignored), and the message
  // it came from (kept in the persisted view). Never null.
  std::shared_ptr<const policy::PolicySet> policies = policy::PolicySet::empty();
  sluice::api::v1::PolicySet policies_message;
  uint64_t policy_sets_rejected = 0;  // sets that did not compile (this process)
  std::string policy_error;           // why the last one was rejected; empty: it was not
  // Applies one Watch message (a snapshot replaces everything). Returns
  // whether anything changed.
  bool apply(const sluice::api::v1::WatchResponse& resp);

 private:
  bool applyPolicies(const sluice::api::v1::PolicySet& set);
};

// A view as it was written to disk: the whole view as one snapshot message
// (a serialized WatchResponse, full=true, with its version and epoch).
struct PersistedView {
  View view;
  uint64_t version = 0;
  uint64_t epoch = 0;
};
sluice::api::v1::WatchResponse snapshotOf(const View& view, uint64_t version, uint64_t epoch);
// Writes atomically (temporary file + rename): a crash leaves the old file or
// the new one, never a mix.
Result<void> saveView(const std::string& path, const std::string& bytes);
// Fails with errno ENOENT when there is no file; any other failure means the
// file is unusable (and should be ignored, not trusted in part).
Result<PersistedView> loadView(const std::string& path);

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
  // Where the last good view is kept across restarts (empty: nowhere). It is
  // written after a change, at most once per persist_interval, by a thread of
  // its own: the whole view is serialized each time, so a burst of deltas
  // costs one write, not one per message.
  std::string view_file;
  std::chrono::milliseconds persist_interval{1000};
};

class Client {
 public:
  static Result<std::unique_ptr<Client>> create(const ClientConfig& config, Listener& listener);
  ~Client();  // cancels the stream and joins the thread

  bool connected() const { return connected_; }
  // A view from the control plane has been applied (on this process's
  // stream; a view loaded from disk does not count).
  bool synced() const { return synced_; }
  uint64_t version() const { return version_; }
  uint64_t epoch() const { return epoch_; }
  std::string lastError() const;
  // When the stream to the control plane was last lost (connected() false);
  // epoch when it never was.
  std::chrono::system_clock::time_point disconnectedSince() const;
  // From now on the view is no longer written to view_file (an upgrade: the
  // successor owns the state dir; this agent keeps following views only to
  // enforce policy on what it drains).
  void stopPersisting();

 private:
  Client(ClientConfig config, Listener& listener)
      : config_(std::move(config)), listener_(listener) {}
  void run();
  void persistLoop();
  void setError(const std::string& e);

  ClientConfig config_;
  Listener& listener_;
  // Changed by the client thread only, under view_mu_; read by it without the
  // lock, and by the persister under it.
  View view_;
  std::mutex view_mu_;
  std::atomic<bool> connected_{false};
  std::atomic<bool> synced_{false};
  std::atomic<uint64_t> version_{0};
  std::atomic<uint64_t> epoch_{0};
  std::atomic<bool> stopping_{false};
  mutable std::mutex mu_;  // guards last_error_, disconnected_since_, view_dirty_
  std::condition_variable wake_;
  std::condition_variable persist_wake_;
  bool view_dirty_ = false;    // view_ changed since the persister last wrote it
  bool persist_stop_ = false;  // set once the client thread has ended
  bool persist_off_ = false;   // stopPersisting(): nothing more is written
  rpc::Canceller cancel_;
  std::string last_error_;
  std::chrono::system_clock::time_point disconnected_since_{};
  std::jthread thread_;
  std::jthread persister_;
};

}  // namespace sluice::agent::discovery
