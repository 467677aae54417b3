// A small Kubernetes API client over libcurl: where the API server is and
// how to authenticate (in-cluster service account or a kubeconfig file),
// plain requests, and streaming watches (one JSON event per line).
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <string_view>

#include "sluice/common/result.h"

namespace sluice::controlplane::kube {

struct Config {
  std::string server;  // https://host:port
  std::string ca_pem;  // verifies the API server; empty: the system store
  bool insecure = false;
  std::string token;       // bearer token, or
  std::string token_file;  // re-read on every request (projected tokens rotate)
  std::string client_cert_pem, client_key_pem;

  // KUBERNETES_SERVICE_HOST/PORT plus the pod's service account token and CA.
  static Result<Config> inCluster(
      const std::string& dir = "/var/run/secrets/kubernetes.io/serviceaccount");
  // The current context of a kubeconfig file (certificate-authority[-data],
  // insecure-skip-tls-verify, token, tokenFile, client-certificate[-data],
  // client-key[-data]); relative paths are relative to the file.
  static Result<Config> fromKubeconfig(const std::string& path);
};

struct Response {
  long status = 0;  // HTTP status; 0 when no response arrived
  std::string body;
  long retry_after_seconds = -1;  // Retry-After (delay-seconds form) of a 429/5xx; -1: none
  std::string broken;  // why the transfer ended early after the response began (e.g. timeout)
};

class Client {
 public:
  explicit Client(Config config) : config_(std::move(config)) {}

  // GET/POST/PUT path (with query); fails only when no HTTP response arrived.
  Result<Response> get(const std::string& path, long timeout_ms = 30000) const;
  Result<Response> post(const std::string& path, const std::string& json_body,
                        long timeout_ms = 30000) const;
  Result<Response> put(const std::string& path, const std::string& json_body,
                       long timeout_ms = 30000) const;
  // PATCH with a JSON merge patch (RFC 7386).
  Result<Response> mergePatch(const std::string& path, const std::string& json_patch,
                              long timeout_ms = 30000) const;

  // Streams a watch: calls on_line for every complete line of the body
  // while the status is 200 (a non-200 body is returned whole). Ends when
  // the server ends the stream, the connection breaks, on_line returns
  // false, `stop` turns true (checked at least once a second), or after
  // timeout_ms (0: never) — a server that hangs is noticed.
  Result<Response> stream(const std::string& path,
                          const std::function<bool(std::string_view)>& on_line,
                          const std::atomic<bool>& stop, long timeout_ms = 0) const;

  const Config& config() const { return config_; }

 private:
  Result<Response> perform(const std::string& method, const std::string& path,
                           const std::string* body, long timeout_ms,
                           const std::function<bool(std::string_view)>* on_line,
                           const std::atomic<bool>* stop) const;
  Config config_;
};

}  // namespace sluice::controlplane::kube
