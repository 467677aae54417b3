#include "agent/telemetry/tap.h"

#include <strings.h>

#include <algorithm>
#include <cassert>
#include <cerrno>

#include "agent/telemetry/peers.h"
#include "sluice/common/fmt.h"

namespace sluice::agent::telemetry {

namespace {

// One worker's queue for one subscriber: the worker is the only producer,
// the session's thread the only consumer. A slot is written only after the
// consumer has released it (head), and read only after the producer has
// published it (tail).
class SpscQueue {
 public:
  explicit SpscQueue(size_t capacity) : slots_(std::max<size_t>(1, capacity)) {}
  // Returns false (and counts a drop) when full.
  bool push(const TapEvent& e) {
    size_t tail = tail_.load(std::memory_order_relaxed);
    if (tail - head_.load(std::memory_order_acquire) == slots_.size()) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    slots_[tail % slots_.size()] = e;
    tail_.store(tail + 1, std::memory_order_release);
    return true;
  }
  bool pop(TapEvent& out) {
    size_t head = head_.load(std::memory_order_relaxed);
    if (head == tail_.load(std::memory_order_acquire)) return false;
    out = std::move(slots_[head % slots_.size()]);
    head_.store(head + 1, std::memory_order_release);
    return true;
  }
  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }

 private:
  std::vector<TapEvent> slots_;
  alignas(64) std::atomic<size_t> head_{0};
  alignas(64) std::atomic<size_t> tail_{0};
  std::atomic<uint64_t> dropped_{0};
};

void fillEnd(TapEnd& end, const std::string& address, const WorkloadInfo* w,
             const std::string& principal) {
  end.address = address;
  end.principal = principal;
  if (w) {
    end.namespace_ = w->namespace_;
    end.workload = w->workload;
    end.pod = w->pod;
  }
}

nlohmann::json endJson(const TapEnd& e) {
  return {{"address", e.address},
          {"namespace", e.namespace_},
          {"workload", e.workload},
          {"pod", e.pod},
          {"identity", e.principal}};
}

}  // namespace

struct TapSubscription::Subscriber {
  TapFilter filter;
  std::vector<std::unique_ptr<SpscQueue>> queues;  // one per worker
  size_t next = 0;                                 // where the next drain starts
};

nlohmann::json toJson(const TapEvent& e) {
  return {{"start_unix_ms", e.start_unix_ms},
          {"direction", e.direction},
          {"protocol", e.protocol},
          {"method", e.method},
          {"authority", e.authority},
          {"path", e.path},
          {"status", e.status},
          {"grpc_status", e.grpc_status},
          {"duration_us", e.duration_us},
          {"request_bytes", e.request_bytes},
          {"response_bytes", e.response_bytes},
          {"mutual_tls", e.mutual_tls},
          {"service", e.service},
          {"source", endJson(e.source)},
          {"destination", endJson(e.destination)}};
}

Result<TapResource> TapResource::parse(const std::string& text) {
  TapResource r;
  auto slash = text.find('/');
  if (slash == std::string::npos) {
    r.kind = Kind::kWorkload;
    r.name = text;
  } else {
    std::string kind = text.substr(0, slash);
    r.name = text.substr(slash + 1);
    if (kind == "deploy" || kind == "deployment" || kind == "workload" || kind == "sts" ||
        kind == "ds" || kind == "job")
      r.kind = Kind::kWorkload;
    else if (kind == "pod" || kind == "po")
      r.kind = Kind::kPod;
    else if (kind == "svc" || kind == "service")
      r.kind = Kind::kService;
    else if (kind == "ns" || kind == "namespace")
      r.kind = Kind::kNamespace;
    else
      return fail("unknown resource kind '" + kind +
                  "': use deploy/NAME, pod/NAME, svc/NAME or ns/NAME");
  }
  if (r.name.empty() || r.name.find('/') != std::string::npos)
    return fail("'" + text + "' names no resource: use deploy/NAME, pod/NAME, svc/NAME or ns/NAME");
  return r;
}

bool TapResource::matches(const TapEnd& end, const std::string& service) const {
  switch (kind) {
    case Kind::kAny:
      return true;
    case Kind::kWorkload:
      return end.workload == name;
    case Kind::kPod:
      return end.pod == name;
    case Kind::kNamespace:
      return end.namespace_ == name;
    case Kind::kService: {
      auto slash = service.find('/');
      return slash != std::string::npos && service.compare(slash + 1, std::string::npos, name) == 0;
    }
  }
  return false;
}

Result<TapFilter> TapFilter::fromQuery(const std::map<std::string, std::string>& query) {
  TapFilter f;
  for (const auto& [key, value] : query) {
    if (key == "namespace") {
      f.namespace_ = value;
    } else if (key == "from" || key == "to") {
      auto r = TapResource::parse(value);
      if (!r) return fail("--" + key + ": " + r.error().message);
      if (key == "from" && r->kind == TapResource::Kind::kService)
        return fail("--from " + value +
                    ": a request comes from a workload, never a Service (--to svc/NAME "
                    "filters what was sent to a Service)");
      (key == "from" ? f.from : f.to) = *r;
    } else if (key == "method") {
      f.method = value;
    } else if (key == "path") {
      f.path_prefix = value;
    } else if (key == "authority") {
      f.authority = value;
    } else if (key != "max") {  // the stream's own parameter
      return fail("unknown tap parameter '" + key +
                  "' (known: namespace, from, to, method, path, authority, max)");
    }
  }
  return f;
}

bool TapFilter::matches(const TapEvent& e) const {
  if (!namespace_.empty() && e.source.namespace_ != namespace_ &&
      e.destination.namespace_ != namespace_)
    return false;
  if (!method.empty() && strcasecmp(method.c_str(), e.method.c_str()) != 0) return false;
  if (!path_prefix.empty() && !e.path.starts_with(path_prefix)) return false;
  if (!authority.empty() && authority != e.authority) return false;
  return from.matches(e.source, "") && to.matches(e.destination, e.service);
}

namespace {

// `r` against the view, in any namespace (--namespace filters either end of
// a request, not the resource): what names it, or why nothing does.
Result<void> findInView(const TapResource& r, const char* flag, const WorkloadSnapshot& view) {
  const char* what = "";
  const char* lists = "sluicectl workloads";
  switch (r.kind) {
    case TapResource::Kind::kAny:
      return {};
    case TapResource::Kind::kService:
      for (const auto& s : view.services)
        if (s.name == r.name) return {};
      what = "Service with endpoints";
      lists = "sluicectl services";
      break;
    case TapResource::Kind::kWorkload:
    case TapResource::Kind::kPod:
    case TapResource::Kind::kNamespace:
      for (const auto& [key, w] : view.by_pod) {
        const std::string& name = r.kind == TapResource::Kind::kWorkload ? w->workload
                                  : r.kind == TapResource::Kind::kPod    ? w->pod
                                                                         : w->namespace_;
        if (name == r.name) return {};
      }
      what = r.kind == TapResource::Kind::kWorkload ? "workload"
             : r.kind == TapResource::Kind::kPod    ? "pod"
                                                    : "namespace with pods";
      break;
  }
  return fail(fmt::format("--{}: no {} '{}' in the control plane's view ({} lists them)", flag,
                          what, r.name, lists),
              ENOENT);
}

}  // namespace

TapSubscription::~TapSubscription() { hub_.unsubscribe(sub_.get()); }

size_t TapSubscription::drain(std::vector<TapEvent>& out, size_t max) {
  // Round robin over the workers' queues, so one busy worker cannot starve the others.
  size_t n = 0, empty = 0, count = sub_->queues.size();
  TapEvent e;
  while (n < max && empty < count) {
    auto& q = *sub_->queues[sub_->next++ % count];
    if (q.pop(e)) {
      out.push_back(std::move(e));
      ++n;
      empty = 0;
    } else {
      ++empty;
    }
  }
  return n;
}

uint64_t TapSubscription::dropped() const {
  uint64_t n = 0;
  for (const auto& q : sub_->queues) n += q->dropped();
  return n;
}

TapHub::TapHub(TapConfig config, const WorkloadIndex* workloads)
    : config_(std::move(config)), workloads_(workloads), list_(std::make_shared<const List>()) {
  config_.workers = std::max(1u, config_.workers);
}

TapHub::~TapHub() { assert(active_.load() == 0 && "tap sessions must end before their hub"); }

Result<std::unique_ptr<TapSubscription>> TapHub::subscribe(TapFilter filter) {
  // Without a view yet (the agent is starting) nothing can be checked.
  if (auto view = workloads_ ? workloads_->current() : nullptr; view && !view->by_pod.empty()) {
    for (auto [r, flag] : {std::pair{&filter.from, "from"}, std::pair{&filter.to, "to"}})
      if (auto found = findInView(*r, flag, *view); !found) return tl::unexpected(found.error());
  }
  std::lock_guard lk(mu_);
  auto current = list_.load();
  if (current->size() >= config_.max_subscribers)
    return fail("too many tap sessions (" + std::to_string(config_.max_subscribers) +
                    "): end one and try again",
                EBUSY);
  auto sub = std::make_shared<TapSubscription::Subscriber>();
  sub->filter = std::move(filter);
  for (unsigned i = 0; i < config_.workers; ++i)
    sub->queues.push_back(std::make_unique<SpscQueue>(config_.queue_per_worker));
  auto next = std::make_shared<List>(*current);
  next->push_back(sub);
  list_.store(std::move(next));
  active_.store(current->size() + 1, std::memory_order_relaxed);
  return std::unique_ptr<TapSubscription>(new TapSubscription(*this, std::move(sub)));
}

void TapHub::unsubscribe(const TapSubscription::Subscriber* sub) {
  std::lock_guard lk(mu_);
  auto next = std::make_shared<List>(*list_.load());
  std::erase_if(*next, [&](const auto& s) { return s.get() == sub; });
  active_.store(next->size(), std::memory_order_relaxed);
  // A worker may still hold the old list: the subscriber lives until it lets go.
  list_.store(std::move(next));
}

TapEvent TapHub::describe(const ztunnel::ConnectionRecord& c,
                          const ztunnel::RequestRecord& r) const {
  Peers peers(workloads_ ? workloads_->current() : nullptr, c, config_.cluster_id);
  TapEvent e;
  e.start_unix_ms = r.start_unix_ms;
  e.direction = toString(c.direction);
  e.protocol = ztunnel::toString(r.protocol);
  e.method = r.method;
  e.authority = r.authority;
  e.path = r.path;
  e.status = r.status;
  e.grpc_status = r.grpc_status;
  e.duration_us = r.duration_us;
  e.request_bytes = r.request_bytes;
  e.response_bytes = r.response_bytes;
  e.mutual_tls = c.mutual_tls;
  e.service = c.service();
  fillEnd(e.source, c.source, peers.source(), c.source_principal);
  fillEnd(e.destination, c.destination, peers.destination(), c.destination_principal);
  return e;
}

void TapHub::request(unsigned worker, const ztunnel::ConnectionRecord& connection,
                     const ztunnel::RequestRecord& request) {
  if (active_.load(std::memory_order_relaxed) == 0 || worker >= config_.workers) return;
  auto list = list_.load();
  std::optional<TapEvent> event;  // built once, for the first subscriber that wants it
  for (const auto& sub : *list) {
    if (!event) event = describe(connection, request);
    if (sub->filter.matches(*event)) sub->queues[worker]->push(*event);
  }
}

}  // namespace sluice::agent::telemetry
