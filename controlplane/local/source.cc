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

#include "controlplane/model/objects.h"
#include "sluice/common/log.h"

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
  model::Objects objs;
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
    size_t pods_before = objs.pods.size();
    auto added = model::addObject(toJson(doc), objs, ctx);
    if (!added) return tl::unexpected(added.error());
    if (objs.pods.size() > pods_before && !uids.insert(objs.pods.back().uid).second)
      return fail(fmt::format("{}: duplicate uid {}", ctx, objs.pods.back().uid));
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
