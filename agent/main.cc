// sluice-agent: the node agent. Wires the parts together; owns no logic.
#include <malloc.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "agent/admin/server.h"
#include "agent/authz/policy_authorizer.h"
#include "agent/bpf/loader.h"
#include "agent/bpf/orig_dst_resolver.h"
#include "agent/bpf/splice_control.h"
#include "agent/bpf/stat_names.h"
#include "agent/cni/server.h"
#include "agent/discovery/client.h"
#include "agent/discovery/mesh_directory.h"
#include "agent/identity/cert_manager.h"
#include "agent/pods/pod_manager.h"
#include "agent/telemetry/agent_metrics.h"
#include "agent/telemetry/http_metrics.h"
#include "agent/telemetry/live_stats.h"
#include "agent/telemetry/tap.h"
#include "agent/telemetry/tcp_metrics.h"
#include "agent/telemetry/workloads.h"
#include "agent/wiring/admin_json.h"
#include "agent/wiring/authz_bridge.h"
#include "agent/wiring/cni_bridge.h"
#include "agent/wiring/discovery_bridge.h"
#include "agent/wiring/live_inspection.h"
#include "agent/wiring/policy_json.h"
#include "agent/wiring/policy_metrics.h"
#include "agent/wiring/telemetry_bridge.h"
#include "agent/wiring/upgrade_bridge.h"
#include "sluice/common/addr.h"
#include "sluice/common/files.h"
#include "sluice/common/flags.h"
#include "sluice/common/log.h"
#include "sluice/ztunnel/engine.h"

using namespace sluice;

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
  std::vector<uint16_t> excluded_ports;
  unsigned max_per_pod = 4096;
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

[[noreturn]] void usageError(const std::string& msg) {
  std::fprintf(stderr, "sluice-agent: %s\nRun 'sluice-agent --help' for usage.\n", msg.c_str());
  std::exit(2);
}

// The one declaration of the agent's flags: --help and the parser.
FlagTable flagTable(Flags& f) {
  FlagTable t;
  t.value("--node-name", "NAME", "this node's name as the control plane knows it (required)",
          FlagTable::into(&f.node_name))
      .value("--controlplane", "HOST:PORT", "control plane address (required; gRPC over TLS)",
             FlagTable::into(&f.controlplane))
      .value("--ca-bundle", "FILE",
             "trust anchor(s) that the control plane's certificate chains to\n(required)",
             FlagTable::into(&f.ca_bundle))
      .value("--token-file", "FILE",
             "token sent to the control plane, re-read on every use: the\n"
             "node bootstrap token, or a projected service account token",
             FlagTable::into(&f.token_file))
      .value("--trust-domain", "NAME",
             "SPIFFE trust domain of workload identities (default cluster.local)",
             FlagTable::into(&f.trust_domain))
      .value("--cert-ttl", "SECONDS",
             "requested workload certificate lifetime, at least 60 (default:\n"
             "the control plane's)",
             [&f](const std::string& v) -> std::string {
               if (auto err = FlagTable::number(&f.cert_ttl)(v); !err.empty()) return err;
               if (f.cert_ttl != 0 && f.cert_ttl < 60) return "must be at least 60 seconds";
               return "";
             })
      .value("--bpf-pin-dir", "DIR",
             "where BPF maps and links are pinned (default /sys/fs/bpf/sluice)",
             FlagTable::into(&f.pin_dir))
      .value("--cni-socket", "PATH",
             "unix socket for sluice-cni (default /var/run/sluice/cni.sock)",
             FlagTable::into(&f.cni_socket))
      .value("--admin-addr", "IP:PORT", "admin HTTP API (default 127.0.0.1:15000)",
             [&f](const std::string& v) -> std::string {
               if (!parseEndpoint(v)) return "must be IP:PORT, got '" + v + "'";
               f.admin_addr = v;
               return "";
             })
      .value("--metrics-addr", "IP:PORT",
             "Prometheus metrics (/metrics, /stats/prometheus) on the node's\n"
             "network; \"\" turns them off (default 0.0.0.0:15020)",
             [&f](const std::string& v) -> std::string {
               if (!v.empty() && !parseEndpoint(v))
                 return "must be IP:PORT or \"\", got '" + v + "'";
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
      .value("--workers", "N", "proxy worker threads, 0 = one per CPU (default 0)",
             FlagTable::number(&f.workers, 0, 1024))
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
              "probes): allow = always allowed, even under STRICT mTLS and\n"
              "whatever AuthorizationPolicies say (as Istio ambient does);\n"
              "policy = treated like any plaintext client (default allow)",
              [&f](const std::string& v) { f.allow_node_probes = v == "allow"; })
      .choice("--sockmap", {"on", "off"},
              "same-node acceleration: the app <-> proxy hops inside a pod\n"
              "skip loopback TCP (sockhash + sk_msg); a kernel that refuses\n"
              "it falls back to off, logged and shown in /config_dump\n"
              "(default off)",
              [&f](const std::string& v) { f.sockmap = v == "on"; })
      .value("--log-level", "LEVEL", "trace|debug|info|warn|error (default info)",
             [&f](const std::string& v) -> std::string {
               for (const char* l : {"trace", "debug", "info", "warn", "error"})
                 if (v == l) {
                   f.log_level = v;
                   return "";
                 }
               return "must be one of trace|debug|info|warn|error, got '" + v + "'";
             });
  return t;
}

Flags parseFlags(int argc, char** argv) {
  Flags f;
  int first = 1;
  if (argc > 1 && std::string(argv[1]) == "uninstall") {
    f.uninstall = true;
    first = 2;
  }
  FlagTable table = flagTable(f);
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

// Bridges CNI requests to the pod manager.
int runAgent(const Flags& flags) {
  auto logger = log::get("agent");
  blockTerminationSignals();  // before any thread starts: all inherit the mask
  // Two sockets per proxied connection per pod: the default soft limit of
  // 1024 fds would cap the node at a few hundred connections.
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }

  std::string cgroup = flags.cgroup;
  if (cgroup.empty()) {
    auto found = agent::bpf::Loader::findCgroup2();
    if (!found) {
      logger->critical("{}", found.error().describe());
      return 1;
    }
    cgroup = *found;
  }
  auto loader =
      agent::bpf::Loader::create({flags.pin_dir, cgroup, flags.excluded_ports, flags.sockmap});
  if (!loader) {
    logger->critical("{}", loader.error().describe());
    return 1;
  }
  for (const auto& l : (*loader)->links())
    logger->info("{} attached to {} (link {}{})", l.program, cgroup, l.link_id,
                 l.reused ? ", re-adopted" : "");

  auto trust_anchor = readFile(flags.ca_bundle);
  if (!trust_anchor) {
    logger->critical("--ca-bundle: {}", trust_anchor.error().describe());
    return 1;
  }
  // Read on every use: a projected service account token is rotated in place.
  BearerToken token;
  if (!flags.token_file.empty()) {
    if (auto t = readFile(flags.token_file); !t) {
      logger->critical("--token-file: {}", t.error().describe());
      return 1;
    }
    token.file = flags.token_file;
  }
  agent::identity::GrpcSigner signer(flags.controlplane, *trust_anchor, token);
  agent::identity::CertManagerConfig cert_config;
  cert_config.ttl = std::chrono::seconds(flags.cert_ttl);
  agent::identity::CertManager certs(signer, cert_config);
  agent::discovery::MeshDirectory directory(flags.trust_domain);

  agent::bpf::MapOrigDstResolver resolver((*loader)->origDst(), (*loader)->origDst6());
  ztunnel::EngineConfig engine_config;
  // Fixed here: the metrics keep a shard per worker.
  engine_config.workers =
      flags.workers ? flags.workers : std::max(1u, std::thread::hardware_concurrency());
  engine_config.max_connections_per_pod = flags.max_per_pod;
  engine_config.hbone_max_pending_handshakes = flags.max_pending_handshakes;
  engine_config.hbone_max_pending_handshakes_per_pod =
      std::max(1u, flags.max_pending_handshakes / 4);
  engine_config.hbone_max_outbound_handshakes = flags.max_outbound_handshakes;
  engine_config.hbone_max_outbound_handshakes_per_pod =
      std::max(1u, flags.max_outbound_handshakes / 4);
  engine_config.hbone_max_tunnels_per_peer = flags.max_tunnels_per_peer;
  engine_config.trust_domain = flags.trust_domain;
  engine_config.trust_anchor_pem = *trust_anchor;
  engine_config.http_detection = flags.http_detection;
  // Outlives the engine: the workers report to it until they stop.
  agent::telemetry::WorkloadIndex workload_index;
  agent::telemetry::TcpMetricsConfig metrics_config;
  metrics_config.workers = engine_config.workers;
  agent::telemetry::TcpMetrics tcp_metrics(metrics_config, &workload_index);
  agent::telemetry::HttpMetricsConfig http_metrics_config;
  http_metrics_config.workers = engine_config.workers;
  agent::telemetry::HttpMetrics http_metrics(http_metrics_config, tcp_metrics);
  // Live inspection (sluicectl stat / top / tap): the last minute per pod, and tap sessions.
  agent::telemetry::LiveStats live_stats(
      {.workers = engine_config.workers, .cluster_id = metrics_config.cluster_id}, &workload_index);
  agent::telemetry::TapHub tap_hub(
      {.workers = engine_config.workers, .cluster_id = metrics_config.cluster_id}, &workload_index);
  agent::telemetry::ObserverFanout observers({&tcp_metrics, &http_metrics, &live_stats, &tap_hub});
  ztunnel::EngineHooks hooks;
  hooks.observer = &observers;
  // Every inbound connection is decided by the policies in the view; until
  // the view holds a pod's workload, connections to it are refused.
  agent::authz::PolicyAuthorizer authorizer({.allow_node_probes = flags.allow_node_probes});
  agent::wiring::AuthzBridge authz_bridge(authorizer, flags.node_name, flags.trust_domain);
  hooks.authorizer = &authorizer;
  // Same-node splice: with --sockmap=on (its maps are part of that object).
  std::unique_ptr<agent::bpf::MapSpliceControl> splice;
  std::string splice_detail = "off (--sockmap=off)";
  if ((*loader)->sockmap().active) {
    if (auto s = agent::bpf::MapSpliceControl::open(flags.pin_dir)) {
      splice = std::move(*s);
      splice_detail = "on: same-node connections not inspected are spliced app to app";
    } else {
      splice_detail = "off: " + s.error().describe() + "; same-node connections stay proxied";
      logger->warn("splice {}", splice_detail);
    }
  }
  hooks.splice = splice.get();
  auto engine = ztunnel::createEngine(engine_config, resolver, &certs, &directory, hooks);
  if (!engine) {
    logger->critical("starting the proxy engine failed: {}", engine.error().describe());
    return 1;
  }
  authz_bridge.setEngine(engine->get());

  // An agent already running with this state dir (an upgrade): take over
  // its listeners before enrolling anything, so every pod keeps the same
  // sockets and no connection waiting in their queues is lost.
  std::error_code mkdir_error;
  std::filesystem::create_directories(flags.state_dir, mkdir_error);
  const std::string handover_path = flags.state_dir + "/handover.sock";
  auto predecessor = agent::upgrade::HandoverClient::connect(handover_path);
  if (!predecessor) {
    logger->critical(
        "taking over from the agent running on {}: {} (stop it, or remove a stale "
        "socket, and start again)",
        handover_path, predecessor.error().describe());
    return 1;
  }
  if (*predecessor) {
    auto listeners = (*predecessor)->takeListeners();
    logger->info("taking over from the running agent: {} listener(s) handed over",
                 listeners.size());
    (*engine)->adoptListeners(std::move(listeners));
  }

  agent::pods::PodManager pods(**loader, **engine, flags.state_dir + "/pods.json",
                               flags.trust_domain);
  // Fetch ahead: every enrolled pod's identity gets a certificate before it is needed.
  auto sync_identities = [&] { certs.setIdentities(pods.enrolledIdentities()); };
  // A message from the control plane also says its CA is reachable again:
  // identities waiting out a retry backoff (an agent started while it was
  // down) are requested at once rather than when the backoff ends.
  agent::wiring::DiscoveryBridge discovery_bridge(
      pods, directory,
      [&] {
        sync_identities();
        certs.retryNow();
      },
      [&](const agent::discovery::View& view) {
        authz_bridge.onView(view);
        workload_index.update(agent::wiring::workloadSnapshot(view, metrics_config.cluster_id));
      });

  // The last good view first, then the pods: a re-adopted pod's first
  // connection is routed by it (a meshed destination over mTLS, never in
  // plaintext). Without any view the proxy refuses outbound connections
  // until the control plane's arrives.
  const std::string view_file = flags.state_dir + "/view.pb";
  std::optional<agent::discovery::PersistedView> persisted;
  if (auto v = agent::discovery::loadView(view_file)) {
    persisted = std::move(*v);
    discovery_bridge.seed(persisted->view);
    logger->info(
        "using the view kept in {} (version {} of epoch {:x}: {} workloads, {} services, {} "
        "AuthorizationPolicies, {} PeerAuthentications) until the control plane answers",
        view_file, persisted->version, persisted->epoch, persisted->view.workloads.size(),
        persisted->view.services.size(), persisted->view.policies->authorizationPolicies().size(),
        persisted->view.policies->peerAuthentications().size());
  } else if (v.error().code == ENOENT) {
    logger->info(
        "no view kept in {}: connections of enrolled pods are refused until the control "
        "plane answers",
        view_file);
  } else {
    logger->warn(
        "ignoring the kept view: {}; connections of enrolled pods are refused until the "
        "control plane answers",
        v.error().describe());
  }
  pods.restore();
  sync_identities();
  if (*predecessor) {
    (*engine)->adoptListeners({});  // sockets of pods that were not restored
    // New connections may land here from now on: the pods' certificates
    // first (bounded; a connection without one waits for it).
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (const auto& id : pods.enrolledIdentities())
      while (!certs.credential(id) && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    auto released = (*predecessor)->release();
    // Its plaintext connections, frozen: relayed here from now on (those
    // that came before a failure, if any).
    size_t adopted = (*engine)->adoptConnections((*predecessor)->takeConnections());
    if (!released)
      logger->warn("the previous agent did not confirm the handover: {}",
                   released.error().describe());
    else
      logger->info(
          "the previous agent stopped accepting; this one serves every pod and relays {} "
          "plaintext connection(s) it handed over",
          adopted);
    predecessor->reset();
  }

  agent::discovery::ClientConfig discovery_config;
  discovery_config.target = flags.controlplane;
  discovery_config.node_name = flags.node_name;
  discovery_config.trust_anchor_pem = *trust_anchor;
  discovery_config.token = token;
  discovery_config.view_file = view_file;
  auto discovery = agent::discovery::Client::create(discovery_config, discovery_bridge);
  if (!discovery) {
    logger->critical("control plane client: {}", discovery.error().describe());
    return 1;
  }

  agent::wiring::CniBridge cni_bridge(pods, std::chrono::milliseconds(flags.cni_wait_ms),
                                      sync_identities);
  auto cni = agent::cni::Server::create(flags.cni_socket, cni_bridge);
  if (!cni) {
    logger->critical("CNI socket: {}", cni.error().describe());
    return 1;
  }

  agent::admin::Sources sources;
  ztunnel::Engine& eng = **engine;
  agent::bpf::Loader& ld = **loader;
  agent::discovery::Client& disc = **discovery;
  sources.config_dump = [&] {
    nlohmann::json j = pods.dump();
    j["node"] = flags.node_name;
    j["trust_domain"] = flags.trust_domain;
    j["controlplane"] = {{"address", flags.controlplane},
                         {"connected", disc.connected()},
                         {"synced", disc.synced()},
                         {"version", disc.version()},
                         {"epoch", fmt::format("{:x}", disc.epoch())},
                         {"view_source", discovery_bridge.source()},
                         {"last_error", disc.lastError()}};
    if (persisted)
      j["controlplane"]["persisted_view"] = {{"file", view_file},
                                             {"version", persisted->version},
                                             {"epoch", fmt::format("{:x}", persisted->epoch)}};
    j["listeners"] = agent::wiring::listenersJson(eng);
    j["services"] = discovery_bridge.servicesJson();
    // HTTP inspection: the default opaque ports and what workloads declare.
    j["opaque_ports"] = {{"default", engine_config.opaque_ports},
                         {"declared", directory.opaqueJson()}};
    j["bpf"] = agent::wiring::bpfJson(ld, flags.pin_dir, cgroup);
    auto& sp = j["bpf"]["sockmap"]["splice"];
    sp["mode"] = splice ? "on" : "off";
    sp["detail"] = splice_detail;
    if (splice) {
      auto st = splice->stats();
      for (size_t i = 0; i < agent::bpf::kSpliceStats.size(); ++i)
        sp["stats"][agent::bpf::kSpliceStats[i].name] = st[i];
    }
    return j;
  };
  sources.connections = [&] { return agent::wiring::connectionsJson(eng); };
  sources.reset_connections = [&](const agent::admin::Query& q) {
    return agent::wiring::resetConnectionsJson(eng, q);
  };
  // The trust anchors this agent verifies peers and the control plane with.
  nlohmann::json trust_anchors = nlohmann::json::array();
  if (auto anchors = x509::parseChain(*trust_anchor); anchors)
    for (const auto& a : *anchors)
      trust_anchors.push_back(agent::identity::certificateJson(a.get()));
  sources.certs = [&] {
    nlohmann::json j = certs.dump();
    j["trust_anchors"] = trust_anchors;
    return j;
  };
  sources.stats = [&] {
    nlohmann::json j = agent::wiring::statsJson(eng.stats(), ld.stats());
    j["enrolled_pods"] = pods.enrolledCount();
    auto authz_stats = authorizer.stats();
    nlohmann::json denied = nlohmann::json::object();
    for (size_t i = 0; i < authz_stats.denied.size(); ++i)
      denied[agent::authz::toString(static_cast<agent::authz::DenyReason>(i))] =
          authz_stats.denied[i];
    j["policy"] = {{"denied", denied},
                   {"audit_matches", authz_stats.audit_matches},
                   {"updates_rejected", authz_bridge.rejected().count}};
    return j;
  };
  sources.policies = [&] {
    return agent::wiring::policiesJson(authorizer, authz_bridge.rejected().error);
  };
  sources.authz_check = [&](const std::map<std::string, std::string>& query) {
    return agent::wiring::authzCheckJson(authorizer, flags.trust_domain, query);
  };
  // A successor is taking over (an upgrade): not ready, so that its pod,
  // probed on this agent's admin port until the handover, is not either.
  std::atomic<bool> handing_over{false};
  sources.not_ready_reason = [&]() -> std::string {
    if (handing_over) return "handing over to a successor agent (an upgrade)";
    if (!disc.synced())
      return "no snapshot from the control plane at " + flags.controlplane + " yet" +
             (persisted ? " (routing by the view kept from the last run)"
                        : " (outbound connections of enrolled pods are refused)");
    return "";
  };
  // Once synced the agent stays ready without the control plane: it keeps
  // serving its last view (and says so here) while it reconnects.
  // Certificates past their renewal time that the CA did not renew yet are
  // said too: the old ones serve until they expire.
  sources.ready_note = [&]() -> std::string {
    std::string certs_note = certs.renewalNote();
    if (disc.connected()) return certs_note;
    if (!certs_note.empty()) certs_note = "; " + certs_note;
    auto since = disc.disconnectedSince();
    auto secs =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now() - since)
            .count();
    return fmt::format(
        "control plane at {} unreachable for {}s ({}); serving the last known state (version "
        "{}), reconnecting{}",
        flags.controlplane, secs, disc.lastError(), disc.version(), certs_note);
  };
  agent::wiring::addLiveInspection(sources, live_stats, tap_hub, pods, workload_index,
                                   metrics_config.cluster_id);
  auto admin = agent::admin::Server::create(flags.admin_addr, sources);
  if (!admin) {
    logger->critical("{}", admin.error().describe());
    return 1;
  }
  agent::telemetry::AgentSources metric_sources;
  metric_sources.version = SLUICE_VERSION;
  metric_sources.before_scrape = [&] { eng.countSpliced(); };
  metric_sources.engine_stats = [&] { return eng.stats(); };
  metric_sources.pods_enrolled = [&] { return pods.enrolledCount(); };
  metric_sources.controlplane = [&] {
    return agent::telemetry::ControlPlaneState{disc.connected(), disc.synced(), disc.version()};
  };
  metric_sources.bpf_stats = [&] { return ld.stats(); };
  metric_sources.bpf_maps = [&] { return ld.mapFill(); };
  metric_sources.sockmap_enabled = [&] { return ld.sockmap().active; };
  metric_sources.sockmap_stats = [&] {
    auto v = ld.sockmapStats();
    auto st = splice ? splice->stats() : std::vector<uint64_t>(SLUICE_SPLICE_STAT_MAX);
    v.insert(v.end(), st.begin(), st.end());  // kSockmapStats, then kSpliceStats
    return v;
  };
  metric_sources.cert_expiry = [&] { return certs.expiries(); };
  metric_sources.http = [&](agent::telemetry::TextWriter& out) { http_metrics.write(out); };
  metric_sources.more = [&](agent::telemetry::TextWriter& out) {
    agent::wiring::writePolicyMetrics(out, authorizer, authz_bridge.rejected().count);
  };
  agent::telemetry::AgentMetrics agent_metrics(tcp_metrics, metric_sources);
  std::unique_ptr<agent::admin::Server> metrics_server;
  if (!flags.metrics_addr.empty()) {
    auto m = agent::admin::Server::create(flags.metrics_addr, "metrics endpoint",
                                          agent_metrics.routes());
    if (!m) {
      logger->critical("{} (--metrics-addr \"\" turns the endpoint off)", m.error().describe());
      return 1;
    }
    metrics_server = std::move(*m);
  }
  logger->info("sluice-agent running on node {} (pins {}, cni socket {})", flags.node_name,
               flags.pin_dir, flags.cni_socket);

  // A successor started with the same state dir takes over through this
  // socket (an upgrade); the hooks run on its thread.
  std::mutex parts_mu;  // cni, admin, metrics_server: the handover and the shutdown
  agent::wiring::UpgradeBridge upgrade_bridge(
      eng, {.freeze =
                [&] {
                  handing_over = true;
                  pods.freeze();
                  std::lock_guard lk(parts_mu);
                  cni->reset();
                },
            .thaw =
                [&] {
                  handing_over = false;
                  pods.thaw();
                  std::lock_guard lk(parts_mu);
                  if (auto again = agent::cni::Server::create(flags.cni_socket, cni_bridge))
                    *cni = std::move(*again);
                  else
                    logger->error("CNI socket: {}", again.error().describe());
                },
            .release =
                [&] {
                  std::lock_guard lk(parts_mu);
                  metrics_server.reset();
                  admin->reset();
                }});
  auto handover = agent::upgrade::HandoverServer::create(handover_path, upgrade_bridge);
  if (!handover) logger->error("no upgrades without a restart: {}", handover.error().describe());

  std::optional<std::string> sig;
  auto handed_over = [&] { return handover && (*handover)->handedOver(); };
  while (!sig && !handed_over()) sig = waitForTermination(std::chrono::milliseconds(100));
  // A signal in the middle of a handover waits for its end: the successor
  // already holds the listeners and relies on this agent's answer.
  while (sig && handing_over && !handed_over())
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (handed_over()) {
    // Handed over: the successor accepts everything new. What runs here
    // ends by itself, or at the drain deadline (a SIGTERM meanwhile waits).
    discovery->reset();
    if (sig) logger->info("received {} during the handover; draining before exiting", *sig);
    logger->info("handed over to the successor; draining for up to {} s", flags.drain_seconds);
    size_t closed = eng.drain(std::chrono::seconds(flags.drain_seconds));
    logger->info("drained ({} connection(s) closed at the deadline); exiting", closed);
    handover->reset();
    (*engine)->stop();
    return 0;
  }
  logger->info(
      "received {}, shutting down (pinned BPF state stays: capture continues to fail closed "
      "until an agent is back)",
      *sig);
  if (handover) handover->reset();
  {
    std::lock_guard lk(parts_mu);
    metrics_server.reset();
    admin->reset();
    cni->reset();
  }
  discovery->reset();
  (*engine)->stop();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // One malloc arena for every thread: glibc's per-thread arenas keep what a
  // load grew them to (malloc_trim releases no arena's top but the main one),
  // 4-6 MiB after a load (docs/performance.md, "Agent RSS").
  mallopt(M_ARENA_MAX, 1);
  Flags flags = parseFlags(argc, argv);
  log::setup(flags.log_level);
  if (flags.uninstall) {
    if (auto r = agent::bpf::Loader::removePinned(flags.pin_dir); !r) {
      log::get("agent")->error("{}", r.error().describe());
      return 1;
    }
    log::get("agent")->info("removed pinned BPF state under {}", flags.pin_dir);
    return 0;
  }
  return runAgent(flags);
}
