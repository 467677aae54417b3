#include "controlplane/local/source.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/parser.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "common/policy/wire.h"
#include "controlplane/model/objects.h"
#include "controlplane/model/policies.h"
#include "controlplane/model/proto_equal.h"
#include "sluice/common/log.h"
#include "sluice/common/suggest.h"

namespace sluice::controlplane::local {

namespace fs = std::filesystem;

namespace {

auto logger() { return log::get("local-source"); }

// yaml-cpp 0.7 (Debian 12) never ends YAML::LoadAll on a ',' where a
// document's node should start (",", "[a] ,b", "---\n,"): the parser
// returns an empty document without consuming the token, forever, and
// LoadAll keeps them all until memory runs out (found by tests/fuzz). A dry
// run with a handler that keeps nothing counts the documents: a real one
// consumes at least one character, so more documents than characters is that
// loop, refused as a syntax error.
struct DiscardEvents : YAML::EventHandler {
  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

// YAML::LoadAll, or a YAML::Exception.
std::vector<YAML::Node> loadAll(const std::string& text) {
  std::istringstream in(text);
  YAML::Parser parser(in);
  DiscardEvents discard;
  for (size_t docs = 0; parser.HandleNextDocument(discard);)
    if (++docs > text.size() + 1)
      throw YAML::ParserException(YAML::Mark::null_mark(),
                                  "',' where a document should start (yaml-cpp cannot parse this)");
  return YAML::LoadAll(text);
}

// YAML -> JSON with the YAML 1.2 core schema for plain scalars (quoted
// scalars stay strings), so both sources share one object parser.
nlohmann::json toJson(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map: {
      auto out = nlohmann::json::object();
      for (const auto& kv : n) out[kv.first.Scalar()] = toJson(kv.second);
      return out;
    }
    case YAML::NodeType::Sequence: {
      auto out = nlohmann::json::array();
      for (const auto& e : n) out.push_back(toJson(e));
      return out;
    }
    case YAML::NodeType::Scalar: {
      const std::string& v = n.Scalar();
      if (n.Tag() == "!") return v;  // quoted
      if (v == "true" || v == "True" || v == "TRUE") return true;
      if (v == "false" || v == "False" || v == "FALSE") return false;
      if (v == "null" || v == "Null" || v == "NULL" || v == "~") return nullptr;
      if (!v.empty() && v.size() < 19 &&
          v.find_first_not_of("0123456789", v[0] == '-' || v[0] == '+' ? 1 : 0) ==
              std::string::npos &&
          v != "-" && v != "+")
        return std::stoll(v);
      return v;
    }
    default:
      return nullptr;
  }
}

}  // namespace

Result<model::Objects> parseYaml(const std::string& text) {
  auto parsed = parseFile(text);
  if (!parsed) return tl::unexpected(parsed.error());
  if (!parsed->rejected_policies.empty()) return fail(parsed->rejected_policies[0].second);
  return std::move(parsed->objects);
}

FileCheck checkFile(const std::string& text) {
  FileCheck out;
  auto parsed = parseFile(text);
  if (!parsed) {
    out.ok = false;
    out.lines.push_back("rejected: " + parsed.error().describe());
    return out;
  }
  auto found = [&](const char* kind, const auto& p) {
    out.lines.push_back(fmt::format("valid {} {}/{}", kind, p.ns, p.name));
    for (const auto& w : p.warnings)
      out.lines.push_back(fmt::format("warning {} {}/{}: {}", kind, p.ns, p.name, w));
  };
  for (const auto& p : parsed->objects.authorization_policies) found("AuthorizationPolicy", p);
  for (const auto& p : parsed->objects.peer_authentications) found("PeerAuthentication", p);
  for (const auto& [key, why] : parsed->rejected_policies) {
    out.ok = false;
    out.lines.push_back(key.empty() ? "rejected: " + why
                                    : fmt::format("rejected {}: {}", key, why));
  }
  return out;
}

Result<ParsedFile> parseFile(const std::string& text) {
  ParsedFile out;
  model::Objects& objs = out.objects;
  std::vector<YAML::Node> docs;
  try {
    docs = loadAll(text);
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
    if (doc.Mark().line >= 0) ctx += fmt::format(" (line {})", doc.Mark().line + 1);
    if (doc["kind"] && !doc["kind"].IsScalar()) return fail(ctx + ": 'kind' must be a string");
    const std::string kind = doc["kind"] ? doc["kind"].Scalar() : "";
    if (!model::knownKind(kind)) {
      // Other kinds are not ours and are left alone, but a near miss of
      // one is a typo that would drop the object unseen.
      const char* near = closestWord(kind, {"AuthorizationPolicy", "PeerAuthentication"});
      for (const char* k : {"Namespace", "Pod", "Service", "EndpointSlice"})
        if (!near && editDistance(kind, k) == 0) near = k;  // case aside
      if (near)
        return fail(fmt::format("{}: kind \"{}\" is not one Sluice reads (did you mean \"{}\"?)",
                                ctx, kind, near));
    } else if (model::isPolicyKind(kind) && !model::isPolicy(doc)) {
      // A policy kind of another API group is someone else's and left
      // alone; a near miss of ours (or none) is a typo that would leave the
      // policy out of force without a word.
      const YAML::Node api = doc["apiVersion"];
      std::string version = api && api.IsScalar() ? api.Scalar() : "";
      std::string group = version.substr(0, version.find('/'));
      if (group.empty() || closestWord(group, {"security.sluice.dev", "security.istio.io"})) {
        std::string why = fmt::format(
            "apiVersion \"{}\" is not one Sluice reads {} from: use security.sluice.dev/v1 (or "
            "security.istio.io/v1, v1beta1)",
            version, kind);
        out.rejected_policies.emplace_back(model::policyKey(doc), fmt::format("{}: {}", ctx, why));
        model::addStandIn(doc, why, out.stand_ins);  // fails closed, as any refused policy
        continue;
      }
    }
    if (model::isPolicy(doc)) {
      if (auto ok = model::addPolicy(doc, objs); !ok) {
        out.rejected_policies.emplace_back(model::policyKey(doc),
                                           fmt::format("{}: {}", ctx, ok.error().describe()));
        model::addStandIn(doc, ok.error().describe(), out.stand_ins);
      }
      continue;
    }
    size_t pods_before = objs.pods.size();
    auto added = model::addObject(toJson(doc), objs, ctx);
    if (!added) return tl::unexpected(added.error());
    if (objs.pods.size() > pods_before && !uids.insert(objs.pods.back().uid).second)
      return fail(fmt::format("{}: duplicate uid {}", ctx, objs.pods.back().uid));
  }
  return out;
}

Result<std::unique_ptr<DirectorySource>> DirectorySource::create(const std::string& dir,
                                                                 model::Store& store) {
  // Never created here: a mistyped path would serve an empty mesh.
  std::error_code ec;
  if (!fs::exists(dir, ec))
    return fail(fmt::format(
        "--local-config {}: no such directory (create it first; an empty directory is an "
        "empty mesh)",
        dir));
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
  self->thread_ = std::jthread([s] { s->watch(); });
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
    auto parsed = parseFile(text);
    if (!parsed) {
      rejected_[file] = parsed.error().describe();
      logger()->warn("rejected {}: {}; its last good content stays in effect",
                     (fs::path(dir_) / file).string(), rejected_[file]);
      continue;
    }
    apply(file, std::move(*parsed));
  }
  for (auto it = contents_.begin(); it != contents_.end();) {
    if (!seen.count(it->first)) {
      store_.removeSource(it->first);
      rejected_.erase(it->first);
      for (auto* m : {&rejected_policies_, &warned_})
        std::erase_if(*m, [&](const auto& kv) { return kv.first.starts_with(it->first + " "); });
      applied_policies_.erase(it->first);
      logger()->info("removed {}", (fs::path(dir_) / it->first).string());
      it = contents_.erase(it);
    } else {
      ++it;
    }
  }
}

namespace {

template <typename Policy>
const Policy* findPolicy(const std::vector<Policy>& in, const std::string& key) {
  for (const auto& p : in)
    if (key.ends_with(" " + p.ns + "/" + p.name)) return &p;
  return nullptr;
}

}  // namespace

void DirectorySource::apply(const std::string& file, ParsedFile parsed) {
  const std::string path = (fs::path(dir_) / file).string();
  std::erase_if(rejected_policies_,
                [&](const auto& kv) { return kv.first.starts_with(file + " "); });
  model::Objects& objs = parsed.objects;
  const model::Objects& last = applied_policies_[file];
  std::set<std::string> stood_in;  // policyKey of each stand-in in force
  for (const auto& rejected : parsed.rejected_policies) {
    const std::string& key = rejected.first;  // a plain reference: lambdas capture it
    const std::string& why = rejected.second;
    // Its last good version, else its fail-closed stand-in (stand_in.h).
    const char* kept = nullptr;
    auto keep = [&](const auto& last_good, const auto& stand_ins, auto& into) {
      if (const auto* p = findPolicy(last_good, key)) {
        into.push_back(*p);
        kept = "its last good version stays in force";
      } else if (const auto* s = findPolicy(stand_ins, key)) {
        into.push_back(*s);
        stood_in.insert(key);  // never a "last good version" itself
        kept =
            "it had no good version: it is enforced failing closed until it is fixed (the "
            "policy's warning in sluicectl policies says how)";
      }
    };
    if (key.starts_with("AuthorizationPolicy "))
      keep(last.authorization_policies, parsed.stand_ins.authorization_policies,
           objs.authorization_policies);
    else
      keep(last.peer_authentications, parsed.stand_ins.peer_authentications,
           objs.peer_authentications);
    rejected_policies_[file + " " + key] = why;
    logger()->warn("rejected a policy in {}: {}; {}", path, why,
                   kept ? kept
                        : "it had no good version and decides for no workload (AUDIT, dry-run or "
                          "targetRef), so nothing of it is enforced; fix the field and save the "
                          "file again");
  }
  model::Objects policies;
  auto good = [&](const char* kind, const auto& all, auto& into) {
    for (const auto& p : all)
      if (!stood_in.count(fmt::format("{} {}/{}", kind, p.ns, p.name))) into.push_back(p);
  };
  good("AuthorizationPolicy", objs.authorization_policies, policies.authorization_policies);
  good("PeerAuthentication", objs.peer_authentications, policies.peer_authentications);
  Result<void> applied = store_.setSource(file, std::move(objs));
  if (!applied) {
    rejected_[file] = applied.error().describe();
    logger()->warn("rejected {}: {}; its last good content stays in effect", path, rejected_[file]);
    return;
  }
  rejected_.erase(file);
  logWarnings(file, policies);
  applied_policies_[file] = std::move(policies);
  logger()->info("loaded {}", path);
}

void DirectorySource::logWarnings(const std::string& file, const model::Objects& objects) {
  const std::string path = (fs::path(dir_) / file).string();
  auto once = [&](const char* kind, const auto& p, const google::protobuf::MessageLite& wire) {
    std::string key = fmt::format("{} {} {}/{}", file, kind, p.ns, p.name);
    std::string version = model::canonical(wire);
    if (p.warnings.empty() || warned_[key] == version) return;
    warned_[key] = version;
    for (const auto& w : p.warnings)
      logger()->warn("{} {}/{} in {}: {}", kind, p.ns, p.name, path, w);
  };
  for (const auto& p : objects.authorization_policies) {
    api::v1::AuthorizationPolicy wire;
    policy::toProto(p, &wire);
    once("AuthorizationPolicy", p, wire);
  }
  for (const auto& p : objects.peer_authentications) {
    api::v1::PeerAuthentication wire;
    policy::toProto(p, &wire);
    once("PeerAuthentication", p, wire);
  }
}

std::map<std::string, std::string> DirectorySource::rejectedPolicies() const {
  std::lock_guard lk(mu_);
  return rejected_policies_;
}

std::map<std::string, std::string> DirectorySource::rejected() const {
  std::lock_guard lk(mu_);
  return rejected_;
}

}  // namespace sluice::controlplane::local
