// sluice-agent's flags: the values the agent runs with, and the parser of
// its command line (the one flag table, flags.cc, declares --help too).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sluice::agent {

struct Flags {
  std::string node_name;
  std::string controlplane;
  std::string pin_dir = "/sys/fs/bpf/sluice";
  std::string cni_socket = "/var/run/sluice/cni.sock";
  std::string admin_addr = "127.0.0.1:15000";
  std::string metrics_addr = "0.0.0.0:15020";
  std::string state_dir = "/var/run/sluice/state";
  std::string cgroup;
  unsigned workers = 0;
  unsigned busy_poll_us = 50;
  std::vector<uint16_t> excluded_ports;
  unsigned max_per_pod = 4096;
  unsigned descriptor_reserve = 4096;
  unsigned max_pending_handshakes = 1024;
  unsigned max_outbound_handshakes = 1024;
  unsigned max_tunnels_per_peer = 64;
  unsigned cni_wait_ms = 3000;
  std::string log_level = "info";
  std::string ca_bundle;
  std::string token_file;
  std::string trust_domain = "cluster.local";
  unsigned cert_ttl = 0;
  unsigned drain_seconds = 25;
  bool http_detection = true;
  bool allow_node_probes = true;
  bool sockmap = false;
  bool uninstall = false;
};

// `sluice-agent [flags]` or `sluice-agent uninstall [flags]`. --help prints
// the usage and exits 0; a bad or missing flag is said on stderr with a
// pointer to --help, exit 2.
Flags parseFlags(int argc, char** argv);

}  // namespace sluice::agent
