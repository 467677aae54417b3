#include "agent/discovery/client.h"

#include <random>

#include "sluice/common/log.h"

namespace sluice::agent::discovery {

Result<std::unique_ptr<Client>> Client::create(const ClientConfig& config, Listener& listener) {
  if (config.target.empty()) return fail("control plane address is empty");
  if (config.node_name.empty()) return fail("node name is empty");
  if (config.trust_anchor_pem.empty())
    return fail("no trust anchor to verify the control plane with");
  std::unique_ptr<Client> self(new Client(config, listener));
  Client* c = self.get();
  self->thread_ = std::thread([c] { c->run(); });
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
}

bool View::apply(const sluice::api::v1::WatchResponse& resp) {
  if (resp.full()) {
    workloads.clear();
    services.clear();
  }
  for (const auto& w : resp.upserts()) workloads[w.uid()] = w;
  for (const auto& uid : resp.removed_uids()) workloads.erase(uid);
  for (const auto& s : resp.services()) services[s.namespace_() + "/" + s.name()] = s;
  for (const auto& key : resp.removed_services()) services.erase(key);
  return resp.full() || resp.upserts_size() > 0 || resp.removed_uids_size() > 0 ||
         resp.services_size() > 0 || resp.removed_services_size() > 0;
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
  while (!stopping_) {
    call.metadata.clear();
    if (!config_.token.empty())
      call.metadata.emplace_back("authorization", "Bearer " + config_.token.get());
    sluice::api::v1::WatchRequest req;
    req.set_node(config_.node_name);
    req.set_resume_version(version_);
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
            logger->info("{} control plane at {} (resuming from version {})",
                         was_connected ? "reconnected to" : "connected to", config_.target,
                         version_.load());
            connected_ = was_connected = true;
            setError("");
            backoff = config_.initial_backoff;
          }
          bool changed = view_.apply(resp);
          version_ = resp.version();
          synced_ = true;
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
    if (connected_)
      logger->warn("control plane at {} unreachable ({}); keeping the last view (version {})",
                   config_.target, err, version_.load());
    else
      logger->debug("control plane at {} still unreachable: {}", config_.target, err);
    connected_ = false;
    setError(err);
    // Full jitter over the current backoff window.
    auto wait = std::chrono::milliseconds(
        std::uniform_int_distribution<long>(backoff.count() / 2, backoff.count())(rng));
    backoff = std::min(backoff * 2, config_.max_backoff);
    std::unique_lock lk(mu_);
    wake_.wait_for(lk, wait, [&] { return stopping_.load(); });
  }
}

}  // namespace sluice::agent::discovery
