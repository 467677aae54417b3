// sluice-controlplane: workload discovery (and, later, the CA) for the mesh.
#include <curl/curl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <cstdio>
#include <string>

#include "controlplane/ca/authority.h"
#include "controlplane/ca/ca_secret.h"
#include "controlplane/ca/service.h"
#include "controlplane/discovery/service.h"
#include "controlplane/kube/client.h"
#include "controlplane/kube/source.h"
#include "controlplane/kube/token_review.h"
#include "controlplane/local/source.h"
#include "controlplane/model/store.h"
#include "sluice/common/addr.h"
#include "sluice/common/files.h"
#include "sluice/common/flags.h"
#include "sluice/common/log.h"
#include "sluice/common/x509.h"

using namespace sluice;

namespace {
constexpr const char* kUsageHead =
    R"(Usage: sluice-controlplane (--local-config DIR | --kubernetes | --kubeconfig FILE) [flags]
       sluice-controlplane --validate FILE

Serves Discovery.Watch and Certificates.Sign (gRPC over TLS) to the node
agents from a source of truth: a directory of YAML (local mode) or the
Kubernetes API (list + watch of Namespaces, Pods, Services, EndpointSlices).

Flags:
)";

[[noreturn]] void usageError(const std::string& msg) {
  std::fprintf(stderr, "sluice-controlplane: %s\nRun 'sluice-controlplane --help' for usage.\n",
               msg.c_str());
  std::exit(2);
}
// --validate FILE: the local source's verdict on one file, a line each.
int validate(const std::string& path) {
  auto text = readFile(path);
  if (!text) {
    std::fprintf(stderr, "sluice-controlplane: %s\n", text.error().describe().c_str());
    return 1;
  }
  auto check = controlplane::local::checkFile(*text);
  for (const auto& line : check.lines) std::printf("%s\n", line.c_str());
  if (check.lines.empty())  // silence would read as "all valid"
    std::fprintf(stderr,
                 "sluice-controlplane: %s holds no AuthorizationPolicy or PeerAuthentication: "
                 "nothing to check\n",
                 path.c_str());
  return check.ok ? 0 : 1;
}
}  // namespace

int main(int argc, char** argv) {
  std::string local_dir, listen = "127.0.0.1:15010", level = "info", trust_domain = "cluster.local";
  std::string anchor_path, ca_cert_path, ca_key_path, ca_dir, tokens_path;
  std::string kubeconfig, agent_sa, serving_dns, ca_secret, anchor_configmap, validate_path;
  bool in_cluster = false, watch_istio = false;
  long cert_ttl = 86400;
  unsigned ttl_seconds = 86400;
  FlagTable flags;
  flags
      .value("--validate", "FILE",
             "check FILE's AuthorizationPolicy and PeerAuthentication objects as\n"
             "--local-config would load them, print a line per object (valid,\n"
             "warning or rejected, with the field) and exit: 0 when none is\n"
             "rejected, 1 otherwise; nothing is served",
             FlagTable::into(&validate_path))
      .value("--local-config", "DIR",
             "directory of Kubernetes-shaped YAML (Namespace, Pod, Service,\n"
             "EndpointSlice, AuthorizationPolicy, PeerAuthentication), re-read\n"
             "on change",
             FlagTable::into(&local_dir))
      .toggle("--kubernetes",
              "watch the cluster this runs in (service account token + CA,\n"
              "KUBERNETES_SERVICE_HOST/PORT)",
              [&] { in_cluster = true; })
      .value("--kubeconfig", "FILE", "watch the cluster of FILE's current context",
             FlagTable::into(&kubeconfig))
      .toggle("--watch-istio-policies",
              "Kubernetes: also read security.istio.io/v1 AuthorizationPolicy and\n"
              "PeerAuthentication (needs deploy/optional/istio-policies-rbac.yaml)",
              [&] { watch_istio = true; })
      .value("--agent-service-account", "NS:NAME",
             "Kubernetes: agents authenticate with a projected token of this\n"
             "service account (audience \"sluice\"), checked by TokenReview",
             FlagTable::into(&agent_sa))
      .value("--serving-dns", "NAMES",
             "comma-separated DNS names for the serving certificate (e.g.\n"
             "sluice-controlplane.sluice-system.svc)",
             FlagTable::into(&serving_dns))
      .value("--listen", "IP:PORT", "gRPC address (default 127.0.0.1:15010)",
             FlagTable::into(&listen))
      .value("--trust-domain", "NAME", "SPIFFE trust domain (default cluster.local)",
             [&trust_domain](const std::string& v) -> std::string {
               if (!x509::validTrustDomain(v)) return "'" + v + "': " + x509::kTrustDomainRule;
               trust_domain = v;
               return "";
             })
      .value("--trust-anchor", "PEM",
             "trust anchor(s); with --ca-cert and --ca-key: the issuing CA",
             FlagTable::into(&anchor_path))
      .value("--ca-cert", "PEM", "issuing CA certificate (chains to the trust anchor)",
             FlagTable::into(&ca_cert_path))
      .value("--ca-key", "PEM", "issuing CA private key", FlagTable::into(&ca_key_path))
      .value("--ca-dir", "DIR",
             "without the three above: where the development CA is generated\n"
             "once and kept (default: DIR-ca next to --local-config; required\n"
             "otherwise)",
             FlagTable::into(&ca_dir))
      .value("--ca-secret", "NS/NAME",
             "Kubernetes: the CA lives in this Secret (root-cert.pem, ca-cert.pem,\n"
             "ca-key.pem); absent, a self-signed CA is generated once and stored there",
             FlagTable::into(&ca_secret))
      .value("--trust-anchor-configmap", "NS/NAME",
             "Kubernetes: publish the trust anchor (root-cert.pem) in this\n"
             "ConfigMap for the agents to mount; created or updated at start",
             FlagTable::into(&anchor_configmap))
      .value("--bootstrap-tokens", "FILE",
             "`node: token` lines; a node authenticates with its token",
             FlagTable::into(&tokens_path))
      .value("--cert-ttl", "SECONDS",
             "default workload certificate lifetime (default 86400, minimum 60)",
             FlagTable::number(&ttl_seconds, 60, 10u * 365 * 86400))
      .logLevel(&level);
  auto help = flags.parse(argc, argv, 1);
  if (!help) usageError(help.error().message);
  if (*help) {
    std::fputs(kUsageHead, stdout);
    std::fputs(flags.help().c_str(), stdout);
    return 0;
  }
  if (!validate_path.empty()) return validate(validate_path);
  cert_ttl = ttl_seconds;
  int sources_given = !local_dir.empty() + in_cluster + !kubeconfig.empty();
  if (sources_given != 1)
    usageError("give exactly one source: --local-config DIR, --kubernetes or --kubeconfig FILE");
  if (!agent_sa.empty() && agent_sa.find(':') == std::string::npos)
    usageError("--agent-service-account must be NAMESPACE:NAME, got '" + agent_sa + "'");
  if (!agent_sa.empty() && !local_dir.empty())
    usageError("--agent-service-account needs the Kubernetes API (--kubernetes or --kubeconfig)");
  if (watch_istio && !in_cluster && kubeconfig.empty())
    usageError("--watch-istio-policies needs the Kubernetes API (--kubernetes or --kubeconfig)");
  if (!parseListenEndpoint(listen))
    usageError("--listen must be IP:PORT with a port from 1 to 65535, got '" + listen + "'");
  // Every check of the flags alone, before the source is read or built.
  bool files = !anchor_path.empty() || !ca_cert_path.empty() || !ca_key_path.empty();
  if (files && (anchor_path.empty() || ca_cert_path.empty() || ca_key_path.empty()))
    usageError("--trust-anchor, --ca-cert and --ca-key go together");
  if ((!ca_secret.empty() || !anchor_configmap.empty()) && !local_dir.empty())
    usageError(
        "--ca-secret and --trust-anchor-configmap need the Kubernetes API (--kubernetes "
        "or --kubeconfig)");
  if (!ca_secret.empty() && (files || !ca_dir.empty()))
    usageError("give the CA one way: --ca-secret, the three PEM files, or --ca-dir");
  if (!ca_secret.empty())
    if (auto ref = controlplane::ca::parseObjectRef(ca_secret, "--ca-secret"); !ref)
      usageError(ref.error().message);
  if (ca_secret.empty() && !files && ca_dir.empty() && local_dir.empty())
    usageError(
        "with the Kubernetes source, give the CA (--ca-secret, or --trust-anchor, --ca-cert, "
        "--ca-key) or --ca-dir for a development CA");
  log::setup(level);
  auto logger = log::get("controlplane");

  blockTerminationSignals();

  curl_global_init(CURL_GLOBAL_DEFAULT);
  // Kubernetes: EndpointSlices come from the cluster's controller; local
  // mode computes endpoints from selectors as that controller would.
  controlplane::model::Store store(local_dir.empty()
                                       ? controlplane::model::EndpointsMode::kSlicesOnly
                                       : controlplane::model::EndpointsMode::kSlicesOrSelector);
  std::unique_ptr<controlplane::local::DirectorySource> directory_source;
  std::unique_ptr<controlplane::kube::Client> kube_client;
  std::unique_ptr<controlplane::kube::Source> kube_source;
  std::string source_name = local_dir;
  if (!local_dir.empty()) {
    auto source = controlplane::local::DirectorySource::create(local_dir, store);
    if (!source) {
      logger->critical("{}", source.error().describe());
      return 1;
    }
    directory_source = std::move(*source);
  } else {
    auto config = in_cluster ? controlplane::kube::Config::inCluster()
                             : controlplane::kube::Config::fromKubeconfig(kubeconfig);
    if (!config) {
      logger->critical("{}", config.error().describe());
      return 1;
    }
    source_name = config->server;
    kube_client = std::make_unique<controlplane::kube::Client>(*config);
    controlplane::kube::SourceOptions kube_options;
    kube_options.watch_istio_policies = watch_istio;
    auto source = controlplane::kube::Source::create(*kube_client, store, kube_options);
    if (!source) {
      logger->critical("{}", source.error().describe());
      return 1;
    }
    kube_source = std::move(*source);
  }
  // Before any CA is made or stored: a bad token file changes nothing.
  std::map<std::string, std::string> tokens;
  if (!tokens_path.empty()) {
    auto t = controlplane::ca::loadBootstrapTokens(tokens_path);
    if (!t) {
      logger->critical("{}", t.error().describe());
      return 1;
    }
    tokens = std::move(*t);
  } else if (agent_sa.empty()) {
    logger->warn(
        "no --bootstrap-tokens and no --agent-service-account: no node can obtain workload "
        "certificates");
  }
  Result<std::unique_ptr<controlplane::ca::Authority>> authority = fail("unset");
  if (!ca_secret.empty()) {
    auto ref = controlplane::ca::parseObjectRef(ca_secret, "--ca-secret");
    if (!ref) usageError(ref.error().message);
    auto stored = controlplane::ca::loadOrCreateCa(*kube_client, *ref);
    if (!stored) {
      authority = tl::unexpected(stored.error());
    } else {
      authority = controlplane::ca::Authority::fromPem(stored->material, trust_domain,
                                                       "Secret " + ref->text());
      if (authority && stored->created)
        logger->warn(
            "generated a SELF-SIGNED mesh CA and stored it in Secret {} (restarts and replicas "
            "keep it). A production install should bring its own: tools/gen-ca.sh, then "
            "create that Secret from its files before installing (docs/install.md)",
            ref->text());
      else if (authority)
        logger->info("mesh CA loaded from Secret {}", ref->text());
    }
  } else if (files) {
    authority = controlplane::ca::Authority::fromFiles(anchor_path, ca_cert_path, ca_key_path,
                                                       trust_domain);
  } else {
    if (ca_dir.empty()) {
      std::string base = local_dir;
      while (base.size() > 1 && base.back() == '/') base.pop_back();
      ca_dir = base + "-ca";
    }
    bool created = false;
    authority = controlplane::ca::Authority::development(ca_dir, trust_domain, &created);
    if (authority)
      logger->warn(
          "USING A DEVELOPMENT CA ({} in {}): fine for a lab, not for production; pass "
          "--trust-anchor, "
          "--ca-cert and --ca-key",
          created ? "generated now" : "generated earlier", ca_dir);
  }
  if (!authority) {
    logger->critical("certificate authority: {}", authority.error().describe());
    return 1;
  }
  if (!anchor_configmap.empty()) {
    auto ref = controlplane::ca::parseObjectRef(anchor_configmap, "--trust-anchor-configmap");
    if (!ref) usageError(ref.error().message);
    auto published =
        controlplane::ca::publishTrustAnchor(*kube_client, *ref, (*authority)->trustAnchorPem());
    if (!published) {
      logger->critical("{}", published.error().describe());
      return 1;
    }
    logger->info("trust anchor {} in ConfigMap {}", *published ? "published" : "already",
                 ref->text());
  }
  auto ep = parseEndpoint(listen);
  std::vector<std::string> ips = {"127.0.0.1"};
  if (ep->sin_addr.s_addr != 0 && formatIp4(ep->sin_addr.s_addr) != "127.0.0.1")
    ips.push_back(formatIp4(ep->sin_addr.s_addr));
  std::vector<std::string> dns_names;
  for (size_t start = 0; start < serving_dns.size();) {
    size_t comma = serving_dns.find(',', start);
    if (comma == std::string::npos) comma = serving_dns.size();
    if (comma > start) dns_names.push_back(serving_dns.substr(start, comma - start));
    start = comma + 1;
  }
  auto serving = (*authority)->issueServing(ips, std::chrono::hours(24 * 365), dns_names);
  if (!serving) {
    logger->critical("issuing the control plane's serving certificate: {}",
                     serving.error().describe());
    return 1;
  }
  grpc::SslServerCredentialsOptions tls(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  tls.pem_key_cert_pairs.push_back({serving->first, serving->second});

  controlplane::discovery::Service discovery(store);
  controlplane::ca::CertificateService certificates(**authority, store, tokens,
                                                    std::chrono::seconds(cert_ttl));
  std::unique_ptr<controlplane::kube::TokenReviewer> reviewer;
  if (!agent_sa.empty()) {
    reviewer =
        std::make_unique<controlplane::kube::TokenReviewer>(*kube_client, *kube_source, agent_sa);
    certificates.setTokenVerifier(
        [&reviewer](const std::string& token) { return reviewer->nodeOf(token); });
  }
  if (certificates.authenticates())
    discovery.setAuthenticator(
        [&certificates](grpc::ServerContext* ctx) { return certificates.authenticate(ctx); });
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::SslServerCredentials(tls), &port);
  // Not gRPC's default SO_REUSEPORT: a second control plane on the same
  // address would split the agents between two views and two CAs.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Keepalive PINGs every 20 s on every connection, also while a Watch is
  // idle: agents presume the control plane gone after 60 s of silence
  // (agent/discovery/client.h) and the server drops agents that vanished.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  builder.RegisterService(&discovery);
  builder.RegisterService(&certificates);
  auto server = builder.BuildAndStart();
  if (!server || port == 0) {
    logger->critical("cannot listen on {} (address in use?)", listen);
    return 1;
  }
  logger->info(
      "serving discovery and certificates (TLS, trust domain {}) on {} from {} (version {})",
      trust_domain, listen, source_name, store.version());
  logger->info("received {}, shutting down", waitForTermination());
  discovery.stop();
  store.stop();
  kube_source.reset();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}
