#include "agent/pods/pod_manager.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "sluice/common/addr.h"
#include "sluice/common/json_text.h"
#include "sluice/common/log.h"
#include "sluice/common/netns.h"
#include "sluice/common/x509.h"

namespace sluice::agent::pods {

namespace {
auto logger() { return log::get("pods"); }

// The persisted form of a pod (also the base of its config_dump entry).
nlohmann::json podJson(const LocalPod& p) {
  return {{"uid", p.ref.uid},
          {"namespace", p.ref.ns},
          {"name", p.ref.name},
          {"container_id", p.ref.container_id},
          {"netns", p.ref.netns_path},
          {"ifname", p.ref.ifname},
          {"ip", formatIp4(p.ref.ip4)},
          {"ip6", p.ref.ip6},
          {"netns_cookie", p.netns_cookie},
          {"enrolled", p.enrolled},
          {"service_account", p.service_account}};
}

std::string podName(const PodRef& r) { return r.ns + "/" + r.name; }

// The pod as the proxy engine knows it, with the SPIFFE ID computed once
// (setServiceAccount).
ztunnel::PodSpec engineSpec(const LocalPod& pod) {
  ztunnel::PodSpec spec;
  spec.uid = pod.ref.container_id;
  spec.name_namespace = podName(pod.ref);
  spec.service_account = pod.service_account;
  spec.identity = pod.identity;
  spec.ip4 = pod.ref.ip4;
  if (auto a6 = IpAddr::parse(pod.ref.ip6)) spec.ip6 = *a6;
  spec.netns_cookie = pod.netns_cookie;
  spec.netns_fd = pod.netns.get();
  return spec;
}
}  // namespace

PodManager::PodManager(bpf::Loader& loader, ztunnel::Engine& engine, std::string state_file,
                       std::string trust_domain)
    : loader_(loader),
      engine_(engine),
      state_file_(std::move(state_file)),
      trust_domain_(std::move(trust_domain)) {}

void PodManager::setServiceAccount(LocalPod& pod, std::string sa) {
  pod.service_account = std::move(sa);
  pod.identity = pod.service_account.empty()
                     ? std::string()
                     : x509::workloadUri(trust_domain_, pod.ref.ns, pod.service_account);
}

const Workload* PodManager::findWorkload(const PodRef& ref) const {
  if (!ref.uid.empty()) {
    auto it = workloads_.find(ref.uid);
    if (it != workloads_.end()) return &it->second;
  }
  for (const auto& [uid, w] : workloads_)
    if (w.namespace_() == ref.ns && w.name() == ref.name) return &w;
  return nullptr;
}

Decision PodManager::decide(const PodRef& ref) const {
  const Workload* w = findWorkload(ref);
  if (!w) return {};
  return {true, w->enrolled()};
}

Result<bool> PodManager::add(const PodRef& ref, std::chrono::milliseconds wait) {
  std::unique_lock lk(mu_);
  if (ref.container_id.empty()) return fail("CNI_CONTAINERID is empty");
  if (frozen_)
    return fail("the sluice agent is handing over to its successor (an upgrade); retry", EAGAIN);
  auto existing = pods_.find(ref.container_id);
  if (existing != pods_.end()) {
    // A runtime's retry names the same pod again; another pod under this
    // container is an error, not a silent no-op.
    const PodRef& had = existing->second.ref;
    if (had.ns != ref.ns || had.name != ref.name || had.uid != ref.uid ||
        had.netns_path != ref.netns_path)
      return fail(fmt::format(
          "container {} is already added as pod {} (netns {}); this ADD names pod {} (netns {}): "
          "a container's ADD must name the same pod each time (its DEL first, for another)",
          ref.container_id, podName(had), had.netns_path, podName(ref), ref.netns_path));
    if (had.ip4 != ref.ip4 || had.ip6 != ref.ip6) {
      // The retry carries the primary plugin's result again, which is the
      // one that counts: capture and listeners follow the pod's addresses,
      // so an enrolled pod is enrolled again under the new ones.
      LocalPod& pod = existing->second;
      logger()->info(
          "pod {} (container {}): a repeated ADD changes its addresses from {}{}{} to "
          "{}{}{}",
          podName(ref), ref.container_id, formatIp4(had.ip4), had.ip6.empty() ? "" : ", ", had.ip6,
          formatIp4(ref.ip4), ref.ip6.empty() ? "" : ", ", ref.ip6);
      if (pod.enrolled) unenroll(pod);
      pod.ref.ip4 = ref.ip4;
      pod.ref.ip6 = ref.ip6;
      warnSharedAddress(pod);
      persist();  // reconcile() below enrolls it again
    }
  } else {
    auto netns = openNetns(ref.netns_path);
    if (!netns) return tl::unexpected(netns.error());
    auto cookie = netnsCookie(netns->get());
    if (!cookie) return tl::unexpected(cookie.error());
    for (const auto& [id, other] : pods_)
      if (other.netns_cookie == *cookie)
        return fail(fmt::format(
            "netns {} is already pod {}'s (container {}): one network namespace is one pod",
            ref.netns_path, podName(other.ref), id));
    LocalPod pod;
    pod.ref = ref;
    pod.netns = std::move(*netns);
    pod.netns_cookie = *cookie;
    auto added = pods_.emplace(ref.container_id, std::move(pod)).first;
    warnSharedAddress(added->second);
    persist();
    logger()->info("pod {} added (container {}, ip {}{}{}, netns cookie {})", podName(ref),
                   ref.container_id, formatIp4(ref.ip4), ref.ip6.empty() ? "" : ", ip6 ", ref.ip6,
                   *cookie);
  }
  // In Kubernetes the Pod object exists before its sandbox; give the control
  // plane's view a bounded time to catch up before deciding.
  workloads_changed_.wait_for(lk, wait, [&] { return findWorkload(ref) != nullptr; });
  auto it = pods_.find(ref.container_id);
  if (it == pods_.end()) return fail("pod was deleted while it was being added");
  if (frozen_)
    return fail("the sluice agent is handing over to its successor (an upgrade); retry", EAGAIN);
  reconcile(it->second);
  if (!it->second.last_error.empty())
    return fail("enrolling the pod failed: " + it->second.last_error);
  if (!decide(ref).known)
    logger()->warn("pod {} is not known to the control plane yet; it runs unenrolled until it is",
                   podName(ref));
  return it->second.enrolled;
}

// Two local pods with one address: the older one's DEL never reached this
// agent (its sandbox is gone, its record is not), and traffic for the
// address may go to the wrong pod until that record is removed.
void PodManager::warnSharedAddress(const LocalPod& pod) const {
  for (const auto& [id, other] : pods_) {
    if (&other == &pod) continue;
    bool same4 = pod.ref.ip4 != 0 && other.ref.ip4 == pod.ref.ip4;
    bool same6 = !pod.ref.ip6.empty() && other.ref.ip6 == pod.ref.ip6;
    if (!same4 && !same6) continue;
    logger()->warn(
        "pod {} (container {}) has address {}, which pod {} (container {}, netns {}) of this "
        "agent still holds: that pod's CNI DEL never reached the agent, or both are live. If {} "
        "is gone, delete its record by running its DEL again (or restart the agent, which drops "
        "pods whose netns is gone)",
        podName(pod.ref), pod.ref.container_id, same4 ? formatIp4(pod.ref.ip4) : pod.ref.ip6,
        podName(other.ref), id, other.ref.netns_path, podName(other.ref));
  }
}

void PodManager::remove(const std::string& container_id, const std::string& uid,
                        const std::string& netns_path) {
  std::lock_guard lk(mu_);
  if (frozen_) return;  // the CNI server is off; the successor's restore() drops a gone pod
  auto it = pods_.find(container_id);
  if (it == pods_.end()) {
    // Only a record that has no container id of its own (a hand-edited or
    // foreign state file: ADD always records one) may be matched otherwise,
    // and then by its uid and its netns both. Never by the uid alone: a
    // runtime repeats the DEL of a sandbox after its pod's replacement sandbox
    // (same uid, another container) was added, and that one must stay.
    for (auto p = pods_.begin(); p != pods_.end(); ++p)
      if (p->first.empty() && !uid.empty() && p->second.ref.uid == uid && !netns_path.empty() &&
          p->second.ref.netns_path == netns_path)
        it = p;
  }
  if (it == pods_.end()) {
    logger()->info("DEL of container {} (pod uid {}), which this agent does not know: done",
                   container_id, uid.empty() ? "unset" : uid);
    return;
  }
  unenroll(it->second);
  logger()->info("pod {} removed (container {})", podName(it->second.ref), it->first);
  pods_.erase(it);
  persist();
}

bool PodManager::knows(const std::string& container_id) const {
  std::lock_guard lk(mu_);
  return pods_.count(container_id) != 0;
}

Result<void> PodManager::check(const std::string& container_id, const std::string& uid) {
  std::lock_guard lk(mu_);
  auto it = pods_.find(container_id);
  if (it == pods_.end())
    return fail(
        fmt::format("the sluice agent does not know container {} (pod uid {})", container_id, uid));
  const LocalPod& pod = it->second;
  Decision d = decide(pod.ref);
  if (d.known && d.enrolled != pod.enrolled)
    return fail(fmt::format("pod should be {} but is {}: {}",
                            d.enrolled ? "enrolled" : "unenrolled",
                            pod.enrolled ? "enrolled" : "unenrolled", pod.last_error));
  if (pod.enrolled && !loader_.enrolled().lookup(pod.netns_cookie))
    return fail("pod is enrolled but its netns cookie is missing from the BPF enrolled map");
  return {};
}

void PodManager::onWorkloads(const std::map<std::string, Workload>& all, uint64_t version) {
  std::lock_guard lk(mu_);
  workloads_ = all;
  version_ = version;
  if (!frozen_)
    for (auto& [id, pod] : pods_) reconcile(pod);
  workloads_changed_.notify_all();
}

void PodManager::freeze() {
  std::lock_guard lk(mu_);
  frozen_ = true;
}

void PodManager::thaw() {
  std::lock_guard lk(mu_);
  frozen_ = false;
  for (auto& [id, pod] : pods_) reconcile(pod);
}

void PodManager::reconcile(LocalPod& pod) {
  Decision d = decide(pod.ref);
  if (const Workload* w = findWorkload(pod.ref); w && w->service_account() != pod.service_account) {
    setServiceAccount(pod, w->service_account());
    persist();
  }
  bool want = d.enrolled;
  if (!d.known) {
    // Until the first view arrives, keep what we had (restart); once synced,
    // a pod the control plane does not know is not enrolled.
    if (version_ == 0) return;
    want = false;
  }
  if (want && pod.enrolled && pod.engine_service_account != pod.service_account) {
    reregister(pod);
  } else if (want && !pod.enrolled) {
    if (auto r = enroll(pod); !r) {
      pod.last_error = r.error().describe();
      logger()->error("enrolling pod {} failed: {}", podName(pod.ref), pod.last_error);
    }
  } else if (!want && (pod.enrolled || pod.held_capture)) {
    unenroll(pod);
    persist();
  }
}

Result<void> PodManager::enroll(LocalPod& pod) {
  if (pod.ref.ip4 == 0 && pod.ref.ip6.empty())
    return fail("the pod has no IP address in the CNI result (prevResult.ips)");
  ztunnel::PodSpec spec = engineSpec(pod);
  if (auto r = engine_.addPod(spec); !r) return r;
  pod.engine_service_account = pod.service_account;
  if (auto r = loader_.attachInbound(pod.netns.get(), pod.ref.ifname); !r) {
    engine_.removePod(spec.uid);
    return r;
  }
  sluice_enrolled value{pod.ref.ip4, 0};
  if (auto r = loader_.enroll(pod.netns_cookie, value, pod.ref.ip6); !r) {
    loader_.detachInbound(pod.netns.get(), pod.ref.ifname);
    engine_.removePod(spec.uid);
    return r;
  }
  pod.enrolled = true;
  pod.held_capture = false;
  pod.last_error.clear();
  persist();
  logger()->info("pod {} enrolled (ip {}{}{}, netns cookie {})", podName(pod.ref),
                 pod.ref.ip4 ? formatIp4(pod.ref.ip4) : "none", pod.ref.ip6.empty() ? "" : ", ip6 ",
                 pod.ref.ip6, pod.netns_cookie);
  return {};
}

// The engine keeps a pod's identity from addPod on; a pod re-adopted under
// the wrong service account (a state file from before it was kept there)
// is registered again. Only the engine's side: capture stays in place, so
// in between the pod's connections are refused (nothing listens), never
// let through. A pod's service account cannot change in Kubernetes, so this
// happens at most once per pod, right after such a restart.
void PodManager::reregister(LocalPod& pod) {
  logger()->info("pod {}: service account '{}' instead of '{}': registering it again",
                 podName(pod.ref), pod.service_account, pod.engine_service_account);
  engine_.removePod(pod.ref.container_id);
  ztunnel::PodSpec spec = engineSpec(pod);
  if (auto r = engine_.addPod(spec); !r) {
    // Without listeners the capture would only refuse: take it out too, and
    // let the next view try the whole enrollment again.
    pod.last_error = r.error().describe();
    logger()->error("registering pod {} again failed: {}", podName(pod.ref), pod.last_error);
    loader_.unenroll(pod.netns_cookie);
    loader_.detachInbound(pod.netns.get(), pod.ref.ifname);
    pod.enrolled = false;
    persist();
    return;
  }
  pod.engine_service_account = pod.service_account;
}

void PodManager::unenroll(LocalPod& pod) {
  if (!pod.enrolled) {
    if (pod.held_capture) {
      loader_.unenroll(pod.netns_cookie);
      pod.held_capture = false;
      logger()->info("pod {}: its held capture released", podName(pod.ref));
    }
    return;
  }
  loader_.unenroll(pod.netns_cookie);
  loader_.detachInbound(pod.netns.get(), pod.ref.ifname);
  engine_.removePod(pod.ref.container_id);
  pod.enrolled = false;
  logger()->info("pod {} unenrolled", podName(pod.ref));
}

void PodManager::persist() const {
  nlohmann::json pods = nlohmann::json::array();
  for (const auto& [id, p] : pods_) pods.push_back(podJson(p));
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(state_file_).parent_path(), ec);
  std::string tmp = state_file_ + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << jsonText(nlohmann::json{{"version", 1}, {"pods", pods}}, 2) << "\n";
    if (!out) {
      logger()->error("cannot write agent state {}: pods would not be re-adopted after a restart",
                      tmp);
      return;
    }
  }
  // On disk before it replaces the old file: a crash or power loss leaves
  // one whole file or the other, never a truncated one.
  if (UniqueFd fd(::open(tmp.c_str(), O_RDONLY | O_CLOEXEC)); !fd || ::fsync(fd.get()) != 0)
    logger()->warn("cannot sync {}: {}", tmp, std::strerror(errno));
  if (std::rename(tmp.c_str(), state_file_.c_str()) != 0) {
    logger()->error("cannot rename {} to {}: {}", tmp, state_file_, std::strerror(errno));
    return;
  }
  auto dir = std::filesystem::path(state_file_).parent_path();
  if (UniqueFd d(::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)); d)
    ::fsync(d.get());
}

void PodManager::restore() {
  std::lock_guard lk(mu_);
  // The netns cookies of the state file's pods that are gone: theirs only
  // leave the enrolled map.
  std::set<uint64_t> gone;
  std::ifstream in(state_file_);
  if (in) {
    nlohmann::json state = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (state.is_discarded() || !state.contains("pods") || !state["pods"].is_array()) {
      logger()->error(
          "agent state file {} is unreadable: the pods it held are not re-adopted; their "
          "capture stays in place, so their connections are refused rather than sent in "
          "plaintext until each pod is deleted and re-created (sluicectl check names them)",
          state_file_);
    } else {
      for (const auto& j : state["pods"]) {
        try {
          PodRef ref;
          ref.uid = j.at("uid").get<std::string>();
          ref.ns = j.at("namespace").get<std::string>();
          ref.name = j.at("name").get<std::string>();
          ref.container_id = j.at("container_id").get<std::string>();
          ref.netns_path = j.at("netns").get<std::string>();
          ref.ifname = j.at("ifname").get<std::string>();
          ref.ip4 = parseIp4(j.at("ip").get<std::string>()).value_or(0);
          ref.ip6 = j.value("ip6", std::string());  // absent from older agents' state files
          bool was_enrolled = j.at("enrolled").get<bool>();
          uint64_t saved_cookie = j.at("netns_cookie").get<uint64_t>();
          // Absent from state files of agents before it was kept.
          std::string service_account = j.value("service_account", std::string());
          auto netns = openNetns(ref.netns_path);
          if (!netns) {
            logger()->info("pod {} is gone ({}); dropping it", podName(ref),
                           netns.error().describe());
            // Only a namespace that is no more frees its capture.
            if (netns.error().code == ENOENT) gone.insert(saved_cookie);
            continue;
          }
          auto cookie = netnsCookie(netns->get());
          if (!cookie || *cookie != saved_cookie) {
            logger()->info("pod {}: netns {} is not the one enrolled before; dropping it",
                           podName(ref), ref.netns_path);
            gone.insert(saved_cookie);
            continue;
          }
          LocalPod pod;
          pod.ref = ref;
          pod.netns = std::move(*netns);
          pod.netns_cookie = *cookie;
          if (const Workload* w = findWorkload(ref); w && service_account.empty())
            service_account = w->service_account();
          setServiceAccount(pod, service_account);
          auto [it, inserted] = pods_.emplace(ref.container_id, std::move(pod));
          if (inserted && was_enrolled) {
            if (auto r = enroll(it->second); !r) {
              it->second.last_error = r.error().describe();
              logger()->error("re-adopting pod {} failed: {}", podName(ref), it->second.last_error);
            } else {
              logger()->info("pod {} re-adopted", podName(ref));
            }
          }
        } catch (const std::exception& e) {
          logger()->error("skipping malformed pod entry in {}: {}", state_file_, e.what());
        }
      }
    }
  }
  // A cookie of a pod that is gone redirects into nothing: dropped. One the
  // state file does not name is a pod this agent cannot find again (its
  // state was lost): kept, so that its connections are refused (no listener
  // behind the capture) instead of leaving the mesh in plaintext.
  for (const auto& [cookie, value] : loader_.enrolled().entries()) {
    // The pod with this cookie, an enrolled one first (only an older state
    // file can name two pods on one netns: ADD refuses that now).
    LocalPod* held = nullptr;
    for (auto& [id, pod] : pods_)
      if (pod.netns_cookie == cookie && (!held || pod.enrolled)) held = &pod;
    if (held && held->enrolled) continue;
    if (held) {
      held->held_capture = true;
      logger()->error(
          "pod {} was enrolled and is not now: its capture is kept, so its connections are "
          "refused rather than sent in plaintext, until it is enrolled again or leaves the mesh",
          podName(held->ref));
    } else if (gone.count(cookie)) {
      loader_.unenroll(cookie);
      logger()->info("removed stale netns cookie {} from the enrolled map", cookie);
    } else {
      logger()->error(
          "netns cookie {} is enrolled but no pod in {} has it: kept, so that pod's connections "
          "are refused, not sent in plaintext; delete and re-create the pod to mesh it again "
          "(sluicectl check names the pods this agent does not know)",
          cookie, state_file_);
    }
  }
  persist();
}

nlohmann::json PodManager::dump() const {
  std::lock_guard lk(mu_);
  nlohmann::json pods = nlohmann::json::array();
  for (const auto& [id, p] : pods_) {
    nlohmann::json j = podJson(p);
    j["error"] = p.last_error;
    j["held_capture"] = p.held_capture;
    pods.push_back(std::move(j));
  }
  nlohmann::json workloads = nlohmann::json::array();
  for (const auto& [uid, w] : workloads_) {
    nlohmann::json labels = nlohmann::json::object();
    for (const auto& [k, v] : w.labels()) labels[k] = v;
    workloads.push_back({{"uid", w.uid()},
                         {"name", w.name()},
                         {"namespace", w.namespace_()},
                         {"service_account", w.service_account()},
                         {"node", w.node()},
                         {"ips", std::vector<std::string>(w.ips().begin(), w.ips().end())},
                         {"labels", labels},
                         {"enrolled", w.enrolled()}});
  }
  return {{"version", version_}, {"pods", pods}, {"workloads", workloads}};
}

size_t PodManager::enrolledCount() const {
  std::lock_guard lk(mu_);
  size_t n = 0;
  for (const auto& [id, p] : pods_) n += p.enrolled ? 1 : 0;
  return n;
}

}  // namespace sluice::agent::pods

namespace sluice::agent::pods {

std::set<std::string> PodManager::enrolledIdentities() const {
  std::lock_guard lk(mu_);
  std::set<std::string> out;
  for (const auto& [id, p] : pods_)
    if (p.enrolled && !p.identity.empty()) out.insert(p.identity);
  return out;
}

std::set<std::string> PodManager::enrolledPods() const {
  std::lock_guard lk(mu_);
  std::set<std::string> out;
  for (const auto& [id, p] : pods_)
    if (p.enrolled) out.insert(p.ref.ns + "/" + p.ref.name);
  return out;
}

}  // namespace sluice::agent::pods
