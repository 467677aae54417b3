// The Kubernetes source of truth: list + watch of Namespaces, Pods, Services
// and EndpointSlices (discovery.k8s.io/v1), and the policy resources
// (policy_resources.h), one thread per resource, into the model Store. A
// policy resource whose CRD is not installed (404) counts as empty. Watches resume from the last
// resourceVersion (bookmarks keep it fresh); 410 Gone relists; a list whose continue token expires
// (410 on a later page) starts over from the first page, and only a complete
// list replaces what is served; a dropped stream reconnects with exponential
// backoff and jitter (at least the Retry-After of a 429 or 5xx); a server that
// hangs is noticed by request and watch timeouts; a malformed event is logged
// and skipped.
// Memory: the parsed model objects of the cluster, nothing more (no raw JSON
// is kept). Changes reach the Store in batches (at most every flush_delay).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "controlplane/kube/client.h"
#include "controlplane/kube/decode.h"
#include "controlplane/model/store.h"

namespace sluice::controlplane::kube {

struct SourceOptions {
  std::chrono::milliseconds initial_backoff{250};
  std::chrono::milliseconds max_backoff{30000};
  int watch_timeout_seconds = 300;  // the server ends a watch after this; we re-watch
  // A list page not answered within request_timeout, or a watch still open
  // watch_grace after its timeoutSeconds, means the server hangs: the
  // request is dropped and retried (the view served meanwhile stays).
  std::chrono::milliseconds request_timeout{30000};
  std::chrono::milliseconds watch_grace{30000};
  std::chrono::milliseconds flush_delay{100};
  int page_size = 500;
  // Also read security.istio.io/v1 AuthorizationPolicy and PeerAuthentication.
  bool watch_istio_policies = false;
};

class Source {
 public:
  static constexpr const char* kSourceName = "kubernetes";

  static Result<std::unique_ptr<Source>> create(Client client, model::Store& store,
                                                SourceOptions options = {});
  ~Source();

  // Every resource has been listed once and the Store holds the result.
  bool synced() const;

  struct Status {
    std::string resource_version;
    uint64_t lists = 0, watches = 0, events = 0, bookmarks = 0, malformed = 0;
    uint64_t expired = 0;  // 410 Gone: a watch's resourceVersion or a list's continue token
    std::string last_error;
  };
  Status status(const std::string& kind) const;  // "Pod", "Namespace", ...
  // For kube-authenticated agents: the node a pod (by uid) is scheduled on.
  std::string nodeOfPod(const std::string& uid) const;

 private:
  struct Resource;
  Source(Client client, model::Store& store, SourceOptions options);
  void run(Resource& r);
  bool list(Resource& r);
  // Returns false when the resource must be relisted.
  bool watch(Resource& r, bool& got_any);
  bool apply(Resource& r, WatchEvent& ev);
  void flushLoop();
  void markDirty();
  void setError(Resource& r, const std::string& e);
  void httpError(Resource& r, const std::string& what, const Response& resp);
  bool sleepFor(std::chrono::milliseconds d);  // false when stopping

  Client client_;
  model::Store& store_;
  SourceOptions options_;
  std::vector<std::unique_ptr<Resource>> resources_;
  mutable std::mutex mu_;  // guards the caches and statuses
  std::condition_variable cv_;
  bool dirty_ = false;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> synced_{false};
  std::vector<std::jthread> threads_;
};

}  // namespace sluice::controlplane::kube
