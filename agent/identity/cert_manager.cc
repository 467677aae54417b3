#include "agent/identity/cert_manager.h"

#include <random>

#include "agent/rpc/call.h"
#include "sluice.pb.h"
#include "sluice/common/log.h"

namespace sluice::agent::identity {

namespace {
auto logger() { return log::get("certs"); }

std::string isoTime(std::chrono::system_clock::time_point t) {
  std::time_t tt = std::chrono::system_clock::to_time_t(t);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&tt));
  return buf;
}

int64_t unixSeconds(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}
}  // namespace

CertManager::CertManager(Signer& signer, CertManagerConfig config)
    : signer_(signer), config_(config) {
  thread_ = std::jthread([this] { run(); });
}

CertManager::~CertManager() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void CertManager::setIdentities(const std::set<std::string>& uris) {
  std::lock_guard lk(mu_);
  for (auto it = entries_.begin(); it != entries_.end();)
    it = uris.count(it->first) ? std::next(it) : entries_.erase(it);
  for (const auto& u : uris) entries_.try_emplace(u);
  wake_.notify_all();
}

void CertManager::retryNow() {
  std::lock_guard lk(mu_);
  auto now = std::chrono::system_clock::now();
  bool any = false;
  for (auto& [uri, e] : entries_) {
    if (e.state == "valid" || e.renew_at <= now) continue;
    e.renew_at = now;
    any = true;
  }
  if (any) wake_.notify_all();
}

std::shared_ptr<const Certified> CertManager::get(const std::string& uri) const {
  std::lock_guard lk(mu_);
  auto it = entries_.find(uri);
  return it == entries_.end() ? nullptr : it->second.current;
}

void CertManager::run() {
  std::unique_lock lk(mu_);
  while (!stopping_) {
    auto now = std::chrono::system_clock::now();
    std::string due;
    auto next = now + std::chrono::hours(1);
    for (const auto& [uri, e] : entries_) {
      if (e.renew_at <= now) {
        due = uri;
        break;
      }
      next = std::min(next, e.renew_at);
    }
    if (!due.empty()) {
      lk.unlock();
      refresh(due);  // the signing round trip runs without the lock
      lk.lock();
      continue;
    }
    wake_.wait_until(lk, next);
  }
}

void CertManager::refresh(const std::string& uri) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  auto key = x509::generateP256();
  Result<std::string> chain = fail("unset");
  if (!key) {
    chain = tl::unexpected(key.error());
  } else if (auto csr = x509::makeCsr(key->get(), uri); !csr) {
    chain = tl::unexpected(csr.error());
  } else {
    chain = signer_.sign(*csr, config_.ttl);
  }
  std::shared_ptr<Certified> fresh;
  if (chain) {
    auto certs = x509::parseChain(*chain);
    if (!certs) {
      chain = tl::unexpected(certs.error());
    } else if (x509::uriSan((*certs)[0].get()) != uri) {
      chain = fail("the CA returned a certificate for another identity");
    } else if (X509_check_private_key((*certs)[0].get(), key->get()) != 1) {
      chain = fail("the CA returned a certificate for another key");
    } else {
      fresh = std::make_shared<Certified>();
      fresh->identity = uri;
      fresh->key_pem = x509::privateKeyPem(key->get());
      fresh->chain_pem = *chain;
      fresh->not_before = x509::notBefore((*certs)[0].get());
      fresh->not_after = x509::notAfter((*certs)[0].get());
    }
  }
  std::lock_guard lk(mu_);
  auto it = entries_.find(uri);
  if (it == entries_.end()) return;  // no longer wanted
  Entry& e = it->second;
  auto now = std::chrono::system_clock::now();
  if (fresh) {
    // Half of the validity left at issuance (not from notBefore: the CA
    // backdates it for clock skew), +/- 10% of that so renewals spread out.
    auto life = fresh->not_after - std::max(now, fresh->not_before);
    auto jitter_range = std::chrono::duration_cast<std::chrono::milliseconds>(life / 10).count();
    auto jitter = std::chrono::milliseconds(
        jitter_range > 0 ? std::uniform_int_distribution<long>(-jitter_range, jitter_range)(rng)
                         : 0);
    e.renew_at = std::max(now, fresh->not_before) + life / 2 + jitter;
    auto certs = x509::parseChain(fresh->chain_pem);
    e.serial = x509::serialHex((*certs)[0].get());
    e.current = fresh;
    e.state = "valid";
    e.last_error.clear();
    e.backoff = std::chrono::milliseconds(0);
    logger()->info("certificate for {} issued (serial {}, expires {}, renews {})", uri, e.serial,
                   isoTime(fresh->not_after), isoTime(e.renew_at));
  } else {
    e.backoff = e.backoff.count() == 0 ? config_.initial_backoff
                                       : std::min(e.backoff * 2, config_.max_backoff);
    e.renew_at = now + e.backoff;
    e.state = e.current ? "retrying" : "pending";
    e.last_error = chain.error().describe();
    logger()->warn("certificate for {} not obtained ({}); retrying in {} ms{}", uri, e.last_error,
                   e.backoff.count(), e.current ? " while the current one keeps serving" : "");
  }
}

nlohmann::json certificateJson(X509* cert) {
  return {{"subject", x509::subjectText(cert)},
          {"not_after", isoTime(x509::notAfter(cert))},
          {"not_after_unix", unixSeconds(x509::notAfter(cert))}};
}

nlohmann::json CertManager::dump() const {
  std::lock_guard lk(mu_);
  nlohmann::json out = nlohmann::json::array();
  auto now = std::chrono::system_clock::now();
  for (const auto& [uri, e] : entries_) {
    nlohmann::json j{
        {"identity", uri}, {"state", e.state}, {"serial", e.serial}, {"error", e.last_error}};
    if (e.current) {
      j["not_before"] = isoTime(e.current->not_before);
      j["not_after"] = isoTime(e.current->not_after);
      j["not_after_unix"] = unixSeconds(e.current->not_after);
      // The issuers the leaf was sent with (sluicectl check: CA expiry).
      nlohmann::json chain = nlohmann::json::array();
      if (auto certs = x509::parseChain(e.current->chain_pem); certs)
        for (size_t i = 1; i < certs->size(); ++i)
          chain.push_back(certificateJson((*certs)[i].get()));
      j["chain"] = chain;
    }
    j["renews_in_seconds"] =
        std::chrono::duration_cast<std::chrono::seconds>(e.renew_at - now).count();
    out.push_back(j);
  }
  return {{"certificates", out}};
}

std::string CertManager::renewalNote() const {
  std::lock_guard lk(mu_);
  std::string out;
  size_t n = 0;
  for (const auto& [uri, e] : entries_) {
    if (e.state != "retrying" || !e.current) continue;
    if (n++ == 0)
      out = fmt::format("certificate of {} not renewed ({}); the current one serves until {}", uri,
                        e.last_error, isoTime(e.current->not_after));
  }
  if (n > 1) out += fmt::format(" (and {} more identities)", n - 1);
  return out;
}

std::map<std::string, std::chrono::system_clock::time_point> CertManager::expiries() const {
  std::lock_guard lk(mu_);
  std::map<std::string, std::chrono::system_clock::time_point> out;
  for (const auto& [uri, e] : entries_)
    if (e.current) out.emplace(uri, e.current->not_after);
  return out;
}

struct GrpcSigner::Impl {
  rpc::CallOptions call;
  BearerToken token;
};

GrpcSigner::GrpcSigner(const std::string& target, const std::string& trust_anchor_pem,
                       BearerToken token)
    : impl_(std::make_unique<Impl>()) {
  impl_->call.target = target;
  impl_->call.trust_anchor_pem = trust_anchor_pem;
  impl_->call.path = "/sluice.api.v1.Certificates/Sign";
  impl_->call.deadline = std::chrono::seconds(10);
  impl_->token = std::move(token);
}

GrpcSigner::~GrpcSigner() = default;

Result<std::string> GrpcSigner::sign(const std::string& csr_pem, std::chrono::seconds ttl) {
  rpc::CallOptions call = impl_->call;
  if (!impl_->token.empty())
    call.metadata.emplace_back("authorization", "Bearer " + impl_->token.get());
  sluice::api::v1::SignRequest req;
  req.set_csr_pem(csr_pem);
  req.set_ttl_seconds(ttl.count());
  sluice::api::v1::SignResponse resp;
  int answers = 0;
  rpc::Status status = rpc::call(call, req.SerializeAsString(), [&](const std::string& bytes) {
    ++answers;
    return resp.ParseFromString(bytes);
  });
  if (!status.ok()) return fail("Certificates.Sign: " + status.message);
  if (answers != 1)
    return fail(fmt::format("Certificates.Sign: {} answers, expected one", answers));
  return resp.chain_pem();
}

}  // namespace sluice::agent::identity
