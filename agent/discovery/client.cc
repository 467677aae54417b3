#include "agent/discovery/client.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <random>

#include "common/policy/wire.h"
#include "sluice/common/log.h"
#include "sluice/common/unique_fd.h"

namespace sluice::agent::discovery {

Result<std::unique_ptr<Client>> Client::create(const ClientConfig& config, Listener& listener) {
  if (config.target.empty()) return fail("control plane address is empty");
  if (config.node_name.empty()) return fail("node name is empty");
  if (config.trust_anchor_pem.empty())
    return fail("no trust anchor to verify the control plane with");
  std::unique_ptr<Client> self(new Client(config, listener));
  Client* c = self.get();
  if (!config.view_file.empty()) self->persister_ = std::jthread([c] { c->persistLoop(); });
  self->thread_ = std::jthread([c] { c->run(); });
  return self;
}

Client::~Client() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cancel_.cancel();
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  // The client thread is done: the persister writes what is still pending
  // (without waiting out its interval) and ends.
  {
    std::lock_guard lk(mu_);
    persist_stop_ = true;
  }
  persist_wake_.notify_all();
  if (persister_.joinable()) persister_.join();
}

bool View::apply(const sluice::api::v1::WatchResponse& resp) {
  if (resp.full()) {
    workloads.clear();
    services.clear();
  }
  // Policies first: the control plane sends those that select a workload in
  // the message that first carries it (or earlier), and whoever sees the
  // workload in this view may serve it.
  bool policies_changed = false;
  if (resp.has_policies())
    policies_changed = applyPolicies(resp.policies());
  else if (resp.full())
    // A snapshot always carries the set; a control plane that sends none
    // (older than policies) has none.
    policies_changed = applyPolicies({});
  for (const auto& w : resp.upserts()) workloads[w.uid()] = w;
  for (const auto& uid : resp.removed_uids()) workloads.erase(uid);
  for (const auto& s : resp.services()) services[s.namespace_() + "/" + s.name()] = s;
  for (const auto& key : resp.removed_services()) services.erase(key);
  return resp.full() || policies_changed || resp.upserts_size() > 0 ||
         resp.removed_uids_size() > 0 || resp.services_size() > 0 ||
         resp.removed_services_size() > 0;
}

bool View::applyPolicies(const sluice::api::v1::PolicySet& set) {
  if (set.SerializeAsString() == policies_message.SerializeAsString()) return false;
  auto compiled = policy::buildFromProto(set, {});
  if (!compiled) {
    ++policy_sets_rejected;
    policy_error = compiled.error().describe();
    log::get("discovery")
        ->error(
            "rejected the control plane's policy set ({} AuthorizationPolicies, {} "
            "PeerAuthentications): {}; still enforcing the previous set ({} + {}). Fix or remove "
            "the object on the control plane's side",
            set.authorization_size(), set.peer_size(), policy_error,
            policies->authorizationPolicies().size(), policies->peerAuthentications().size());
    return false;
  }
  policies = std::move(*compiled);
  policies_message = set;
  policy_error.clear();
  return true;
}

sluice::api::v1::WatchResponse snapshotOf(const View& view, uint64_t version, uint64_t epoch) {
  sluice::api::v1::WatchResponse r;
  r.set_version(version);
  r.set_epoch(epoch);
  r.set_full(true);
  r.mutable_upserts()->Reserve(static_cast<int>(view.workloads.size()));
  for (const auto& [uid, w] : view.workloads) *r.add_upserts() = w;
  r.mutable_services()->Reserve(static_cast<int>(view.services.size()));
  for (const auto& [key, svc] : view.services) *r.add_services() = svc;
  *r.mutable_policies() = view.policies_message;
  return r;
}

Result<void> saveView(const std::string& path, const std::string& bytes) {
  std::string tmp = path + ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return failErrno("cannot create " + tmp);
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::write(fd.get(), bytes.data() + off, bytes.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      auto err = failErrno("cannot write " + tmp);
      ::unlink(tmp.c_str());
      return err;
    }
    off += static_cast<size_t>(n);
  }
  if (::close(fd.release()) != 0) {
    auto err = failErrno("cannot write " + tmp);
    ::unlink(tmp.c_str());
    return err;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    auto err = failErrno(fmt::format("cannot rename {} to {}", tmp, path));
    ::unlink(tmp.c_str());
    return err;
  }
  return {};
}

Result<PersistedView> loadView(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return failErrno("cannot open " + path);
  std::string bytes;
  char buf[1 << 16];
  while (true) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return failErrno("cannot read " + path);
    if (n == 0) break;
    bytes.append(buf, static_cast<size_t>(n));
  }
  sluice::api::v1::WatchResponse resp;
  if (bytes.empty() || !resp.ParseFromString(bytes) || !resp.full())
    return fail(path + " does not hold a view (empty, truncated or not a snapshot)");
  PersistedView out;
  out.view.apply(resp);
  out.version = resp.version();
  out.epoch = resp.epoch();
  return out;
}

std::chrono::system_clock::time_point Client::disconnectedSince() const {
  std::lock_guard lk(mu_);
  return disconnected_since_;
}

std::string Client::lastError() const {
  std::lock_guard lk(mu_);
  return last_error_;
}

void Client::setError(const std::string& e) {
  std::lock_guard lk(mu_);
  last_error_ = e;
}

void Client::run() {
  auto logger = log::get("discovery");
  rpc::CallOptions call;
  call.target = config_.target;
  call.trust_anchor_pem = config_.trust_anchor_pem;
  call.path = "/sluice.api.v1.Discovery/Watch";
  call.idle_timeout = config_.idle_timeout;
  std::mt19937_64 rng(std::random_device{}());
  auto backoff = config_.initial_backoff;
  bool was_connected = false;
  std::string last_warned;  // the last failure logged at warn
  while (!stopping_) {
    call.metadata.clear();
    if (!config_.token.empty())
      call.metadata.emplace_back("authorization", "Bearer " + config_.token.get());
    sluice::api::v1::WatchRequest req;
    req.set_node(config_.node_name);
    // A fresh process resumes from nothing (even with a view loaded from
    // disk): that view is only an interim, and the control plane may have
    // restarted since it was written.
    req.set_resume_version(version_);
    req.set_resume_epoch(epoch_);
    sluice::api::v1::WatchResponse resp;
    std::string undecodable;
    rpc::Status status = rpc::call(
        call, req.SerializeAsString(),
        [&](const std::string& bytes) {
          if (!resp.ParseFromString(bytes)) {
            undecodable = "a Watch message from the control plane does not decode";
            return false;
          }
          if (!connected_) {
            logger->info(
                "{} control plane at {} (resuming from version {} of epoch {:x}; it is at "
                "version {} of epoch {:x}{})",
                was_connected ? "reconnected to" : "connected to", config_.target, version_.load(),
                epoch_.load(), resp.version(), resp.epoch(),
                resp.full() ? ", snapshot" : ", up to date");
            connected_ = was_connected = true;
            setError("");
            backoff = config_.initial_backoff;
          }
          bool changed;
          {
            std::lock_guard vl(view_mu_);
            changed = view_.apply(resp);
            version_ = resp.version();
            epoch_ = resp.epoch();
          }
          synced_ = true;
          if (changed && !config_.view_file.empty()) {
            std::lock_guard lk(mu_);
            view_dirty_ = true;
            persist_wake_.notify_all();
          }
          if (changed || resp.version() != 0) listener_.onView(view_, version_);
          return true;
        },
        &cancel_);
    if (stopping_) break;
    std::string err = !undecodable.empty() ? undecodable
                      : status.ok()        ? "stream ended"
                                           : status.message;
    if (connected_) {
      std::lock_guard lk(mu_);
      disconnected_since_ = std::chrono::system_clock::now();
    }
    if (connected_) {
      logger->warn("control plane at {} unreachable ({}); keeping the last view (version {})",
                   config_.target, err, version_.load());
      last_warned = err;
    } else if (err != last_warned) {
      // Said once per reason, also before the first connection (a wrong
      // address, a CA that does not match, a refused token).
      logger->warn("cannot reach the control plane at {}: {} (retrying with backoff)",
                   config_.target, err);
      last_warned = err;
    } else {
      logger->debug("control plane at {} still unreachable: {}", config_.target, err);
    }
    connected_ = false;
    setError(err);
    // Equal jitter: a uniform wait in the upper half of the backoff window.
    auto wait = std::chrono::milliseconds(
        std::uniform_int_distribution<long>(backoff.count() / 2, backoff.count())(rng));
    backoff = std::min(backoff * 2, config_.max_backoff);
    std::unique_lock lk(mu_);
    wake_.wait_for(lk, wait, [&] { return stopping_.load(); });
  }
}

void Client::stopPersisting() {
  std::lock_guard lk(mu_);
  persist_off_ = true;
  persist_wake_.notify_all();
}

void Client::persistLoop() {
  auto logger = log::get("discovery");
  std::unique_lock lk(mu_);
  std::chrono::steady_clock::time_point last_write{};
  bool written = false;
  while (true) {
    persist_wake_.wait(lk, [&] { return persist_stop_ || persist_off_ || view_dirty_; });
    if (persist_off_ || !view_dirty_) return;
    // At most one write per interval: the changes of a burst go out together.
    if (written)
      persist_wake_.wait_until(lk, last_write + config_.persist_interval,
                               [&] { return persist_stop_ || persist_off_; });
    if (persist_off_) return;
    view_dirty_ = false;
    lk.unlock();
    sluice::api::v1::WatchResponse snapshot;
    {
      // Copying is what holds the client thread up; serializing is done after.
      std::lock_guard vl(view_mu_);
      snapshot = snapshotOf(view_, version_, epoch_);
    }
    if (auto r = saveView(config_.view_file, snapshot.SerializeAsString()); !r)
      logger->error("cannot keep the view for the next start in {}: {}", config_.view_file,
                    r.error().describe());
    else
      logger->debug("view of version {} written to {}", snapshot.version(), config_.view_file);
    last_write = std::chrono::steady_clock::now();
    written = true;
    lk.lock();
  }
}

}  // namespace sluice::agent::discovery
