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
  // `check`
  bool pre = false;                             // --pre: before install
  std::string cni_conf_dir = "/etc/cni/net.d";  // the container runtime's CNI config
  std::string cni_bin_dir = "/opt/cni/bin";     // where sluice-cni is installed
  // `install`
  std::string ca_dir;  // --ca-dir: embed this CA as the Secret sluice-ca
};

struct Command {
  const char* name;
  const char* summary;
  int (*run)(const Options&);
};

const std::vector<Command>& commands();

[[noreturn]] void die(const std::string& msg, int code = 1);

}  // namespace sluice::ctl
