#include "cni-plugin/installer.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cni-plugin/config.h"
#include "sluice/common/flags.h"
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

std::string render(const ordered_json& j) { return j.dump(2) + "\n"; }

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
  if (std::find(kSupportedVersions.begin(), kSupportedVersions.end(), version) ==
      kSupportedVersions.end()) {
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

FlagTable installerFlags(Subcommand cmd, InstallerOptions& o) {
  // Every installer flag names something: an empty value is a mistake.
  auto nonEmpty = [](std::string flag, FlagTable::Apply apply) -> FlagTable::Apply {
    return [flag, apply](const std::string& v) -> std::string {
      if (v.empty()) return "flag " + flag + " needs a non-empty value";
      return apply(v);
    };
  };
  auto path = [](fs::path* out) -> FlagTable::Apply {
    return [out](const std::string& v) {
      *out = v;
      return std::string();
    };
  };
  FlagTable t;
  t.value("--cni-bin-dir", "DIR",
          "the node's CNI bin dir as mounted here, e.g. /opt/cni/bin\n(required)",
          nonEmpty("--cni-bin-dir", path(&o.bin_dir)))
      .value("--cni-conf-dir", "DIR",
             "the node's CNI config dir as mounted here, e.g.\n/etc/cni/net.d (required)",
             nonEmpty("--cni-conf-dir", path(&o.conf_dir)));
  if (cmd == Subcommand::kInstall) {
    t.value("--source-binary", "PATH", "the plugin to copy (default: this executable)",
            nonEmpty("--source-binary", path(&o.source_binary)))
        .value("--plugin-config", "JSON",
               "fields of the chained entry besides \"type\", e.g.\n"
               "'{\"failOpen\":true}' (the fields: sluice-cni --help)",
               nonEmpty("--plugin-config",
                        [&o](const std::string& v) -> std::string {
                          auto j = ordered_json::parse(v, nullptr, /*allow_exceptions=*/false);
                          if (j.is_discarded() || !j.is_object())
                            return "--plugin-config must be a JSON object, e.g. "
                                   "'{\"failOpen\":false}'";
                          if (j.contains("type") && j["type"] != kPluginType)
                            return "--plugin-config: 'type' can only be \"sluice-cni\"";
                          ordered_json entry = {{"type", kPluginType}};
                          for (auto it = j.begin(); it != j.end(); ++it)
                            if (it.key() != "type") entry[it.key()] = it.value();
                          // The same checks the plugin makes at every pod
                          // creation, now instead of then.
                          nlohmann::json probe = nlohmann::json::parse(entry.dump());
                          probe["cniVersion"] = "1.0.0";
                          probe["name"] = "probe";
                          if (auto c = parseConfig(probe.dump()); !c)
                            return "--plugin-config: " + c.error().msg;
                          o.plugin_entry = std::move(entry);
                          return "";
                        }))
        .value(
            "--recheck-interval-ms", "N",
            "re-check the primary config every N ms besides inotify\n"
            "(10 to 3600000, default 5000)",
            nonEmpty("--recheck-interval-ms",
                     [&o](const std::string& v) -> std::string {
                       char* end = nullptr;
                       long ms = std::strtol(v.c_str(), &end, 10);
                       if (*end != '\0' || ms < 10 || ms > 3600000)
                         return "--recheck-interval-ms must be an integer between 10 and 3600000";
                       o.recheck_interval = std::chrono::milliseconds(ms);
                       return "";
                     }))
        .toggle("--uninstall-on-exit",
                "on SIGTERM/SIGINT remove the chain entry and the binary (default:\n"
                "leave them, so that restarts and rolling updates never let a pod\n"
                "start without the mesh; `sluice-cni uninstall` removes them)",
                [&o] { o.uninstall_on_exit = true; });
  }
  if (cmd == Subcommand::kUninstall)
    t.toggle("--wait",
             "after removing, wait for SIGTERM/SIGINT (for a DaemonSet that\n"
             "un-chains every node: sluicectl uninstall)",
             [&o] { o.wait_after_uninstall = true; });
  t.value("--log-level", "LEVEL", "trace|debug|info|warn|error (default info)",
          nonEmpty("--log-level", FlagTable::into(&o.log_level)));
  return t;
}

Result<InstallerOptions> parseInstallerFlags(Subcommand cmd, int argc, char** argv) {
  InstallerOptions o;
  auto help = installerFlags(cmd, o).parse(argc, argv, 2);
  if (!help) return tl::unexpected(help.error());
  if (*help) return fail("--help is answered by `sluice-cni --help`");
  if (o.bin_dir.empty())
    return fail("--cni-bin-dir is required (the node's /opt/cni/bin, as mounted)");
  if (o.conf_dir.empty())
    return fail("--cni-conf-dir is required (the node's /etc/cni/net.d, as mounted)");
  return o;
}

std::string installerUsage(Subcommand cmd) {
  InstallerOptions unused;
  std::string flags = installerFlags(cmd, unused).help();
  if (cmd == Subcommand::kInstall)
    return R"(sluice-cni install --cni-bin-dir DIR --cni-conf-dir DIR [flags]
  Copies the plugin (--source-binary) to DIR/sluice-cni (mode 0755) and
  appends {"type":"sluice-cni", ...JSON} to the "plugins" of the primary CNI
  config (the first *.conflist/*.conf/*.json in the conf dir; a single .conf
  or .json becomes a .conflist). Keeps running and restores the entry when
  the primary CNI rewrites its file (inotify, and every N ms, default 5000);
  on SIGTERM/SIGINT removes the entry and the binary and exits 0.
Flags:
)" + flags;
  return R"(sluice-cni uninstall --cni-bin-dir DIR --cni-conf-dir DIR [flags]
  Removes the entry (restoring a converted .conf) and the binary once.
Flags:
)" + flags;
}

namespace {

Result<void> checkDir(const fs::path& dir, const char* flag, const char* usual) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    return fail(
        fmt::format("{} {} does not exist or is not a directory: mount the node's {} "
                    "there (hostPath) or pass the right {}",
                    flag, dir.string(), usual, flag));
  return {};
}

struct Watch {
  UniqueFd inotify;
  int wd = -1;
};

// inotify on the conf dir makes a rewrite by the primary CNI visible at once;
// the periodic re-check still covers a lost watch (the directory replaced).
void ensureWatch(Watch& w, const fs::path& dir, spdlog::logger& log) {
  if (!w.inotify) w.inotify.reset(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  if (!w.inotify || w.wd >= 0) return;
  w.wd = ::inotify_add_watch(w.inotify.get(), dir.c_str(),
                             IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE |
                                 IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR);
  if (w.wd < 0)
    log.warn("cannot watch {} with inotify ({}); re-checking periodically only", dir.string(),
             std::strerror(errno));
}

// Drains pending events; returns false when the watch went away.
bool drainWatch(Watch& w) {
  alignas(inotify_event) char buf[4096];
  bool alive = true;
  for (;;) {
    ssize_t n = ::read(w.inotify.get(), buf, sizeof(buf));
    if (n <= 0) break;
    for (ssize_t off = 0; off < n;) {
      auto* ev = reinterpret_cast<inotify_event*>(buf + off);
      if (ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF)) alive = false;
      off += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
    }
  }
  if (!alive) {
    if (w.wd >= 0) ::inotify_rm_watch(w.inotify.get(), w.wd);
    w.wd = -1;
  }
  return alive;
}

bool removeAll(Installer& installer, spdlog::logger& log) {
  bool ok = true;
  auto chain = installer.removeChain();
  if (!chain) {
    log.error("removing the sluice-cni chain entries failed: {}", chain.error().describe());
    ok = false;
  } else if (*chain == 0) {
    log.info("no CNI config in {} chains sluice-cni", installer.options().conf_dir.string());
  }
  // The binary goes last: a config naming a missing plugin would fail pod creation.
  auto bin = installer.removeBinary();
  if (!bin) {
    log.error("{}", bin.error().describe());
    ok = false;
  } else if (*bin) {
    log.info("removed {}", (installer.options().bin_dir / kPluginType).string());
  }
  return ok;
}

}  // namespace

int runUninstall(const InstallerOptions& options) {
  if (options.wait_after_uninstall) blockTerminationSignals();
  log::setup(options.log_level);
  auto log = log::get("cni-installer");
  if (auto r = checkDir(options.conf_dir, "--cni-conf-dir", "/etc/cni/net.d"); !r) {
    log->error("{}", r.error().describe());
    return 1;
  }
  Installer installer(options);
  const bool removed = removeAll(installer, *log);
  if (options.wait_after_uninstall) {
    log->info("{}; waiting for SIGTERM (--wait)",
              removed ? "sluice-cni removed from this node" : "removal failed (see above)");
    waitForTermination();
  }
  return removed ? 0 : 1;
}

int runInstall(const InstallerOptions& options) {
  log::setup(options.log_level);
  auto log = log::get("cni-installer");
  for (auto r : {checkDir(options.conf_dir, "--cni-conf-dir", "/etc/cni/net.d"),
                 checkDir(options.bin_dir, "--cni-bin-dir", "/opt/cni/bin")}) {
    if (!r) {
      log->error("{}", r.error().describe());
      return 1;
    }
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  ::sigprocmask(SIG_BLOCK, &set, nullptr);
  UniqueFd sigfd(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!sigfd) {
    log->error("signalfd failed: {}", std::strerror(errno));
    return 1;
  }

  Installer installer(options);
  // The binary first: a chained config must never name a plugin that is not there.
  auto copied = installer.installBinary(/*force=*/true);
  if (!copied) {
    log->error("{}", copied.error().describe());
    return 1;
  }
  log->info("installed {} into {}", kPluginType, options.bin_dir.string());

  Watch watch;
  std::string last_report;
  bool was_chained = false;
  for (;;) {
    ensureWatch(watch, options.conf_dir, *log);
    auto bin = installer.installBinary(/*force=*/false);
    if (!bin)
      log->error("{}", bin.error().describe());
    else if (*bin)
      log->warn("{} was missing or changed in {}; copied it again", kPluginType,
                options.bin_dir.string());
    auto st = installer.ensureChained();
    if (!st) {
      if (last_report != st.error().describe()) log->error("{}", st.error().describe());
      last_report = st.error().describe();
      was_chained = false;
    } else if (st->state == ChainState::kChained) {
      if (st->changed)
        log->info("{} sluice-cni into {}",
                  was_chained ? "re-chained (the file was rewritten)" : "chained",
                  st->file.string());
      else if (!was_chained)
        log->info("{} already chains sluice-cni", st->file.string());
      was_chained = true;
      last_report.clear();
    } else {
      // Said once per distinct situation, not at every re-check.
      if (last_report != st->detail) {
        if (st->state == ChainState::kNoPrimaryConfig)
          log->info("{}", st->detail);
        else
          log->error("{}", st->detail);
      }
      last_report = st->detail;
      was_chained = false;
    }

    pollfd fds[2] = {{sigfd.get(), POLLIN, 0}, {watch.inotify.get(), POLLIN, 0}};
    int n = ::poll(fds, watch.wd >= 0 ? 2 : 1, static_cast<int>(options.recheck_interval.count()));
    if (n < 0 && errno != EINTR) {
      log->error("poll failed: {}", std::strerror(errno));
      break;
    }
    if (fds[0].revents & POLLIN) {
      signalfd_siginfo si{};
      const char* sig = ::read(sigfd.get(), &si, sizeof(si)) == sizeof(si)
                            ? strsignal(static_cast<int>(si.ssi_signo))
                            : "signal";
      if (!options.uninstall_on_exit) {
        log->info(
            "{}: leaving sluice-cni chained and installed: a pod created while the agent is "
            "away is refused (unless failOpen) and retried by its runtime, never started "
            "without the mesh; `sluice-cni uninstall` removes it when Sluice is removed",
            sig);
        return 0;
      }
      log->info("{}: removing sluice-cni from the node (--uninstall-on-exit)", sig);
      break;
    }
    if (watch.wd >= 0 && (fds[1].revents & POLLIN)) {
      // A writer that replaces a file emits several events; settle briefly so
      // one check sees the end result.
      ::poll(nullptr, 0, 50);
      drainWatch(watch);
    }
  }
  return removeAll(installer, *log) ? 0 : 1;
}

}  // namespace sluice::cni
