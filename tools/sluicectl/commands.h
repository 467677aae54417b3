// sluicectl's commands: each reads the agent's admin API (or, for `bpf`, the
// pinned maps) and prints a kubectl-style table or JSON. One table lists
// them, and `sluicectl --help` is generated from it; a command's own flags
// are declared with it (`sluicectl COMMAND --help`).
#pragma once

#include <string>
#include <vector>

#include "sluice/common/flags.h"

namespace sluice::ctl {

struct Options {
  std::string admin;    // the agent's admin API, IP:PORT
  std::string pin_dir;  // pinned BPF state
  bool as_json = false;
  std::vector<std::string> args;  // the command's own positional arguments

  // stat, top, tap
  std::string namespace_;
  bool outbound = false;                          // stat: what the workloads sent
  std::string from, to, method, path, authority;  // top, tap: the tap filter; authz check: from, to
  unsigned count = 0;                             // tap: stop after this many requests
  unsigned interval = 2;                          // top: seconds between refreshes
  bool once = false;                              // top: one table after one interval

  // check
  bool pre = false;                             // --pre: before install
  std::string cni_conf_dir = "/etc/cni/net.d";  // the container runtime's CNI config
  std::string cni_bin_dir = "/opt/cni/bin";     // where sluice-cni is installed
  std::string kubeconfig;                       // --kubeconfig: also check the cluster
  std::string sluice_namespace = "sluice-system";
  // `connections reset --pod`
  std::string pod;
  // `install`
  std::string ca_dir;  // --ca-dir: embed this CA as the Secret sluice-ca
};

struct Command {
  const char* name;
  const char* summary;
  int (*run)(const Options&);
  // The command's own flags (null: none) and how many positional arguments it takes.
  void (*declare)(FlagTable& flags, Options& options) = nullptr;
  const char* usage = "";  // after "sluicectl NAME", e.g. "[deploy|pod|ns] [flags]"
  size_t max_args = 0;
};

const std::vector<Command>& commands();

// stat, top, tap (live_commands.cc).
int cmdStat(const Options& opts);
int cmdTop(const Options& opts);
int cmdTap(const Options& opts);
void declareStat(FlagTable& flags, Options& opts);
void declareTap(FlagTable& flags, Options& opts);
void declareTop(FlagTable& flags, Options& opts);

// policies, authz check (policy_commands.cc).
int cmdPolicies(const Options& opts);
int cmdAuthz(const Options& opts);
void declareAuthz(FlagTable& flags, Options& opts);

[[noreturn]] void die(const std::string& msg, int code = 1);

}  // namespace sluice::ctl
