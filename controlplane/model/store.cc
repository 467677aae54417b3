#include "controlplane/model/store.h"

#include <google/protobuf/util/message_differencer.h>

namespace sluice::controlplane::model {

bool Store::enrolled(const Pod& pod, const Namespace* ns) {
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
  }
  sources_[source] = std::move(objects);
  recompute();
  return {};
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
      for (const auto& ip : p.ips) w.add_ips(ip);
      for (const auto& [k, v] : p.labels) (*w.mutable_labels())[k] = v;
      w.set_enrolled(enrolled(p, ns == namespaces.end() ? nullptr : ns->second));
      next[p.uid] = std::move(w);
    }
  }
  Delta d;
  for (const auto& [uid, w] : next) {
    auto old = workloads_.find(uid);
    if (old == workloads_.end() ||
        !google::protobuf::util::MessageDifferencer::Equals(old->second, w))
      d.upserts.push_back(w);
  }
  for (const auto& [uid, w] : workloads_)
    if (!next.count(uid)) d.removed_uids.push_back(uid);
  if (d.upserts.empty() && d.removed_uids.empty()) return;
  workloads_ = std::move(next);
  d.version = ++version_;
  history_.push_back(std::move(d));
  while (history_.size() > kHistory) history_.pop_front();
  changed_.notify_all();
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

Delta Store::snapshot() const {
  std::lock_guard lk(mu_);
  Delta d;
  d.version = version_;
  d.full = true;
  for (const auto& [uid, w] : workloads_) d.upserts.push_back(w);
  return d;
}

std::optional<Delta> Store::waitSince(uint64_t since, std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  changed_.wait_for(lk, timeout, [&] { return stopped_ || version_ != since; });
  if (version_ == since || stopped_) return std::nullopt;
  // Merge the deltas after `since`, if the history still holds all of them.
  if (since > version_ || history_.empty() || history_.front().version > since + 1) {
    lk.unlock();
    return snapshot();
  }
  std::map<std::string, Workload> upserts;
  std::map<std::string, bool> removed;
  for (const auto& d : history_) {
    if (d.version <= since) continue;
    for (const auto& w : d.upserts) {
      upserts[w.uid()] = w;
      removed.erase(w.uid());
    }
    for (const auto& uid : d.removed_uids) {
      upserts.erase(uid);
      removed[uid] = true;
    }
  }
  Delta out;
  out.version = version_;
  for (auto& [uid, w] : upserts) out.upserts.push_back(std::move(w));
  for (auto& [uid, r] : removed) out.removed_uids.push_back(uid);
  return out;
}

void Store::stop() {
  std::lock_guard lk(mu_);
  stopped_ = true;
  changed_.notify_all();
}

}  // namespace sluice::controlplane::model
