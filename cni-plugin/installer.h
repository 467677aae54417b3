// The node-side installer of sluice-cni. `sluice-cni install` copies the plugin
// binary into the node's CNI bin dir and chains a {"type":"sluice-cni"} entry
// into the primary CNI network configuration (the file the container runtime
// uses), keeps it chained while it runs (the primary CNI may rewrite its file at
// any time), and leaves both in place when it stops (an upgrade must not
// open a window without the mesh) unless --uninstall-on-exit; `sluice-cni
// uninstall` takes them out once.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "sluice/common/flags.h"
#include "sluice/common/result.h"

namespace spdlog {
class logger;
}

namespace sluice::cni {

inline constexpr const char* kPluginType = "sluice-cni";
// Top-level key of a conflist the installer made out of a single-plugin
// .conf/.json file; names that file so that removal can put it back. Runtimes
// ignore unknown top-level keys of a conflist.
inline constexpr const char* kConvertedFromKey = "sluiceConvertedFrom";

struct InstallerOptions {
  std::filesystem::path bin_dir;   // the node's CNI bin dir, as mounted here
  std::filesystem::path conf_dir;  // the node's CNI config dir, as mounted here
  std::filesystem::path source_binary = "/proc/self/exe";
  nlohmann::ordered_json plugin_entry = {{"type", kPluginType}};
  // Fallback re-check period; inotify on conf_dir triggers a check sooner.
  std::chrono::milliseconds recheck_interval{5000};
  std::string log_level = "info";
  // On SIGTERM/SIGINT: take the chain entry and the binary out again. Off by
  // default: an agent restart or a rolling update of the DaemonSet must never
  // leave a window in which new pods start without the mesh. Removing Sluice
  // runs `sluice-cni uninstall` on each node (`sluicectl uninstall`).
  bool uninstall_on_exit = false;
  // `uninstall --wait`: after removing, wait for SIGTERM/SIGINT (a DaemonSet
  // that un-chains every node reports each one done through readiness).
  bool wait_after_uninstall = false;
};

enum class Subcommand { kInstall, kUninstall };

// The flags of a subcommand, applied to `options`: its parser and its --help
// both come from this table.
FlagTable installerFlags(Subcommand cmd, InstallerOptions& options);
// Parses "sluice-cni install|uninstall --flag value ..." (argv[1] is the
// subcommand). Errors name the offending flag.
Result<InstallerOptions> parseInstallerFlags(Subcommand cmd, int argc, char** argv);
// What the subcommand does and its flags, for --help.
std::string installerUsage(Subcommand cmd);

// The network configuration a container runtime uses: the lexicographically
// first *.conflist, *.conf or *.json file in dir (libcni's ConfFiles, sorted, as
// containerd, CRI-O and kubelet load it). nullopt when there is none yet; an
// error when dir cannot be listed.
Result<std::optional<std::filesystem::path>> findPrimaryConfig(const std::filesystem::path& dir);

// Pure transforms of parsed configuration files; key order is kept.
// `conflist` with every sluice-cni entry removed and `entry` appended to "plugins".
nlohmann::ordered_json chainedConflist(const nlohmann::ordered_json& conflist,
                                       const nlohmann::ordered_json& entry);
// `conflist` with every sluice-cni entry removed from "plugins".
nlohmann::ordered_json unchainedConflist(const nlohmann::ordered_json& conflist);
// The one-plugin conflist equivalent to a single-plugin config (libcni's
// ConfListFromConf), marked as converted from `original_name`.
nlohmann::ordered_json conflistFromConf(const nlohmann::ordered_json& conf,
                                        const std::string& original_name);

enum class ChainState {
  kChained,             // the primary config chains sluice-cni exactly once
  kNoPrimaryConfig,     // no network configuration in conf_dir yet
  kUnusable,            // the primary config cannot be chained; left untouched
  kUnsupportedVersion,  // its cniVersion is not one sluice-cni speaks; left untouched
};

struct ChainStatus {
  ChainState state = ChainState::kNoPrimaryConfig;
  std::filesystem::path file;  // the primary config (after a conversion, the new .conflist)
  bool changed = false;        // this pass wrote a file
  std::string detail;          // what is wrong and what to do, for the other states
};

// What one chaining pass would do, read without writing anything (also what
// `sluicectl check` reports).
struct ChainPlan {
  ChainStatus status;              // kChained: the primary config can chain sluice-cni
  nlohmann::ordered_json desired;  // the chained conflist (for kChained)
  std::filesystem::path target;    // where it goes (the primary, or its .conflist form)
  std::filesystem::path remove;    // a single-plugin file the conflist replaces; empty: none
  bool up_to_date = false;         // the primary already is `desired`: nothing to write
  bool already_chained = false;    // the primary chains sluice-cni exactly once, last
};

// Every file operation is atomic (temporary file in the same directory, fsync,
// rename) and keeps the mode of the file it replaces.
class Installer {
 public:
  explicit Installer(InstallerOptions options);

  // Copies source_binary to bin_dir/sluice-cni (mode 0755). Without `force`
  // only when that file is missing or differs in size. Returns whether it copied.
  Result<bool> installBinary(bool force);
  // Reads the primary config and decides; writes nothing.
  Result<ChainPlan> plan() const;
  // One pass: makes the primary config chain sluice-cni exactly once, converting
  // a .conf/.json into a .conflist when needed. Never writes when nothing changes.
  Result<ChainStatus> ensureChained();
  // Removes every sluice-cni entry from every conflist in conf_dir and restores
  // converted files. Unreadable files are logged and left untouched. Returns the
  // number of files changed.
  Result<int> removeChain();
  // Removes bin_dir/sluice-cni. Returns whether there was one.
  Result<bool> removeBinary();

  const InstallerOptions& options() const { return options_; }

 private:
  InstallerOptions options_;
  std::shared_ptr<spdlog::logger> log_;
};

// The two subcommands, run from main(); return the process exit code.
// runInstall returns only after SIGTERM/SIGINT (0 when it stopped cleanly and,
// with uninstall_on_exit, the removal succeeded).
int runInstall(const InstallerOptions& options);
int runUninstall(const InstallerOptions& options);

}  // namespace sluice::cni
