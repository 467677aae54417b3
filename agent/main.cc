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
#include "agent/authz/node_sockets.h"
#include "agent/authz/policy_authorizer.h"
#include "agent/bpf/inbound_steering.h"
#include "agent/bpf/loader.h"
#include "agent/bpf/orig_dst_resolver.h"
#include "agent/bpf/splice_control.h"
#include "agent/cni/server.h"
#include "agent/discovery/client.h"
#include "agent/discovery/mesh_directory.h"
#include "agent/flags.h"
#include "agent/identity/cert_manager.h"
#include "agent/pods/pod_manager.h"
#include "agent/telemetry/agent_metrics.h"
#include "agent/telemetry/http_metrics.h"
#include "agent/telemetry/live_stats.h"
#include "agent/telemetry/tap.h"
#include "agent/telemetry/tcp_metrics.h"
#include "agent/telemetry/workloads.h"
#include "agent/upgrade/observations.h"
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
#include "sluice/common/x509.h"
#include "sluice/ztunnel/engine.h"

using namespace sluice;

namespace {

// Bridges CNI requests to the pod manager.
int runAgent(const agent::Flags& flags) {
  auto logger = log::get("agent");
  blockTerminationSignals();  // before any thread starts: all inherit the mask
  // Two sockets per proxied connection per pod: the default soft limit of
  // 1024 fds would cap the node at a few hundred connections.
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }

  // Files first: a bad path stops the agent before it touches the kernel.
  auto trust_anchor = readFile(flags.ca_bundle);
  if (!trust_anchor) {
    logger->critical("--ca-bundle: {}", trust_anchor.error().describe());
    return 1;
  }
  if (auto anchors = x509::parseChain(*trust_anchor); !anchors) {
    logger->critical(
        "--ca-bundle {}: {}; it must hold the control plane's trust anchor, PEM certificate(s) "
        "(root-cert.pem of its CA)",
        flags.ca_bundle, anchors.error().describe());
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

  agent::identity::GrpcSigner signer(flags.controlplane, *trust_anchor, token);
  agent::identity::CertManagerConfig cert_config;
  cert_config.ttl = std::chrono::seconds(flags.cert_ttl);
  agent::identity::CertManager certs(signer, cert_config);
  agent::discovery::MeshDirectory directory(flags.trust_domain);

  agent::bpf::MapOrigDstResolver resolver((*loader)->origDst(), (*loader)->origDst6());
  ztunnel::EngineConfig engine_config;
  // Fixed here: the metrics keep a shard per worker.
  engine_config.workers = flags.workers ? flags.workers : ztunnel::defaultWorkers();
  engine_config.busy_poll = std::chrono::microseconds(flags.busy_poll_us);
  engine_config.max_connections_per_pod = flags.max_per_pod;
  engine_config.descriptor_reserve = flags.descriptor_reserve;
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
  // The observers' worker slots: one per engine worker, and one more for
  // what a predecessor's drain forwards (upgrade/observations.h).
  const unsigned observer_slots = engine_config.workers + 1;
  agent::telemetry::TcpMetricsConfig metrics_config;
  metrics_config.workers = observer_slots;
  agent::telemetry::TcpMetrics tcp_metrics(metrics_config, &workload_index);
  agent::telemetry::HttpMetricsConfig http_metrics_config;
  http_metrics_config.workers = observer_slots;
  agent::telemetry::HttpMetrics http_metrics(http_metrics_config, tcp_metrics);
  // Live inspection (sluicectl stat / top / tap): the last minute per pod, and tap sessions.
  agent::telemetry::LiveStats live_stats(
      {.workers = observer_slots, .cluster_id = metrics_config.cluster_id}, &workload_index);
  agent::telemetry::TapHub tap_hub(
      {.workers = observer_slots, .cluster_id = metrics_config.cluster_id}, &workload_index);
  agent::telemetry::ObserverFanout observers({&tcp_metrics, &http_metrics, &live_stats, &tap_hub});
  // After a handover to a successor, what this agent still drains is
  // counted by the successor (its metrics port serves from then on).
  agent::upgrade::ObservationForwarder forwarding(observers);
  ztunnel::EngineHooks hooks;
  hooks.observer = &forwarding;
  // Every inbound connection is decided by the policies in the view; until
  // the view holds a pod's workload, connections to it are refused.
  // Plaintext from the node's address is a kubelet probe only if a socket of
  // the node's own has its tuple (a NodePort's, forwarded, is not).
  std::unique_ptr<agent::authz::NodeSockets> node_sockets;
  if (flags.allow_node_probes) {
    auto opened = agent::authz::NodeSockets::open();
    if (!opened) {
      logger->critical("--node-probes allow: {}", opened.error().describe());
      return 1;
    }
    node_sockets = std::move(*opened);
  }
  agent::authz::PolicyAuthorizer authorizer(
      {.allow_node_probes = flags.allow_node_probes,
       .node_opened = [ns = node_sockets.get()](const SockAddr& node_side,
                                                const SockAddr& pod_side) {
         return ns && ns->has(node_side, pod_side);
       }});
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
  // A SYN tc cannot steer (on a TIME_WAIT tuple) meets the pod's 15006
  // listener through the sk_lookup program's map.
  agent::bpf::MapInboundSteering steering((*loader)->inboundListenersFd());
  hooks.steering = &steering;
  auto engine = ztunnel::createEngine(engine_config, resolver, &certs, &directory, hooks);
  if (!engine) {
    logger->critical("starting the proxy engine failed: {}", engine.error().describe());
    return 1;
  }
  authz_bridge.setEngine(engine->get());
  if (ztunnel::idleWaitCountsAsIowait())
    logger->info(
        "this kernel (before 6.15) counts proxy workers waiting for traffic as I/O wait: "
        "the node's iowait and the agent's io.pressure overstate its I/O");

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
  // What an agent that is gone left in the splice maps; a running
  // predecessor's pairs are live (its freeze counts their bytes).
  if (splice && !*predecessor) splice->removeStale();
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
  // The workloads the mesh does not enrol (they connect in plaintext), for
  // `authz check --from NS/SA`.
  std::atomic<std::shared_ptr<const std::vector<agent::discovery::Workload>>> unmeshed_workloads{
      std::make_shared<const std::vector<agent::discovery::Workload>>()};
  agent::wiring::DiscoveryBridge discovery_bridge(
      pods, directory,
      [&] {
        sync_identities();
        certs.retryNow();
      },
      [&](const agent::discovery::View& view) {
        authz_bridge.onView(view);
        workload_index.update(agent::wiring::workloadSnapshot(view, metrics_config.cluster_id));
        auto unmeshed = std::make_shared<std::vector<agent::discovery::Workload>>();
        for (const auto& [uid, w] : view.workloads)
          if (!w.enrolled()) unmeshed->push_back(w);
        unmeshed_workloads.store(std::move(unmeshed));
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
  std::unique_ptr<agent::upgrade::ObservationReceiver> predecessor_drain;
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
    // What it still drains (HBONE streams) is counted here, in the last
    // slot, and forwarded on if this agent hands over in turn meanwhile.
    predecessor_drain = (*predecessor)->receiveObservations(forwarding, engine_config.workers);
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
    j["bpf"] = agent::wiring::bpfJson(ld, flags.pin_dir, cgroup, splice.get(), splice_detail);
    j["proxy"] = {{"workers", engine_config.workers},
                  {"busy_poll_us", flags.busy_poll_us},
                  {"idle_wait_counts_as_iowait", ztunnel::idleWaitCountsAsIowait()}};
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
    return agent::wiring::policiesJson(authorizer, pods.enrolledPods(),
                                       authz_bridge.rejected().error);
  };
  sources.authz_check = [&](const std::map<std::string, std::string>& query) {
    agent::wiring::SourceLookup lookup;
    lookup.identity_of = [&](const IpAddr& ip) -> std::optional<std::string> {
      if (auto w = directory.meshed(ip)) return w->identity;
      return std::nullopt;
    };
    lookup.pods_of = [&](const std::string& identity) { return directory.withIdentity(identity); };
    lookup.unmeshed_of = [&](const std::string& ns, const std::string& sa) {
      std::vector<std::pair<IpAddr, std::string>> out;
      for (const auto& w : *unmeshed_workloads.load())
        if (w.namespace_() == ns && w.service_account() == sa)
          for (const auto& ip : w.ips())
            if (auto a = IpAddr::parse(ip)) out.emplace_back(*a, ns + "/" + w.name());
      return out;
    };
    return agent::wiring::authzCheckJson(authorizer, pods.enrolledPods(), lookup,
                                         flags.trust_domain, query);
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
    return agent::wiring::sockmapMetricStats(ld, splice.get());
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
                  // No scrape here from now on: the successor counts.
                  forwarding.hold();
                  admin->reset();
                },
            .observations = [&](UniqueFd sock) { forwarding.forward(std::move(sock)); }});
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
    // Views still come, so a policy change closes what it now denies among
    // the connections drained here (HBONE streams); the successor owns the
    // state dir.
    (*discovery)->stopPersisting();
    if (sig) logger->info("received {} during the handover; draining before exiting", *sig);
    logger->info("handed over to the successor; draining for up to {} s", flags.drain_seconds);
    const auto drain_end =
        std::chrono::steady_clock::now() + std::chrono::seconds(flags.drain_seconds);
    size_t closed = eng.drain(std::chrono::seconds(flags.drain_seconds));
    // What this agent still received of its own predecessor's drain goes on
    // to the successor until that drain ends too (or this one's deadline).
    while (predecessor_drain && !predecessor_drain->done() &&
           std::chrono::steady_clock::now() < drain_end)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    predecessor_drain.reset();  // what is left of it closes through the forwarder
    logger->info("drained ({} connection(s) closed at the deadline); exiting", closed);
    discovery->reset();  // before the engine stops: a view reauthorizes through it
    handover->reset();
    (*engine)->stop();
    forwarding.finish();  // the last of the drain, then "drained"
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
  agent::Flags flags = agent::parseFlags(argc, argv);
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
