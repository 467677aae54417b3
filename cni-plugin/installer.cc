#include "cni-plugin/installer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cni-plugin/config.h"
#include "sluice/common/json_text.h"
#include "sluice/common/log.h"
#include "sluice/common/unique_fd.h"

namespace sluice::cni {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

namespace {

constexpr size_t kMaxConfigBytes = 1 << 20;
// Temporary files end in this, which no runtime reads as a network config.
constexpr const char* kTmpSuffix = ".sluice-tmp";

// Go's filepath.Ext, which libcni matches against: from the last '.' of the
// name (so ".conf" alone has extension ".conf", unlike std::filesystem).
std::string goExt(const fs::path& p) {
  std::string name = p.filename().string();
  auto dot = name.rfind('.');
  return dot == std::string::npos ? std::string() : name.substr(dot);
}

bool isConfigName(const fs::path& p) {
  std::string ext = goExt(p);
  return ext == ".conflist" || ext == ".conf" || ext == ".json";
}

// Every network-config file of dir, sorted by name as Go's sort.Strings does.
Result<std::vector<fs::path>> listConfigs(const fs::path& dir) {
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec)
    return fail(fmt::format("cannot list the CNI config dir {}: {}", dir.string(), ec.message()),
                ec.value());
  std::vector<fs::path> out;
  for (const auto& entry : it) {
    if (!isConfigName(entry.path())) continue;
    std::error_code dir_ec;
    if (fs::is_directory(entry.path(), dir_ec)) continue;  // libcni skips directories
    out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end(), [](const fs::path& a, const fs::path& b) {
    return a.filename().string() < b.filename().string();
  });
  return out;
}

Result<std::string> readSmallFile(const fs::path& p) {
  UniqueFd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return failErrno("cannot open " + p.string());
  std::string out;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return failErrno("cannot read " + p.string());
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > kMaxConfigBytes) return fail(p.string() + " is larger than 1 MiB");
  }
  return out;
}

Result<ordered_json> readJson(const fs::path& p) {
  auto text = readSmallFile(p);
  if (!text) return tl::unexpected(text.error());
  // The parser's exception carries the line and column; it does not escape this function.
  try {
    return ordered_json::parse(*text);
  } catch (const ordered_json::parse_error& e) {
    std::string what = e.what();
    // "[json.exception.parse_error.101] parse error at line 3, column 1: ..." -> from "parse error"
    auto at = what.find("parse error");
    return fail(fmt::format("{} is not valid JSON ({})", p.string(),
                            at == std::string::npos ? what : what.substr(at)));
  }
}

Result<mode_t> fileMode(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return failErrno("cannot stat " + p.string());
  return st.st_mode & 07777;
}

Result<void> fsyncDir(const fs::path& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd || ::fsync(fd.get()) != 0) return failErrno("cannot fsync " + dir.string());
  return {};
}

// Writes `content` to `target` through a temporary file in the same directory
// and rename(2), so that a runtime reading the directory at any moment sees
// either the old file or the new one, never a partial one.
Result<void> writeAtomic(const fs::path& target, const std::string& content, mode_t mode) {
  fs::path tmp = target.parent_path() / ("." + target.filename().string() + kTmpSuffix);
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return failErrno("cannot create " + tmp.string());
  auto cleanup = [&](Error e) {
    ::unlink(tmp.c_str());
    return tl::unexpected(std::move(e));
  };
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = ::write(fd.get(), content.data() + off, content.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return cleanup({errno, "cannot write " + tmp.string()});
    }
    off += static_cast<size_t>(n);
  }
  if (::fchmod(fd.get(), mode) != 0) return cleanup({errno, "cannot chmod " + tmp.string()});
  if (::fsync(fd.get()) != 0) return cleanup({errno, "cannot fsync " + tmp.string()});
  fd.reset();
  if (::rename(tmp.c_str(), target.c_str()) != 0)
    return cleanup({errno, "cannot rename " + tmp.string() + " to " + target.string()});
  return fsyncDir(target.parent_path());
}

std::string render(const ordered_json& j) { return jsonText(j, 2) + "\n"; }

bool isOurs(const ordered_json& plugin) {
  return plugin.is_object() && plugin.contains("type") && plugin["type"] == kPluginType;
}

bool hasOurEntry(const ordered_json& conflist) {
  const auto& plugins = conflist["plugins"];
  return std::any_of(plugins.begin(), plugins.end(), isOurs);
}

// A conflist runtimes accept: an object whose "plugins" is an array of objects
// with a string "type". Returns what is wrong, or nothing.
std::optional<std::string> conflistProblem(const ordered_json& j) {
  if (!j.is_object()) return "is not a JSON object";
  if (!j.contains("plugins") || !j["plugins"].is_array()) return "has no 'plugins' array";
  if (j["plugins"].empty()) return "has an empty 'plugins' array";
  for (const auto& p : j["plugins"])
    if (!p.is_object() || !p.contains("type") || !p["type"].is_string())
      return "has a 'plugins' entry without a string 'type'";
  return std::nullopt;
}

std::string cniVersionOf(const ordered_json& j) {
  if (j.contains("cniVersion") && j["cniVersion"].is_string())
    return j["cniVersion"].get<std::string>();
  return "";
}

}  // namespace

Result<std::optional<fs::path>> findPrimaryConfig(const fs::path& dir) {
  auto files = listConfigs(dir);
  if (!files) return tl::unexpected(files.error());
  if (files->empty()) return std::optional<fs::path>();
  return std::optional<fs::path>(files->front());
}

ordered_json unchainedConflist(const ordered_json& conflist) {
  ordered_json out = conflist;
  ordered_json plugins = ordered_json::array();
  for (const auto& p : conflist["plugins"])
    if (!isOurs(p)) plugins.push_back(p);
  out["plugins"] = std::move(plugins);
  return out;
}

ordered_json chainedConflist(const ordered_json& conflist, const ordered_json& entry) {
  ordered_json out = unchainedConflist(conflist);
  out["plugins"].push_back(entry);
  return out;
}

ordered_json conflistFromConf(const ordered_json& conf, const std::string& original_name) {
  ordered_json out = ordered_json::object();
  if (conf.contains("cniVersion")) out["cniVersion"] = conf["cniVersion"];
  if (conf.contains("name")) out["name"] = conf["name"];
  out["plugins"] = ordered_json::array({conf});
  out[kConvertedFromKey] = original_name;
  return out;
}

Installer::Installer(InstallerOptions options)
    : options_(std::move(options)), log_(log::get("cni-installer")) {}

Result<bool> Installer::installBinary(bool force) {
  const fs::path dest = options_.bin_dir / kPluginType;
  std::error_code ec;
  if (fs::exists(dest, ec) && fs::equivalent(options_.source_binary, dest, ec)) return false;
  if (!force) {
    std::error_code src_ec, dest_ec;
    auto src_size = fs::file_size(options_.source_binary, src_ec);
    auto dest_size = fs::file_size(dest, dest_ec);
    if (!src_ec && !dest_ec && src_size == dest_size) return false;
  }
  UniqueFd in(::open(options_.source_binary.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return failErrno("cannot open the source binary " + options_.source_binary.string());
  fs::path tmp = options_.bin_dir / (std::string(".") + kPluginType + kTmpSuffix);
  UniqueFd out(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0700));
  if (!out)
    return failErrno(fmt::format("cannot create {} (is the node's CNI bin dir mounted writable?)",
                                 tmp.string()));
  auto cleanup = [&](Error e) {
    ::unlink(tmp.c_str());
    return tl::unexpected(std::move(e));
  };
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(in.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return cleanup({errno, "cannot read " + options_.source_binary.string()});
    if (n == 0) break;
    for (ssize_t off = 0; off < n;) {
      ssize_t w = ::write(out.get(), buf + off, static_cast<size_t>(n - off));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) return cleanup({errno, "cannot write " + tmp.string()});
      off += w;
    }
  }
  if (::fchmod(out.get(), 0755) != 0) return cleanup({errno, "cannot chmod " + tmp.string()});
  if (::fsync(out.get()) != 0) return cleanup({errno, "cannot fsync " + tmp.string()});
  out.reset();
  // rename(2) replaces a binary that a runtime may be executing right now; an
  // in-place write would fail with ETXTBSY or corrupt it.
  if (::rename(tmp.c_str(), dest.c_str()) != 0)
    return cleanup({errno, "cannot rename " + tmp.string() + " to " + dest.string()});
  if (auto r = fsyncDir(options_.bin_dir); !r) return tl::unexpected(r.error());
  return true;
}

Result<ChainPlan> Installer::plan() const {
  auto files = listConfigs(options_.conf_dir);
  if (!files) return tl::unexpected(files.error());
  ChainPlan plan;
  ChainStatus& st = plan.status;
  if (files->empty()) {
    st.state = ChainState::kNoPrimaryConfig;
    st.detail = fmt::format(
        "no CNI network configuration (*.conflist, *.conf, *.json) in {} yet; waiting for the "
        "cluster's primary CNI to write one",
        options_.conf_dir.string());
    return plan;
  }
  const fs::path primary = files->front();
  st.file = primary;
  auto unusable = [&](std::string why) {
    st.state = ChainState::kUnusable;
    st.detail = std::move(why) +
                "; it is left untouched and sluice-cni is NOT chained until it "
                "is fixed (pods on this node start without the mesh)";
    return plan;
  };
  auto parsed = readJson(primary);
  if (!parsed) return unusable(parsed.error().describe());
  const bool is_list = goExt(primary) == ".conflist";
  ordered_json list;
  if (is_list) {
    if (auto problem = conflistProblem(*parsed))
      return unusable(fmt::format("{} {}, so it is not a CNI network configuration list",
                                  primary.string(), *problem));
    list = *parsed;
  } else {
    if (!parsed->is_object() || !parsed->contains("type") || !(*parsed)["type"].is_string())
      return unusable(
          fmt::format("{} has no string 'type', so it is not a CNI network "
                      "configuration",
                      primary.string()));
    if ((*parsed)["type"] == kPluginType)
      return unusable(
          fmt::format("{} configures sluice-cni alone; sluice-cni is a chained "
                      "plugin and needs a primary CNI before it",
                      primary.string()));
    list = conflistFromConf(*parsed, primary.filename().string());
  }
  if (unchainedConflist(list)["plugins"].empty())
    return unusable(
        fmt::format("{} lists no plugin but sluice-cni; sluice-cni is a chained "
                    "plugin and needs a primary CNI before it",
                    primary.string()));
  std::string version = cniVersionOf(list);
  if (!supportedVersion(version)) {
    st.state = ChainState::kUnsupportedVersion;
    st.detail = fmt::format(
        "{} declares cniVersion '{}' but sluice-cni speaks {}; it is left untouched and pods on "
        "this node start WITHOUT the mesh (chaining would make every pod creation fail). "
        "Configure the primary CNI to write one of those",
        primary.string(), version, fmt::join(kSupportedVersions, ", "));
    return plan;
  }
  st.state = ChainState::kChained;
  plan.desired = chainedConflist(list, options_.plugin_entry);
  if (is_list) {
    plan.target = primary;
    // Chained exactly once, as the last plugin (its options may differ).
    const auto& plugins = (*parsed)["plugins"];
    plan.already_chained = hasOurEntry(*parsed) &&
                           unchainedConflist(*parsed)["plugins"].size() + 1 == plugins.size() &&
                           plugins.back().value("type", "") == kPluginType;
    plan.up_to_date = plan.desired == *parsed;
    return plan;
  }
  // A single-plugin file cannot chain: the equivalent conflist under the
  // same name with the extension ".conflist" replaces it.
  std::string name = primary.filename().string();
  plan.target =
      options_.conf_dir / (name.substr(0, name.size() - goExt(primary).size()) + ".conflist");
  plan.remove = primary;
  std::vector<std::string> after;
  for (const auto& f : *files)
    if (f != primary && f != plan.target) after.push_back(f.filename().string());
  after.push_back(plan.target.filename().string());
  std::sort(after.begin(), after.end());
  if (after.front() != plan.target.filename().string())
    return unusable(
        fmt::format("{} is a single-plugin config and its conflist form {} would not "
                    "be the first config in the directory ({} sorts before it)",
                    primary.string(), plan.target.string(), after.front()));
  std::error_code ec;
  if (fs::exists(plan.target, ec)) {
    auto existing = readJson(plan.target);
    if (!existing || !existing->is_object() || !existing->contains(kConvertedFromKey))
      return unusable(
          fmt::format("{} is a single-plugin config and {} exists too but was not "
                      "written by sluice-cni; remove one of them",
                      primary.string(), plan.target.string()));
  }
  return plan;
}

Result<ChainStatus> Installer::ensureChained() {
  auto plan = this->plan();
  if (!plan) return tl::unexpected(plan.error());
  ChainStatus st = plan->status;
  if (st.state != ChainState::kChained || plan->up_to_date) return st;
  auto mode = fileMode(st.file);
  if (!mode) return tl::unexpected(mode.error());
  if (auto w = writeAtomic(plan->target, render(plan->desired), *mode); !w)
    return tl::unexpected(w.error());
  if (!plan->remove.empty()) {
    if (::unlink(plan->remove.c_str()) != 0 && errno != ENOENT)
      return failErrno(fmt::format("wrote {} but cannot remove {}", plan->target.string(),
                                   plan->remove.string()));
    if (auto r = fsyncDir(options_.conf_dir); !r) return tl::unexpected(r.error());
  }
  st.file = plan->target;
  st.changed = true;
  return st;
}

Result<int> Installer::removeChain() {
  auto files = listConfigs(options_.conf_dir);
  if (!files) return tl::unexpected(files.error());
  int changed = 0;
  for (const auto& file : *files) {
    if (goExt(file) != ".conflist") continue;
    auto parsed = readJson(file);
    if (!parsed) {
      log_->warn("{}; it is left untouched (if it chains sluice-cni, remove that entry by hand)",
                 parsed.error().describe());
      continue;
    }
    if (conflistProblem(*parsed)) continue;
    const bool converted =
        parsed->contains(kConvertedFromKey) && (*parsed)[kConvertedFromKey].is_string();
    if (!hasOurEntry(*parsed) && !converted) continue;
    ordered_json plain = unchainedConflist(*parsed);
    if (plain["plugins"].empty()) {
      log_->warn(
          "{} lists no plugin but sluice-cni; it is left untouched (delete it if nothing "
          "else uses it)",
          file.string());
      continue;
    }
    auto mode = fileMode(file);
    if (!mode) return tl::unexpected(mode.error());
    if (converted) {
      std::string original = (*parsed)[kConvertedFromKey].get<std::string>();
      fs::path original_path = options_.conf_dir / original;
      bool sane_name = original.find('/') == std::string::npos && isConfigName(original) &&
                       goExt(original) != ".conflist";
      if (sane_name && plain["plugins"].size() == 1) {
        std::error_code ec;
        // If the primary CNI has written its file again meanwhile, that one stands.
        if (!fs::exists(original_path, ec)) {
          if (auto w = writeAtomic(original_path, render(plain["plugins"][0]), *mode); !w)
            return tl::unexpected(w.error());
        }
        if (::unlink(file.c_str()) != 0 && errno != ENOENT)
          return failErrno("cannot remove " + file.string());
        log_->info("removed sluice-cni from {}: restored {}", file.string(),
                   original_path.string());
        ++changed;
        continue;
      }
      plain.erase(kConvertedFromKey);
    }
    if (auto w = writeAtomic(file, render(plain), *mode); !w) return tl::unexpected(w.error());
    log_->info("removed sluice-cni from {}", file.string());
    ++changed;
  }
  return changed;
}

Result<bool> Installer::removeBinary() {
  fs::path dest = options_.bin_dir / kPluginType;
  if (::unlink(dest.c_str()) == 0) return true;
  if (errno == ENOENT) return false;
  return failErrno("cannot remove " + dest.string());
}

}  // namespace sluice::cni
