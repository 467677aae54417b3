#include "agent/flags.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#include "sluice/common/addr.h"
#include "sluice/common/flags.h"
#include "sluice/common/x509.h"

namespace sluice::agent {

namespace {

constexpr const char* kUsageHead = R"(Usage: sluice-agent [flags]
       sluice-agent uninstall [--bpf-pin-dir DIR]

The Sluice node agent: loads the capture BPF programs, enrolls the pods of
this node that the control plane marks as meshed, and runs the node's shared
proxy (ztunnel) with listeners inside each enrolled pod's network namespace.

Flags:
)";
constexpr const char* kUsageTail = R"(
`uninstall` removes everything pinned under --bpf-pin-dir; capture stops.
)";

[[noreturn]] void usageError(const std::string& msg) {
  std::fprintf(stderr, "sluice-agent: %s\nRun 'sluice-agent --help' for usage.\n", msg.c_str());
  std::exit(2);
}

// The one declaration of the agent's flags: --help and the parser.
FlagTable& pinDirFlag(FlagTable& t, Flags& f) {
  return t.value("--bpf-pin-dir", "DIR",
                 "where BPF maps and links are pinned (default /sys/fs/bpf/sluice)",
                 FlagTable::into(&f.pin_dir));
}

FlagTable flagTable(Flags& f) {
  FlagTable t;
  t.value("--node-name", "NAME", "this node's name as the control plane knows it (required)",
          FlagTable::into(&f.node_name))
      .value("--controlplane", "HOST:PORT", "control plane address (required; gRPC over TLS)",
             [&f](const std::string& v) -> std::string {
               if (!splitHostPort(v))
                 return "must be HOST:PORT ([IPv6]:PORT), port 1-65535, got '" + v + "'";
               f.controlplane = v;
               return "";
             })
      .value("--ca-bundle", "FILE",
             "trust anchor(s) that the control plane's certificate chains to\n(required)",
             FlagTable::into(&f.ca_bundle))
      .value("--token-file", "FILE",
             "token sent to the control plane, re-read on every use: the\n"
             "node bootstrap token, or a projected service account token",
             FlagTable::into(&f.token_file))
      .value("--trust-domain", "NAME",
             "SPIFFE trust domain of workload identities (default cluster.local)",
             [&f](const std::string& v) -> std::string {
               if (!x509::validTrustDomain(v)) return "'" + v + "': " + x509::kTrustDomainRule;
               f.trust_domain = v;
               return "";
             })
      .value("--cert-ttl", "SECONDS",
             "requested workload certificate lifetime, at least 60 (default:\n"
             "the control plane's)",
             [&f](const std::string& v) -> std::string {
               if (auto err = FlagTable::number(&f.cert_ttl)(v); !err.empty()) return err;
               if (f.cert_ttl != 0 && f.cert_ttl < 60) return "must be at least 60 seconds";
               return "";
             });
  pinDirFlag(t, f)
      .value("--cni-socket", "PATH",
             "unix socket for sluice-cni (default /var/run/sluice/cni.sock)",
             FlagTable::into(&f.cni_socket))
      .value("--admin-addr", "IP:PORT", "admin HTTP API (default 127.0.0.1:15000)",
             [&f](const std::string& v) -> std::string {
               if (!parseListenEndpoint(v))
                 return "must be IP:PORT with a port from 1 to 65535, got '" + v + "'";
               f.admin_addr = v;
               return "";
             })
      .value("--metrics-addr", "IP:PORT",
             "Prometheus metrics (/metrics, /stats/prometheus) on the node's\n"
             "network; \"\" turns them off (default 0.0.0.0:15020)",
             [&f](const std::string& v) -> std::string {
               if (!v.empty() && !parseListenEndpoint(v))
                 return "must be IP:PORT (a port from 1 to 65535) or \"\", got '" + v + "'";
               f.metrics_addr = v;
               return "";
             })
      .value("--state-dir", "DIR",
             "pod table and last view kept across restarts (default\n/var/run/sluice/state)",
             FlagTable::into(&f.state_dir))
      .value("--drain-seconds", "SECONDS",
             "after handing over to a successor (an upgrade), how long HBONE\n"
             "tunnels and connections may run on before they are closed\n"
             "(default 25; the DaemonSet keeps it below\n"
             "terminationGracePeriodSeconds)",
             FlagTable::number(&f.drain_seconds, 0, 3600))
      .value("--cgroup", "DIR", "cgroup-v2 root to attach to (default: the cgroup2 mount)",
             FlagTable::into(&f.cgroup))
      .value("--workers", "N",
             "proxy worker threads (default 0 = half the CPUs the agent may\n"
             "run on, at least one: the rest are the apps')",
             FlagTable::number(&f.workers, 0, 1024))
      .value("--busy-poll-us", "US",
             "before a proxy worker sleeps waiting for traffic it polls this\n"
             "long, so a quick answer does not pay a wake-up; after polls\n"
             "that find nothing it polls less and less often, and not at all\n"
             "while it has to wait for a CPU (0 = never; default 50)",
             FlagTable::number(&f.busy_poll_us, 0, 1000))
      .value("--exclude-ports", "P1,P2", "destination ports never captured (default none)",
             [&f](const std::string& v) -> std::string {
               size_t start = 0;
               while (true) {
                 size_t comma = v.find(',', start);
                 std::string p =
                     v.substr(start, comma == std::string::npos ? comma : comma - start);
                 unsigned port = 0;
                 if (!FlagTable::number(&port, 1, 65535)(p).empty())
                   return "invalid port '" + p + "' (ports are 1-65535, comma-separated)";
                 f.excluded_ports.push_back(static_cast<uint16_t>(port));
                 if (comma == std::string::npos) return "";
                 start = comma + 1;
               }
             })
      .value("--max-connections-per-pod", "N",
             "open connections per pod beyond which new ones are refused\n(default 4096)",
             FlagTable::number(&f.max_per_pod, 1))
      .value("--descriptor-reserve", "N",
             "descriptors kept free under the agent's RLIMIT_NOFILE (at most\n"
             "a quarter of it): connections and CONNECTs beyond are refused,\n"
             "so a flood across pods leaves the agent room for tunnels and\n"
             "its CNI and admin servers (default 4096)",
             FlagTable::number(&f.descriptor_reserve, 0))
      .value("--max-pending-handshakes", "N",
             "inbound HBONE tunnels without a CONNECT yet, per node (a pod\n"
             "at most a quarter); beyond it the oldest is reset (default 1024)",
             FlagTable::number(&f.max_pending_handshakes, 1))
      .value("--max-outbound-handshakes", "N",
             "outbound HBONE tunnels still in their handshake, per node (a\n"
             "pod at most a quarter); a connection needing one more is reset\n"
             "(default 1024)",
             FlagTable::number(&f.max_outbound_handshakes, 1))
      .value("--max-tunnels-per-peer", "N",
             "pooled HBONE tunnels from one pod to one destination; when all\n"
             "are full a new connection is reset (default 64)",
             FlagTable::number(&f.max_tunnels_per_peer, 1))
      .value("--cni-wait-ms", "MS",
             "how long CNI ADD waits for the pod to appear in the control\n"
             "plane's view (default 3000)",
             FlagTable::number(&f.cni_wait_ms))
      .toggle("--no-http-detection",
              "relay every connection as bytes: no HTTP detection, no\n"
              "istio_requests_total and request histograms",
              [&f] { f.http_detection = false; })
      .choice("--node-probes", {"allow", "policy"},
              "plaintext from this node's own address to its pods (kubelet\n"
              "probes): allow = allowed, even under STRICT mTLS and whatever\n"
              "AuthorizationPolicies say, if this node opened it (a socket of\n"
              "its own has the tuple; a NodePort connection it forwarded does\n"
              "not), as Istio ambient does; policy = treated like any plaintext\n"
              "client (default allow)",
              [&f](const std::string& v) { f.allow_node_probes = v == "allow"; })
      .choice("--sockmap", {"on", "off"},
              "same-node acceleration: the app <-> proxy hops inside a pod\n"
              "skip loopback TCP (sockhash + sk_msg); a kernel that refuses\n"
              "it falls back to off, logged and shown in /config_dump\n"
              "(default off)",
              [&f](const std::string& v) { f.sockmap = v == "on"; })
      .logLevel(&f.log_level);
  return t;
}

}  // namespace

Flags parseFlags(int argc, char** argv) {
  Flags f;
  int first = 1;
  if (argc > 1 && std::string(argv[1]) == "uninstall") {
    f.uninstall = true;
    first = 2;
  }
  FlagTable table;
  if (f.uninstall)  // it removes pins: any other flag is a mistake, not ignored
    pinDirFlag(table, f);
  else
    table = flagTable(f);
  auto help = table.parse(argc, argv, first);
  if (!help) usageError(help.error().message);
  if (*help) {
    std::fputs(kUsageHead, stdout);
    std::fputs(table.help().c_str(), stdout);
    std::fputs(kUsageTail, stdout);
    std::exit(0);
  }
  if (f.uninstall) return f;
  if (f.node_name.empty()) usageError("--node-name is required");
  if (f.controlplane.empty()) usageError("--controlplane is required");
  if (f.ca_bundle.empty())
    usageError("--ca-bundle is required: the control plane is only trusted through it");
  return f;
}

}  // namespace sluice::agent
