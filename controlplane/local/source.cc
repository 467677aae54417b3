#include "controlplane/local/source.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "sluice/common/addr.h"
#include "sluice/common/log.h"

namespace sluice::controlplane::local {

namespace fs = std::filesystem;

namespace {

auto logger() { return log::get("local-source"); }

std::string where(const YAML::Node& n) {
  auto m = n.Mark();
  return m.is_null() ? "" : fmt::format(" (line {})", m.line + 1);
}

Result<std::string> scalar(const YAML::Node& parent, const char* key, bool required,
                           const std::string& ctx) {
  YAML::Node n = parent[key];
  if (!n || n.IsNull()) {
    if (required) return fail(fmt::format("{}: '{}' is required", ctx, key));
    return std::string();
  }
  if (!n.IsScalar()) return fail(fmt::format("{}: '{}' must be a string{}", ctx, key, where(n)));
  return n.as<std::string>();
}

Result<std::map<std::string, std::string>> stringMap(const YAML::Node& parent, const char* key,
                                                     const std::string& ctx) {
  std::map<std::string, std::string> out;
  YAML::Node n = parent[key];
  if (!n || n.IsNull()) return out;
  if (!n.IsMap())
    return fail(fmt::format("{}: '{}' must be a map of strings{}", ctx, key, where(n)));
  for (const auto& kv : n) {
    if (!kv.first.IsScalar() || !kv.second.IsScalar())
      return fail(fmt::format("{}: '{}' must be a map of strings{}", ctx, key, where(kv.first)));
    out[kv.first.as<std::string>()] = kv.second.as<std::string>();
  }
  return out;
}

}  // namespace

Result<model::Objects> parseYaml(const std::string& text) {
  model::Objects objs;
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(text);
  } catch (const YAML::Exception& e) {
    return fail(fmt::format("YAML syntax error at line {}, column {}: {}", e.mark.line + 1,
                            e.mark.column + 1, e.msg));
  }
  std::set<std::string> uids;
  int index = 0;
  for (const auto& doc : docs) {
    ++index;
    if (!doc || doc.IsNull()) continue;
    std::string ctx = fmt::format("document {}", index);
    if (!doc.IsMap()) return fail(ctx + ": not a mapping");
    try {
      auto kind = scalar(doc, "kind", true, ctx);
      if (!kind) return tl::unexpected(kind.error());
      YAML::Node meta = doc["metadata"];
      if (*kind != "Namespace" && *kind != "Pod") {
        logger()->debug("{}: kind {} ignored", ctx, *kind);
        continue;
      }
      if (!meta || !meta.IsMap())
        return fail(fmt::format("{} ({}): 'metadata' must be a mapping", ctx, *kind));
      auto name = scalar(meta, "name", true, ctx + " metadata");
      if (!name) return tl::unexpected(name.error());
      if (name->empty()) return fail(ctx + ": metadata.name is empty");
      ctx = fmt::format("{} ({} {})", ctx, *kind, *name);
      auto labels = stringMap(meta, "labels", ctx + " metadata");
      if (!labels) return tl::unexpected(labels.error());
      if (*kind == "Namespace") {
        objs.namespaces.push_back({*name, *labels});
        continue;
      }
      model::Pod pod;
      pod.name = *name;
      pod.labels = *labels;
      auto ns = scalar(meta, "namespace", true, ctx + " metadata");
      if (!ns) return tl::unexpected(ns.error());
      pod.ns = *ns;
      auto uid = scalar(meta, "uid", false, ctx + " metadata");
      if (!uid) return tl::unexpected(uid.error());
      pod.uid = uid->empty() ? pod.ns + "/" + pod.name : *uid;
      if (!uids.insert(pod.uid).second)
        return fail(fmt::format("{}: duplicate uid {}", ctx, pod.uid));
      YAML::Node spec = doc["spec"];
      if (spec && !spec.IsNull()) {
        if (!spec.IsMap()) return fail(ctx + ": 'spec' must be a mapping");
        auto node = scalar(spec, "nodeName", false, ctx + " spec");
        if (!node) return tl::unexpected(node.error());
        pod.node = *node;
        auto sa = scalar(spec, "serviceAccountName", false, ctx + " spec");
        if (!sa) return tl::unexpected(sa.error());
        if (!sa->empty()) pod.service_account = *sa;
      }
      YAML::Node status = doc["status"];
      if (status && !status.IsNull()) {
        if (!status.IsMap()) return fail(ctx + ": 'status' must be a mapping");
        auto ip = scalar(status, "podIP", false, ctx + " status");
        if (!ip) return tl::unexpected(ip.error());
        if (!ip->empty()) pod.ips.push_back(*ip);
        YAML::Node ips = status["podIPs"];
        if (ips && !ips.IsNull()) {
          if (!ips.IsSequence()) return fail(ctx + ": status.podIPs must be a list");
          for (const auto& e : ips) {
            if (!e.IsMap()) return fail(ctx + ": status.podIPs entries must be {ip: ...}");
            auto v = scalar(e, "ip", true, ctx + " status.podIPs[]");
            if (!v) return tl::unexpected(v.error());
            if (std::find(pod.ips.begin(), pod.ips.end(), *v) == pod.ips.end())
              pod.ips.push_back(*v);
          }
        }
        for (const auto& a : pod.ips)
          if (!parseIp4(a) && a.find(':') == std::string::npos)
            return fail(fmt::format("{}: '{}' is not an IP address", ctx, a));
      }
      objs.pods.push_back(std::move(pod));
    } catch (const YAML::Exception& e) {
      return fail(fmt::format("{}: {}", ctx, e.what()));
    }
  }
  return objs;
}

Result<std::unique_ptr<DirectorySource>> DirectorySource::create(const std::string& dir,
                                                                 model::Store& store) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!fs::is_directory(dir, ec))
    return fail(fmt::format("--local-config {} is not a directory", dir));
  std::unique_ptr<DirectorySource> self(new DirectorySource(dir, store));
  self->inotify_ = UniqueFd(inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  if (!self->inotify_) return failErrno("inotify_init1 failed");
  if (inotify_add_watch(
          self->inotify_.get(), dir.c_str(),
          IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CREATE | IN_MODIFY) < 0)
    return failErrno(fmt::format("cannot watch {}", dir));
  self->wake_ = UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  self->rescan();
  DirectorySource* s = self.get();
  self->thread_ = std::thread([s] { s->watch(); });
  return self;
}

DirectorySource::~DirectorySource() {
  uint64_t one = 1;
  if (wake_) (void)!::write(wake_.get(), &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
}

void DirectorySource::watch() {
  char buf[8192];
  while (true) {
    pollfd fds[2] = {{inotify_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
    // The periodic rescan is a safety net for missed events (e.g. overflow).
    int n = ::poll(fds, 2, 2000);
    if (n > 0 && fds[1].revents) return;
    if (n > 0 && fds[0].revents) {
      while (::read(inotify_.get(), buf, sizeof(buf)) > 0) {
      }
    }
    rescan();
  }
}

void DirectorySource::rescan() {
  std::lock_guard lk(mu_);
  std::map<std::string, std::string> seen;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    auto ext = entry.path().extension().string();
    if (!entry.is_regular_file() || (ext != ".yaml" && ext != ".yml")) continue;
    std::ifstream in(entry.path());
    std::stringstream ss;
    ss << in.rdbuf();
    seen[entry.path().filename().string()] = ss.str();
  }
  for (const auto& [file, text] : seen) {
    auto old = contents_.find(file);
    if (old != contents_.end() && old->second == text) continue;
    contents_[file] = text;
    auto objs = parseYaml(text);
    Result<void> applied =
        objs ? store_.setSource(file, std::move(*objs)) : tl::unexpected(objs.error());
    if (!applied) {
      rejected_[file] = applied.error().describe();
      logger()->warn("rejected {}: {}; its last good content stays in effect",
                     (fs::path(dir_) / file).string(), rejected_[file]);
    } else {
      rejected_.erase(file);
      logger()->info("loaded {}", (fs::path(dir_) / file).string());
    }
  }
  for (auto it = contents_.begin(); it != contents_.end();) {
    if (!seen.count(it->first)) {
      store_.removeSource(it->first);
      rejected_.erase(it->first);
      logger()->info("removed {}", (fs::path(dir_) / it->first).string());
      it = contents_.erase(it);
    } else {
      ++it;
    }
  }
}

std::map<std::string, std::string> DirectorySource::rejected() const {
  std::lock_guard lk(mu_);
  return rejected_;
}

}  // namespace sluice::controlplane::local
