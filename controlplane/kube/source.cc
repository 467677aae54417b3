#include "controlplane/kube/source.h"

#include <algorithm>
#include <random>
#include <set>

#include "controlplane/kube/decode.h"
#include "controlplane/kube/policy_resources.h"
#include "controlplane/model/objects.h"
#include "sluice/common/fmt.h"
#include "sluice/common/log.h"

namespace sluice::controlplane::kube {

using json = nlohmann::json;

namespace {

auto logger() { return log::get("kubernetes"); }

void append(model::Objects& into, const model::Objects& one) {
  into.namespaces.insert(into.namespaces.end(), one.namespaces.begin(), one.namespaces.end());
  into.pods.insert(into.pods.end(), one.pods.begin(), one.pods.end());
  into.services.insert(into.services.end(), one.services.begin(), one.services.end());
  into.endpoint_slices.insert(into.endpoint_slices.end(), one.endpoint_slices.begin(),
                              one.endpoint_slices.end());
  into.authorization_policies.insert(into.authorization_policies.end(),
                                     one.authorization_policies.begin(),
                                     one.authorization_policies.end());
  into.peer_authentications.insert(into.peer_authentications.end(),
                                   one.peer_authentications.begin(),
                                   one.peer_authentications.end());
}

std::string article(std::string_view word) {
  return !word.empty() && std::string_view("AEIOU").find(word.front()) != std::string_view::npos
             ? "an "
             : "a ";
}

std::string statusMessage(const std::string& body) {
  auto j = json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("message") && j["message"].is_string())
    return j["message"].get<std::string>();
  return body.substr(0, 200);
}

}  // namespace

struct Source::Resource {
  std::string kind;
  std::string plural;         // for the log: "Pods", "AuthorizationPolicies (security.istio.io/v1)"
  std::string label;          // "a Pod", "an AuthorizationPolicy (security.istio.io/v1)"
  std::string path;           // collection path
  std::string api_version;    // custom resources: for items without one
  bool optional = false;      // a CRD: 404 (not installed) counts as empty
  bool write_status = false;  // write the Accepted condition (policies)
  std::map<std::string, model::Objects> objects;  // by objectKey, one object each
  std::set<std::string> stand_ins;                // keys whose object is a fail-closed stand-in
  std::map<std::string, std::string> invalid;     // key -> why its newest version was refused
  Status status;
  bool listed = false;
  bool unserved = false;  // the last list got 404 (an optional resource's CRD is not installed)
  std::chrono::milliseconds retry_after{0};  // the server's Retry-After; the run thread only
};

Source::Source(Client client, model::Store& store, SourceOptions options)
    : client_(std::move(client)), store_(store), options_(options) {
  for (auto [kind, path] :
       {std::pair{"Namespace", "/api/v1/namespaces"}, std::pair{"Pod", "/api/v1/pods"},
        std::pair{"Service", "/api/v1/services"},
        std::pair{"EndpointSlice", "/apis/discovery.k8s.io/v1/endpointslices"}}) {
    auto r = std::make_unique<Resource>();
    r->kind = kind;
    r->plural = std::string(kind) + "s";
    r->label = article(kind) + kind;
    r->path = path;
    resources_.push_back(std::move(r));
  }
  for (const auto& p : policyResources(options.watch_istio_policies)) {
    auto r = std::make_unique<Resource>();
    r->kind = p.kind;
    std::string group = fmt::format(" ({})", p.api_version);
    r->plural =
        (r->kind.ends_with('y') ? r->kind.substr(0, r->kind.size() - 1) + "ies" : r->kind + "s") +
        group;
    r->label = article(r->kind) + r->kind + group;
    r->path = p.path;
    r->api_version = p.api_version;
    r->optional = true;
    r->write_status = p.write_status;
    resources_.push_back(std::move(r));
  }
}

Result<std::unique_ptr<Source>> Source::create(Client client, model::Store& store,
                                               SourceOptions options) {
  if (client.config().server.empty()) return fail("no Kubernetes API server address");
  std::unique_ptr<Source> self(new Source(std::move(client), store, options));
  // Agents get no view and no certificate before the first whole list.
  store.expect(kSourceName);
  Source* s = self.get();
  for (auto& r : self->resources_) {
    Resource* res = r.get();
    self->threads_.emplace_back([s, res] { s->run(*res); });
  }
  self->threads_.emplace_back([s] { s->flushLoop(); });
  logger()->info(
      "watching Namespaces, Pods, Services, EndpointSlices, AuthorizationPolicies and "
      "PeerAuthentications ({}) at {}",
      options.watch_istio_policies ? "security.sluice.dev and security.istio.io"
                                   : "security.sluice.dev",
      self->client_.config().server);
  return self;
}

Source::~Source() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

bool Source::synced() const { return synced_; }

Source::Status Source::status(const std::string& kind) const {
  std::lock_guard lk(mu_);
  for (const auto& r : resources_)
    if (r->kind == kind) return r->status;
  return {};
}

std::string Source::nodeOfPod(const std::string& uid) const {
  std::lock_guard lk(mu_);
  for (const auto& r : resources_) {
    if (r->kind != "Pod") continue;
    auto it = r->objects.find("Pod " + uid);
    if (it != r->objects.end() && !it->second.pods.empty()) return it->second.pods[0].node;
  }
  return "";
}

bool Source::sleepFor(std::chrono::milliseconds d) {
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, d, [&] { return stopping_.load(); });
  return !stopping_;
}

void Source::setError(Resource& r, const std::string& e) {
  std::lock_guard lk(mu_);
  r.status.last_error = e;
}

void Source::httpError(Resource& r, const std::string& what, const Response& resp) {
  std::string e = fmt::format("{}: HTTP {}: {}{}", what, resp.status, statusMessage(resp.body),
                              resp.status == 401 || resp.status == 403
                                  ? " (check the token and the RBAC rules in deploy/)"
                                  : "");
  setError(r, e);
  logger()->warn("{}", e);
  // 429 Too Many Requests, 503 and the like: the server says when to come back.
  if (resp.retry_after_seconds >= 0)
    r.retry_after =
        std::max(r.retry_after, std::chrono::milliseconds(resp.retry_after_seconds * 1000));
}

void Source::markDirty() {
  dirty_ = true;  // under mu_
  cv_.notify_all();
}

void Source::run(Resource& r) {
  std::mt19937_64 rng(std::random_device{}());
  auto backoff = options_.initial_backoff;
  auto rest = [&]() {
    // Equal jitter (a uniform wait in the upper half of the window), then widen it.
    auto wait = std::chrono::milliseconds(
        std::uniform_int_distribution<long>(backoff.count() / 2, backoff.count())(rng));
    backoff = std::min(backoff * 2, options_.max_backoff);
    wait = std::max(wait, r.retry_after);  // never earlier than the server asked
    r.retry_after = std::chrono::milliseconds(0);
    return sleepFor(wait);
  };
  while (!stopping_) {
    bool need_list;
    {
      std::lock_guard lk(mu_);
      need_list = r.status.resource_version.empty();
    }
    if (need_list) {
      if (!list(r)) {
        if (!rest()) return;
        continue;
      }
      backoff = options_.initial_backoff;
    }
    bool got_any = false;
    if (!watch(r, got_any)) {
      std::lock_guard lk(mu_);
      r.status.resource_version.clear();  // relist
      continue;
    }
    if (stopping_) return;
    if (got_any) {
      backoff = options_.initial_backoff;
    } else if (!rest()) {
      return;
    }
  }
}

bool Source::list(Resource& r) {
  // A paged list is one consistent snapshot only if every page comes from
  // the revision of the first one. When the API server has compacted that
  // revision away, a continue page gets 410 Gone (reason Expired): the
  // pages read so far cannot be completed, so the list starts over without
  // `continue`. Only a complete list replaces the cache; until then the
  // previous one stays served.
  constexpr int kMaxRestarts = 3;
  std::map<std::string, model::Objects> fresh;
  std::set<std::string> fresh_stand_ins, fresh_invalid;
  std::string cont, rv;
  int restarts = 0;
  while (true) {
    std::string path = fmt::format("{}?limit={}", r.path, options_.page_size);
    if (!cont.empty()) path += "&continue=" + cont;
    auto resp = client_.get(path, options_.request_timeout.count());
    if (!resp) {
      setError(r, resp.error().describe());
      logger()->warn("listing {}: {}", r.plural, resp.error().describe());
      return false;
    }
    if (resp->status == 410 && !cont.empty()) {
      {
        std::lock_guard lk(mu_);
        r.status.expired++;
      }
      if (++restarts > kMaxRestarts) {
        std::string e = fmt::format(
            "listing {}: the API server expired the list's continue token {} times in a row "
            "(HTTP 410 Gone: it compacted the list's revision before all pages were read); "
            "the last complete list of {} stays in use; retrying",
            r.plural, restarts, r.plural);
        setError(r, e);
        logger()->warn("{}", e);
        return false;
      }
      logger()->info(
          "listing {}: the continue token expired after {} {} (HTTP 410 Gone); starting the "
          "list over from the first page",
          r.plural, fresh.size(), r.plural);
      fresh.clear();
      fresh_stand_ins.clear();
      fresh_invalid.clear();
      cont.clear();
      rv.clear();
      continue;
    }
    if (resp->status == 404 && r.optional) {
      // The CRD is not installed (or was removed, which deletes its
      // objects): no such objects. Checked again after a backoff.
      std::lock_guard lk(mu_);
      if (!r.unserved)
        logger()->warn(
            "{} is not served (HTTP 404): no {} until its CRD is installed "
            "(kubectl apply -k deploy/){}",
            r.path, r.plural,
            r.objects.empty()
                ? std::string()
                : fmt::format("; the {} held until now are dropped", r.objects.size()));
      r.unserved = true;
      r.objects.clear();
      r.stand_ins.clear();
      r.invalid.clear();
      r.listed = true;
      markDirty();
      return false;
    }
    if (resp->status != 200) {
      httpError(r, "listing " + r.plural, *resp);
      return false;
    }
    auto page = decodeListPage(resp->body, r.kind, r.api_version);
    if (!page) {
      setError(r, "listing " + r.plural + ": " + page.error().describe());
      logger()->warn("listing {}: {}", r.plural, page.error().describe());
      return false;
    }
    for (const auto& why : page->skipped) logger()->warn("skipping {}: {}", r.label, why);
    for (auto& [key, one] : page->objects) fresh[key] = std::move(one);
    {
      // An object that became invalid keeps its last good version, as in a
      // watch; without one, a policy's fail-closed stand-in enforces it.
      std::lock_guard lk(mu_);
      for (const auto& key : page->invalid_keys) fresh_invalid.insert(key);
      for (const auto& key : page->invalid_keys)
        if (auto old = r.objects.find(key); old != r.objects.end()) {
          fresh[key] = old->second;
          if (r.stand_ins.count(key)) fresh_stand_ins.insert(key);
        } else if (auto s = page->stand_ins.find(key); s != page->stand_ins.end()) {
          fresh[key] = std::move(s->second);
          fresh_stand_ins.insert(key);
        }
    }
    if (r.write_status)
      for (const auto& w : page->status_writes) writeStatus(client_, r.path, w);
    rv = page->resource_version;
    cont = page->continue_token;
    if (cont.empty()) break;
  }
  std::lock_guard lk(mu_);
  r.objects = std::move(fresh);
  r.stand_ins = std::move(fresh_stand_ins);
  std::erase_if(r.invalid, [&](const auto& kv) { return !fresh_invalid.count(kv.first); });
  r.status.resource_version = rv;
  r.status.lists++;
  r.status.last_error.clear();
  r.listed = true;
  if (r.unserved) logger()->info("{} is served again (its CRD is installed)", r.path);
  r.unserved = false;
  markDirty();
  logger()->info("listed {} {} (resourceVersion {}{})", r.objects.size(), r.plural, rv,
                 restarts ? fmt::format(", started over {} time{} after an expired continue token",
                                        restarts, restarts == 1 ? "" : "s")
                          : std::string());
  return true;
}

bool Source::watch(Resource& r, bool& got_any) {
  std::string rv;
  {
    std::lock_guard lk(mu_);
    rv = r.status.resource_version;
    r.status.watches++;
  }
  std::string path =
      fmt::format("{}?watch=1&allowWatchBookmarks=true&resourceVersion={}&timeoutSeconds={}",
                  r.path, rv, options_.watch_timeout_seconds);
  bool expired = false;
  auto on_line = [&](std::string_view line) -> bool {
    got_any = true;
    auto ev = decodeWatchEvent(line, r.kind, r.api_version);
    if (!ev) {
      std::lock_guard lk(mu_);
      r.status.malformed++;
      logger()->warn("{} watch: skipped a malformed event: {}", r.kind,
                     std::string(line.substr(0, 120)));
      return true;
    }
    if (ev->type == "ERROR") {
      if (ev->error_code == 410) {
        logger()->info("{} watch: resourceVersion {} expired (410 Gone); relisting", r.kind, rv);
        expired = true;
        return false;
      }
      std::string e = fmt::format("{} watch: error event: {}", r.kind, ev->error);
      logger()->warn("{}", e);
      setError(r, e);
      return false;  // reconnect
    }
    auto status_write = std::move(ev->status_write);
    bool go_on = apply(r, *ev);
    if (r.write_status && status_write) writeStatus(client_, r.path, *status_write);
    return go_on;
  };
  // The server ends the watch after timeoutSeconds; still open watch_grace
  // later (or no answer at all), it hangs.
  long timeout_ms = options_.watch_timeout_seconds * 1000L + options_.watch_grace.count();
  auto resp = client_.stream(path, on_line, stopping_, timeout_ms);
  if (expired || (resp && resp->status == 410)) {
    std::lock_guard lk(mu_);
    r.status.expired++;
  }
  if (expired) return false;
  if (!resp) {
    setError(r, resp.error().describe());
    logger()->warn("{} watch: {}; reconnecting", r.kind, resp.error().describe());
    return true;
  }
  if (!resp->broken.empty() && !stopping_) {
    std::string e = fmt::format("{} watch: {}", r.kind, resp->broken);
    setError(r, e);
    logger()->warn("{}; reconnecting", e);
  }
  if (resp->status == 410) {
    logger()->info("{} watch: resourceVersion {} expired (HTTP 410); relisting", r.kind, rv);
    return false;
  }
  if (resp->status == 404 && r.optional) {
    // Its CRD was removed since the list: the list says so, and keeps
    // looking for it after a backoff (a watch of it would 404 forever).
    logger()->info("{} watch: {} is no longer served (HTTP 404); relisting", r.kind, r.path);
    return false;
  }
  if (resp->status != 200) {
    got_any = false;
    httpError(r, r.kind + " watch", *resp);
  }
  return true;
}

bool Source::apply(Resource& r, WatchEvent& ev) {
  const std::string& rv = ev.resource_version;
  std::lock_guard lk(mu_);
  if (ev.type == "BOOKMARK") {
    if (!rv.empty()) r.status.resource_version = rv;
    r.status.bookmarks++;
    return true;
  }
  if (ev.type != "ADDED" && ev.type != "MODIFIED" && ev.type != "DELETED") {
    r.status.malformed++;
    logger()->warn("{} watch: skipped an event of unknown type {}", r.kind, ev.type);
    return true;
  }
  if (ev.type == "DELETED") {
    r.objects.erase(ev.key);
    r.stand_ins.erase(ev.key);
    r.invalid.erase(ev.key);
  } else {
    if (!ev.invalid.empty()) {
      r.status.malformed++;
      const bool good_kept = r.objects.count(ev.key) != 0 && r.stand_ins.count(ev.key) == 0;
      const bool stand_in = !good_kept && (!ev.stand_in.authorization_policies.empty() ||
                                           !ev.stand_in.peer_authentications.empty());
      // The same refusal again (the MODIFIED event of our own status write,
      // a relabel) is not news.
      auto& last = r.invalid[ev.key];
      logger()->log(last == ev.invalid ? spdlog::level::debug : spdlog::level::warn,
                    "{} watch: skipped an invalid object ({}): {}", r.kind,
                    good_kept  ? "its last good version stays in force"
                    : stand_in ? "no good version: enforced failing closed until it is fixed"
                               : "no good version: nothing of it is in force",
                    ev.invalid);
      last = ev.invalid;
      if (!rv.empty()) r.status.resource_version = rv;
      if (!stand_in) return true;
      r.objects[ev.key] = std::move(ev.stand_in);
      r.stand_ins.insert(ev.key);
      r.status.events++;
      markDirty();
      return true;
    }
    r.objects[ev.key] = std::move(ev.objects);
    r.stand_ins.erase(ev.key);
    r.invalid.erase(ev.key);
  }
  if (!rv.empty()) r.status.resource_version = rv;
  r.status.events++;
  markDirty();
  return true;
}

void Source::flushLoop() {
  while (true) {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || dirty_; });
      if (stopping_) return;
    }
    // Let a burst of events settle into one Store update.
    if (!sleepFor(options_.flush_delay)) return;
    model::Objects all;
    {
      std::lock_guard lk(mu_);
      bool ready = true;
      for (const auto& r : resources_) ready = ready && r->listed;
      if (!ready) {
        dirty_ = false;  // the last list marks it dirty again
        continue;
      }
      dirty_ = false;
      for (const auto& r : resources_)
        for (const auto& [key, one] : r->objects) append(all, one);
    }
    auto applied = store_.setSource(kSourceName, std::move(all));
    if (!applied)
      logger()->error("the cluster's objects were not applied: {}", applied.error().describe());
    if (!synced_.exchange(true)) logger()->info("initial view of the cluster applied");
  }
}

}  // namespace sluice::controlplane::kube
