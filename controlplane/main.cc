// sluice-controlplane: workload discovery (and, later, the CA) for the mesh.
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <cstdio>
#include <string>

#include "controlplane/ca/authority.h"
#include "controlplane/ca/service.h"
#include "controlplane/discovery/service.h"
#include "controlplane/local/source.h"
#include "controlplane/model/store.h"
#include "sluice/common/addr.h"
#include "sluice/common/flags.h"
#include "sluice/common/log.h"

using namespace sluice;

namespace {
constexpr const char* kUsage = R"(Usage: sluice-controlplane --local-config DIR [flags]

Serves Discovery.Watch and Certificates.Sign (gRPC over TLS) to the node
agents from a source of truth.

Flags:
  --local-config DIR       directory of Kubernetes-shaped YAML (Namespace, Pod), re-read on change
  --listen IP:PORT         gRPC address (default 127.0.0.1:15010)
  --trust-domain NAME      SPIFFE trust domain (default cluster.local)
  --trust-anchor PEM       trust anchor(s); with --ca-cert and --ca-key: the issuing CA
  --ca-cert PEM            issuing CA certificate (chains to the trust anchor)
  --ca-key PEM             issuing CA private key
  --ca-dir DIR             without the three above: where the development CA is generated once and
                           kept (default: DIR-ca next to --local-config)
  --bootstrap-tokens FILE  `node: token` lines; a node authenticates with its token
  --cert-ttl SECONDS       default workload certificate lifetime (default 86400, minimum 60)
  --log-level LEVEL        trace|debug|info|warn|error (default info)
  -h, --help               this text
)";

[[noreturn]] void usageError(const std::string& msg) {
  std::fprintf(stderr, "sluice-controlplane: %s\nRun 'sluice-controlplane --help' for usage.\n",
               msg.c_str());
  std::exit(2);
}
}  // namespace

int main(int argc, char** argv) {
  std::string local_dir, listen = "127.0.0.1:15010", level = "info", trust_domain = "cluster.local";
  std::string anchor_path, ca_cert_path, ca_key_path, ca_dir, tokens_path;
  long cert_ttl = 86400;
  auto args =
      splitFlags(argc, argv, 1,
                 {"--local-config", "--listen", "--log-level", "--trust-domain", "--trust-anchor",
                  "--ca-cert", "--ca-key", "--ca-dir", "--bootstrap-tokens", "--cert-ttl"});
  if (!args) usageError(args.error().message);
  for (const auto& [a, v] : *args) {
    if (a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (a == "--local-config")
      local_dir = v;
    else if (a == "--listen")
      listen = v;
    else if (a == "--log-level")
      level = v;
    else if (a == "--trust-domain")
      trust_domain = v;
    else if (a == "--trust-anchor")
      anchor_path = v;
    else if (a == "--ca-cert")
      ca_cert_path = v;
    else if (a == "--ca-key")
      ca_key_path = v;
    else if (a == "--ca-dir")
      ca_dir = v;
    else if (a == "--bootstrap-tokens")
      tokens_path = v;
    else if (a == "--cert-ttl") {
      try {
        cert_ttl = std::stol(v);
      } catch (const std::exception&) {
        cert_ttl = -1;
      }
      if (cert_ttl < 60) usageError("--cert-ttl must be a number of seconds >= 60");
    } else
      usageError("unknown flag " + a);
  }
  if (local_dir.empty())
    usageError("--local-config is required (the Kubernetes source comes in a later release)");
  if (!parseEndpoint(listen)) usageError("--listen must be IP:PORT, got '" + listen + "'");
  log::setup(level);
  auto logger = log::get("controlplane");

  blockTerminationSignals();

  controlplane::model::Store store;
  auto source = controlplane::local::DirectorySource::create(local_dir, store);
  if (!source) {
    logger->critical("{}", source.error().describe());
    return 1;
  }
  bool files = !anchor_path.empty() || !ca_cert_path.empty() || !ca_key_path.empty();
  if (files && (anchor_path.empty() || ca_cert_path.empty() || ca_key_path.empty()))
    usageError("--trust-anchor, --ca-cert and --ca-key go together");
  Result<std::unique_ptr<controlplane::ca::Authority>> authority = fail("unset");
  if (files) {
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
  std::map<std::string, std::string> tokens;
  if (!tokens_path.empty()) {
    auto t = controlplane::ca::loadBootstrapTokens(tokens_path);
    if (!t) {
      logger->critical("{}", t.error().describe());
      return 1;
    }
    tokens = std::move(*t);
  } else {
    logger->warn("no --bootstrap-tokens: no node can obtain workload certificates");
  }
  auto ep = parseEndpoint(listen);
  std::vector<std::string> ips = {"127.0.0.1"};
  if (ep->sin_addr.s_addr != 0 && formatIp4(ep->sin_addr.s_addr) != "127.0.0.1")
    ips.push_back(formatIp4(ep->sin_addr.s_addr));
  auto serving = (*authority)->issueServing(ips, std::chrono::hours(24 * 365));
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
  if (!tokens.empty())
    discovery.setAuthenticator(
        [&certificates](grpc::ServerContext* ctx) { return certificates.authenticate(ctx); });
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::SslServerCredentials(tls), &port);
  builder.RegisterService(&discovery);
  builder.RegisterService(&certificates);
  auto server = builder.BuildAndStart();
  if (!server || port == 0) {
    logger->critical("cannot listen on {} (address in use?)", listen);
    return 1;
  }
  logger->info(
      "serving discovery and certificates (TLS, trust domain {}) on {} from {} (version {})",
      trust_domain, listen, local_dir, store.version());
  logger->info("received {}, shutting down", waitForTermination());
  discovery.stop();
  store.stop();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}
