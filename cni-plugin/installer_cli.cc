// The sluice-cni install/uninstall subcommands: their flags and usage, and the
// install loop (signals, inotify on the conf dir, periodic re-check) around
// the Installer.
#include <poll.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "cni-plugin/config.h"
#include "cni-plugin/installer.h"
#include "sluice/common/flags.h"
#include "sluice/common/json_text.h"
#include "sluice/common/log.h"
#include "sluice/common/unique_fd.h"

namespace sluice::cni {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

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
                          for (auto it = j.begin(); it != j.end(); ++it)
                            if (it.key() != "type" &&
                                std::find(kPluginFields.begin(), kPluginFields.end(), it.key()) ==
                                    kPluginFields.end())
                              return "--plugin-config: unknown field '" + it.key() +
                                     "': the fields are agentSocket, failOpen, timeoutMs "
                                     "and logFile (sluice-cni --help)";
                          ordered_json entry = {{"type", kPluginType}};
                          for (auto it = j.begin(); it != j.end(); ++it)
                            if (it.key() != "type") entry[it.key()] = it.value();
                          // The same checks the plugin makes at every pod
                          // creation, now instead of then.
                          nlohmann::json probe = nlohmann::json::parse(jsonText(entry));
                          probe["cniVersion"] = "1.0.0";
                          probe["name"] = "probe";
                          if (auto c = parseConfig(jsonText(probe)); !c)
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
  t.logLevel(&o.log_level);
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
  on SIGTERM/SIGINT exits 0 and leaves both in place (--uninstall-on-exit
  removes them then; `sluice-cni uninstall` does it on its own).
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
