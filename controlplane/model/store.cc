#include "controlplane/model/store.h"

#include <algorithm>
#include <random>
#include <set>

#include "common/policy/wire.h"
#include "controlplane/model/policy_filter.h"
#include "controlplane/model/proto_equal.h"
#include "sluice/common/fmt.h"

namespace sluice::controlplane::model {

namespace {

// Address text is validated at parse time: an IPv6 one has a colon.
bool isIp6(const std::string& ip) { return ip.find(':') != std::string::npos; }

uint64_t randomEpoch() {
  std::random_device rd;
  uint64_t e = 0;
  while (e == 0) e = (uint64_t(rd()) << 32) | rd();
  return e;
}
}  // namespace

Store::Store(EndpointsMode mode) : mode_(mode), epoch_(randomEpoch()) {}

bool Store::enrolled(const Pod& pod, const Namespace* ns) {
  if (pod.host_network) return false;
  auto opt_out = pod.labels.find(kMeshLabel);
  if (opt_out != pod.labels.end() && opt_out->second == "disabled") return false;
  if (!ns) return false;
  auto it = ns->labels.find(kMeshLabel);
  return it != ns->labels.end() && it->second == "enabled";
}

Result<void> Store::setSource(const std::string& source, Objects objects) {
  std::lock_guard lk(mu_);
  for (const auto& [other, objs] : sources_) {
    if (other == source) continue;
    for (const auto& p : objs.pods)
      for (const auto& q : objects.pods)
        if (p.uid == q.uid)
          return fail(fmt::format("pod uid {} is already defined by {}", q.uid, other));
    for (const auto& n : objs.namespaces)
      for (const auto& m : objects.namespaces)
        if (n.name == m.name)
          return fail(fmt::format("namespace {} is already defined by {}", m.name, other));
    for (const auto& a : objs.services)
      for (const auto& b : objects.services)
        if (a.ns == b.ns && a.name == b.name)
          return fail(fmt::format("service {}/{} is already defined by {}", b.ns, b.name, other));
    for (const auto& a : objs.authorization_policies)
      for (const auto& b : objects.authorization_policies)
        if (a.ns == b.ns && a.name == b.name)
          return fail(fmt::format("AuthorizationPolicy {}/{} is already defined by {}", b.ns,
                                  b.name, other));
    for (const auto& a : objs.peer_authentications)
      for (const auto& b : objects.peer_authentications)
        if (a.ns == b.ns && a.name == b.name)
          return fail(fmt::format("PeerAuthentication {}/{} is already defined by {}", b.ns, b.name,
                                  other));
  }
  sources_[source] = std::move(objects);
  recompute();
  if (pending_.erase(source)) changed_.notify_all();
  return {};
}

void Store::expect(const std::string& source) {
  std::lock_guard lk(mu_);
  if (!sources_.count(source)) pending_.insert(source);
}

bool Store::ready() const {
  std::lock_guard lk(mu_);
  return pending_.empty();
}

bool Store::waitReady(std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  changed_.wait_for(lk, timeout, [&] { return stopped_ || pending_.empty(); });
  return pending_.empty();
}

void Store::removeSource(const std::string& source) {
  std::lock_guard lk(mu_);
  if (sources_.erase(source)) recompute();
}

void Store::recompute() {
  std::map<std::string, const Namespace*> namespaces;
  for (const auto& [src, objs] : sources_)
    for (const auto& n : objs.namespaces) namespaces[n.name] = &n;
  std::map<std::string, Workload> next;
  for (const auto& [src, objs] : sources_) {
    for (const auto& p : objs.pods) {
      auto ns = namespaces.find(p.ns);
      Workload w;
      w.set_uid(p.uid);
      w.set_name(p.name);
      w.set_namespace_(p.ns);
      w.set_service_account(p.service_account);
      w.set_node(p.node);
      if (!p.host_network)
        for (const auto& ip : p.ips) w.add_ips(ip);
      for (const auto& [k, v] : p.labels) (*w.mutable_labels())[k] = v;
      w.set_owner_kind(p.owner_kind);
      w.set_owner_name(p.owner_name);
      w.set_generate_name(p.generate_name);
      for (const auto& r : p.opaque_ports) {
        auto* o = w.add_opaque_ports();
        o->set_first(r.first);
        o->set_last(r.last);
      }
      w.set_enrolled(enrolled(p, ns == namespaces.end() ? nullptr : ns->second));
      next[p.uid] = std::move(w);
    }
  }
  Delta d;
  auto services = computeServices();
  for (const auto& [key, svc] : services) {
    auto old = services_.find(key);
    if (old == services_.end() || !sameMessage(old->second, svc)) d.services.push_back(svc);
  }
  for (const auto& [key, svc] : services_)
    if (!services.count(key)) d.removed_services.push_back(key);
  for (const auto& [uid, w] : next) {
    auto old = workloads_.find(uid);
    if (old == workloads_.end() || !sameMessage(old->second, w)) d.upserts.push_back(w);
  }
  for (const auto& [uid, w] : workloads_)
    if (!next.count(uid)) d.removed_uids.push_back(uid);
  auto policies = computePolicies();
  d.policies_changed = !sameMessage(policies, policies_);
  if (d.upserts.empty() && d.removed_uids.empty() && d.services.empty() &&
      d.removed_services.empty() && !d.policies_changed)
    return;
  workloads_ = std::move(next);
  services_ = std::move(services);
  policies_ = std::move(policies);
  d.version = ++version_;
  history_.push_back(std::move(d));
  while (history_.size() > kHistory) history_.pop_front();
  changed_.notify_all();
}

namespace {

bool selects(const std::map<std::string, std::string>& selector,
             const std::map<std::string, std::string>& labels) {
  for (const auto& [k, v] : selector) {
    auto it = labels.find(k);
    if (it == labels.end() || it->second != v) return false;
  }
  return true;
}

}  // namespace

// Services with their ready endpoints. O(services + slices + pods of the
// namespaces that have selector Services).
std::map<std::string, ServiceView> Store::computeServices() const {
  std::map<std::string, ServiceView> out;
  std::map<std::string, std::vector<const EndpointSlice*>> slices;  // by "ns/service"
  std::map<std::string, std::vector<const Pod*>> pods_by_ns;
  for (const auto& [src, objs] : sources_) {
    for (const auto& es : objs.endpoint_slices)
      if (!es.service.empty()) slices[es.ns + "/" + es.service].push_back(&es);
    for (const auto& p : objs.pods) pods_by_ns[p.ns].push_back(&p);
  }
  for (const auto& [src, objs] : sources_) {
    for (const auto& svc : objs.services) {
      std::string key = svc.ns + "/" + svc.name;
      ServiceView v;
      v.set_namespace_(svc.ns);
      v.set_name(svc.name);
      for (const auto& ip : svc.vips) v.add_vips(ip);
      v.set_headless(svc.headless);
      for (const auto& p : svc.ports) {
        auto* sp = v.add_ports();
        sp->set_name(p.name);
        sp->set_port(p.port);
        sp->set_protocol(p.protocol);
        sp->set_app_protocol(p.app_protocol);
      }
      for (const auto& r : svc.opaque_ports) {
        auto* o = v.add_opaque_ports();
        o->set_first(r.first);
        o->set_last(r.last);
      }
      auto own = slices.find(key);
      if (own != slices.end()) {
        // The ready endpoints; with none, the serving terminating ones (as
        // kube-proxy: connections still reach a Service during a rollout
        // of all of its pods). An address in two slices (the API allows it
        // while the controller moves it) is one endpoint, its ports merged.
        bool any_ready = false;
        for (const EndpointSlice* es : own->second)
          for (const auto& e : es->endpoints) any_ready = any_ready || e.ready;
        std::map<std::string, int> at;  // address -> index in v.endpoints
        for (const EndpointSlice* es : own->second)
          for (const auto& e : es->endpoints) {
            if (any_ready ? !e.ready : !(e.serving && e.terminating)) continue;
            for (const auto& addr : e.addresses) {
              auto [it, added] = at.emplace(addr, v.endpoints_size());
              auto* ep = added ? v.add_endpoints() : v.mutable_endpoints(it->second);
              if (added) {
                ep->set_ip(addr);
                ep->set_workload_uid(e.target_uid);
              }
              for (const auto& [name, port] : es->ports) ep->mutable_ports()->insert({name, port});
            }
          }
      } else if (mode_ == EndpointsMode::kSlicesOrSelector && svc.has_selector &&
                 !svc.selector.empty()) {
        // As the endpoints controller: a Service's endpoints are the pod
        // addresses of its own families (those of its VIPs; headless, none:
        // the pod's primary address), so a dual-stack pod is an IPv4 endpoint
        // of an IPv4 Service and an IPv6 one of an IPv6 Service.
        std::set<bool> families;  // is IPv6
        for (const auto& vip : svc.vips) families.insert(isIp6(vip));
        for (const Pod* p : pods_by_ns[svc.ns]) {
          if (!p->ready || p->ips.empty() || !selects(svc.selector, p->labels)) continue;
          sluice::api::v1::Endpoint ep;
          for (const auto& sp : svc.ports) {
            uint32_t target = sp.target_port ? sp.target_port : sp.port;
            if (!sp.target_port_name.empty()) {
              auto np = p->named_ports.find(sp.target_port_name);
              if (np == p->named_ports.end()) continue;  // this pod does not serve it
              target = np->second;
            }
            (*ep.mutable_ports())[sp.name] = target;
          }
          // A headless Service without ports still names its endpoints (by IP).
          if (ep.ports().empty() && !(svc.headless && svc.ports.empty())) continue;
          for (const auto& ip : p->ips) {
            if (!families.count(isIp6(ip)) && !(families.empty() && ip == p->ips.front())) continue;
            ep.set_ip(ip);
            ep.set_workload_uid(p->uid);
            *v.add_endpoints() = ep;
          }
        }
      }
      // Deterministic order: equal views compare equal.
      std::sort(v.mutable_endpoints()->begin(), v.mutable_endpoints()->end(),
                [](const auto& a, const auto& b) { return a.ip() < b.ip(); });
      out[key] = std::move(v);
    }
  }
  return out;
}

// Every source's policies, ordered by (namespace, name) within a kind so
// that equal sets compare equal. One source may hold the same name twice
// (the Kubernetes source, reading Sluice's and Istio's groups): the first
// one read wins, which is Sluice's group.
sluice::api::v1::PolicySet Store::computePolicies() const {
  std::map<std::pair<std::string, std::string>, const policy::AuthorizationPolicy*> authz;
  std::map<std::pair<std::string, std::string>, const policy::PeerAuthentication*> peer;
  for (const auto& [src, objs] : sources_) {
    for (const auto& p : objs.authorization_policies) authz.emplace(std::pair{p.ns, p.name}, &p);
    for (const auto& p : objs.peer_authentications) peer.emplace(std::pair{p.ns, p.name}, &p);
  }
  sluice::api::v1::PolicySet out;
  for (const auto& [key, p] : authz) policy::toProto(*p, out.add_authorization());
  for (const auto& [key, p] : peer) policy::toProto(*p, out.add_peer());
  return out;
}

sluice::api::v1::PolicySet Store::policies() const {
  std::lock_guard lk(mu_);
  return policies_;
}

bool Store::runsOn(const std::string& node, const std::string& ns, const std::string& sa) const {
  std::lock_guard lk(mu_);
  for (const auto& [uid, w] : workloads_)
    if (w.node() == node && w.namespace_() == ns && w.service_account() == sa && w.ips_size() > 0)
      return true;
  return false;
}

uint64_t Store::version() const {
  std::lock_guard lk(mu_);
  return version_;
}

Delta Store::snapshot(const std::string& node) const {
  std::lock_guard lk(mu_);
  return snapshotLocked(node);
}

Delta Store::snapshotLocked(const std::string& node) const {
  Delta d;
  d.version = version_;
  d.full = true;
  d.policies_changed = true;
  for (const auto& [uid, w] : workloads_) d.upserts.push_back(w);
  for (const auto& [key, svc] : services_) d.services.push_back(svc);
  if (!node.empty()) d.policies = policiesForNode(node, workloads_, policies_);
  return d;
}

std::optional<Delta> Store::waitSince(uint64_t since, std::chrono::milliseconds timeout,
                                      const std::string& node) {
  std::unique_lock lk(mu_);
  changed_.wait_for(lk, timeout, [&] { return stopped_ || version_ != since; });
  if (version_ == since || stopped_) return std::nullopt;
  // Merge the deltas after `since`, if the history still holds all of them.
  if (since > version_ || history_.empty() || history_.front().version > since + 1)
    return snapshotLocked(node);
  std::map<std::string, Workload> upserts;
  std::map<std::string, bool> removed;
  std::map<std::string, ServiceView> svc_upserts;
  std::map<std::string, bool> svc_removed;
  bool policies_changed = false;
  for (const auto& d : history_) {
    if (d.version <= since) continue;
    policies_changed = policies_changed || d.policies_changed;
    for (const auto& w : d.upserts) {
      upserts[w.uid()] = w;
      removed.erase(w.uid());
    }
    for (const auto& uid : d.removed_uids) {
      upserts.erase(uid);
      removed[uid] = true;
    }
    for (const auto& s : d.services) {
      std::string key = s.namespace_() + "/" + s.name();
      svc_upserts[key] = s;
      svc_removed.erase(key);
    }
    for (const auto& key : d.removed_services) {
      svc_upserts.erase(key);
      svc_removed[key] = true;
    }
  }
  Delta out;
  out.version = version_;
  for (auto& [uid, w] : upserts) out.upserts.push_back(std::move(w));
  for (auto& [uid, r] : removed) out.removed_uids.push_back(uid);
  for (auto& [key, s] : svc_upserts) out.services.push_back(std::move(s));
  for (auto& [key, r] : svc_removed) out.removed_services.push_back(key);
  out.policies_changed = policies_changed;
  if (!node.empty()) out.policies = policiesForNode(node, workloads_, policies_);
  return out;
}

void Store::stop() {
  std::lock_guard lk(mu_);
  stopped_ = true;
  changed_.notify_all();
}

}  // namespace sluice::controlplane::model
