// sluicectl's commands: each reads the agent's admin API (or, for `bpf`, the
// pinned maps) and prints a kubectl-style table or JSON. One table lists
// them, and `sluicectl --help` is generated from it.
#pragma once

#include <string>
#include <vector>

namespace sluice::ctl {

struct Options {
  std::string admin;    // the agent's admin API, IP:PORT
  std::string pin_dir;  // pinned BPF state
  bool as_json = false;
  std::vector<std::string> args;  // after the command (`authz check`)
  std::string from, to;           // `authz check --from ... --to ...`
};

struct Command {
  const char* name;
  const char* summary;
  int (*run)(const Options&);
};

const std::vector<Command>& commands();

// tools/sluicectl/policy_commands.cc
int cmdPolicies(const Options& opts);
int cmdAuthz(const Options& opts);

[[noreturn]] void die(const std::string& msg, int code = 1);

}  // namespace sluice::ctl
