#include "controlplane/kube/client.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "sluice/common/files.h"
#include "sluice/common/fmt.h"

namespace sluice::controlplane::kube {

namespace fs = std::filesystem;

namespace {

Result<std::string> readText(const std::string& path) {
  std::ifstream in(path);
  if (!in) return fail(fmt::format("cannot read {}", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Result<std::string> base64Decode(const std::string& in, const std::string& what) {
  std::string clean;
  for (char c : in)
    if (!std::isspace(static_cast<unsigned char>(c))) clean.push_back(c);
  std::string out(clean.size() / 4 * 3 + 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(clean.data()),
                          static_cast<int>(clean.size()));
  if (n < 0 || clean.size() % 4 != 0) return fail(what + " is not valid base64");
  size_t pad = 0;
  if (!clean.empty() && clean.back() == '=') pad++;
  if (clean.size() > 1 && clean[clean.size() - 2] == '=') pad++;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  return s;
}

struct Transfer {
  std::string body;
  std::string pending;  // partial line
  long status = 0;
  long retry_after = -1;
  CURL* curl = nullptr;
  const std::function<bool(std::string_view)>* on_line = nullptr;
  const std::atomic<bool>* stop = nullptr;
};

size_t onWrite(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t len = size * n;
  if (t->status == 0) curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &t->status);
  if (!t->on_line || t->status != 200) {
    if (t->body.size() + len > (64u << 20)) return 0;  // bounded
    t->body.append(data, len);
    return len;
  }
  t->pending.append(data, len);
  size_t start = 0;
  for (size_t nl; (nl = t->pending.find('\n', start)) != std::string::npos; start = nl + 1)
    if (nl > start && !(*t->on_line)(std::string_view(t->pending).substr(start, nl - start)))
      return 0;  // the caller has seen enough
  t->pending.erase(0, start);
  if (t->pending.size() > (16u << 20)) return 0;  // one event larger than 16 MiB: give up
  return len;
}

// Retry-After: <seconds> (the HTTP-date form is not used by API servers).
size_t onHeader(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  std::string_view line(data, size * n);
  constexpr std::string_view kName = "retry-after:";
  if (line.size() > kName.size() &&
      std::equal(kName.begin(), kName.end(), line.begin(),
                 [](char a, char b) { return a == std::tolower(static_cast<unsigned char>(b)); })) {
    std::string v = trim(std::string(line.substr(kName.size())));
    while (!v.empty() && std::isspace(static_cast<unsigned char>(v.front()))) v.erase(0, 1);
    char* end = nullptr;
    long secs = std::strtol(v.c_str(), &end, 10);
    if (!v.empty() && end && *end == '\0' && secs >= 0) t->retry_after = std::min(secs, 3600L);
  }
  return size * n;
}

int onProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  return t->stop && t->stop->load() ? 1 : 0;
}

}  // namespace

Result<Config> Config::inCluster(const std::string& dir) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (!host || !port || !*host || !*port)
    return fail(
        "--kubernetes: KUBERNETES_SERVICE_HOST/PORT are not set (not running in a pod?); use "
        "--kubeconfig FILE outside a cluster");
  Config c;
  std::string h = host;
  if (h.find(':') != std::string::npos) h = "[" + h + "]";
  c.server = fmt::format("https://{}:{}", h, port);
  auto ca = readText(dir + "/ca.crt");
  if (!ca) return fail("--kubernetes: " + ca.error().describe());
  c.ca_pem = *ca;
  c.token_file = dir + "/token";
  if (!fs::exists(c.token_file))
    return fail("--kubernetes: no service account token at " + c.token_file);
  return c;
}

Result<Config> Config::fromKubeconfig(const std::string& path) {
  auto text = readFile(path);
  if (!text) return fail(fmt::format("kubeconfig {}: {}", path, text.error().describe()));
  YAML::Node doc;
  try {
    doc = YAML::Load(*text);
  } catch (const YAML::Exception& e) {
    return fail(fmt::format("kubeconfig {}: {}", path, e.what()));
  }
  auto base = fs::path(path).parent_path();
  auto resolve = [&](const std::string& p) {
    return fs::path(p).is_absolute() ? p : (base / p).string();
  };
  try {
    std::string context = doc["current-context"] ? doc["current-context"].as<std::string>() : "";
    auto find = [&](const char* list, const std::string& name) -> YAML::Node {
      for (const auto& e : doc[list])
        if (e["name"] && e["name"].as<std::string>() == name) return e;
      return YAML::Node();
    };
    YAML::Node ctx = find("contexts", context);
    if (!ctx || !ctx["context"])
      return fail(fmt::format("kubeconfig {}: current-context '{}' not found", path, context));
    std::string cluster_name = ctx["context"]["cluster"].as<std::string>("");
    std::string user_name = ctx["context"]["user"].as<std::string>("");
    YAML::Node cluster = find("clusters", cluster_name);
    if (!cluster || !cluster["cluster"])
      return fail(fmt::format("kubeconfig {}: cluster '{}' not found", path, cluster_name));
    Config c;
    YAML::Node cl = cluster["cluster"];
    c.server = cl["server"].as<std::string>("");
    if (c.server.empty())
      return fail(fmt::format("kubeconfig {}: cluster '{}' has no server", path, cluster_name));
    c.insecure = cl["insecure-skip-tls-verify"].as<bool>(false);
    if (cl["certificate-authority-data"]) {
      auto ca = base64Decode(cl["certificate-authority-data"].as<std::string>(),
                             "certificate-authority-data");
      if (!ca) return tl::unexpected(ca.error());
      c.ca_pem = *ca;
    } else if (cl["certificate-authority"]) {
      auto ca = readText(resolve(cl["certificate-authority"].as<std::string>()));
      if (!ca) return fail("kubeconfig: " + ca.error().describe());
      c.ca_pem = *ca;
    }
    YAML::Node user = find("users", user_name);
    YAML::Node u = user ? user["user"] : YAML::Node();
    if (u) {
      c.token = u["token"].as<std::string>("");
      if (u["tokenFile"]) c.token_file = resolve(u["tokenFile"].as<std::string>());
      auto pem = [&](const char* data_key, const char* file_key, std::string& out) -> Result<void> {
        if (u[data_key]) {
          auto v = base64Decode(u[data_key].as<std::string>(), data_key);
          if (!v) return tl::unexpected(v.error());
          out = *v;
        } else if (u[file_key]) {
          auto v = readText(resolve(u[file_key].as<std::string>()));
          if (!v) return fail("kubeconfig: " + v.error().describe());
          out = *v;
        }
        return {};
      };
      if (auto r = pem("client-certificate-data", "client-certificate", c.client_cert_pem); !r)
        return tl::unexpected(r.error());
      if (auto r = pem("client-key-data", "client-key", c.client_key_pem); !r)
        return tl::unexpected(r.error());
      if (u["exec"] || u["auth-provider"])
        return fail(
            fmt::format("kubeconfig {}: user '{}' uses an exec/auth-provider plugin, which sluice "
                        "does not run; "
                        "use a token or client certificate",
                        path, user_name));
    }
    return c;
  } catch (const YAML::Exception& e) {
    return fail(fmt::format("kubeconfig {}: {}", path, e.what()));
  }
}

Result<Response> Client::get(const std::string& path, long timeout_ms) const {
  return perform("GET", path, nullptr, timeout_ms, nullptr, nullptr);
}

Result<Response> Client::post(const std::string& path, const std::string& body,
                              long timeout_ms) const {
  return perform("POST", path, &body, timeout_ms, nullptr, nullptr);
}

Result<Response> Client::put(const std::string& path, const std::string& body,
                             long timeout_ms) const {
  return perform("PUT", path, &body, timeout_ms, nullptr, nullptr);
}

Result<Response> Client::mergePatch(const std::string& path, const std::string& body,
                                    long timeout_ms) const {
  return perform("PATCH", path, &body, timeout_ms, nullptr, nullptr);
}

Result<Response> Client::stream(const std::string& path,
                                const std::function<bool(std::string_view)>& on_line,
                                const std::atomic<bool>& stop, long timeout_ms) const {
  return perform("GET", path, nullptr, timeout_ms, &on_line, &stop);
}

Result<Response> Client::perform(const std::string& method, const std::string& path,
                                 const std::string* body, long timeout_ms,
                                 const std::function<bool(std::string_view)>* on_line,
                                 const std::atomic<bool>* stop) const {
  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> curl(curl_easy_init(), curl_easy_cleanup);
  if (!curl) return fail("curl_easy_init failed");
  CURL* h = curl.get();
  std::string url = config_.server + path;
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  if (timeout_ms > 0) curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 30L);
  curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 10L);
  curl_blob ca{const_cast<char*>(config_.ca_pem.data()), config_.ca_pem.size(), CURL_BLOB_NOCOPY};
  if (!config_.ca_pem.empty()) curl_easy_setopt(h, CURLOPT_CAINFO_BLOB, &ca);
  if (config_.insecure) {
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  curl_blob cert{const_cast<char*>(config_.client_cert_pem.data()), config_.client_cert_pem.size(),
                 CURL_BLOB_NOCOPY};
  curl_blob key{const_cast<char*>(config_.client_key_pem.data()), config_.client_key_pem.size(),
                CURL_BLOB_NOCOPY};
  if (!config_.client_cert_pem.empty()) {
    curl_easy_setopt(h, CURLOPT_SSLCERT_BLOB, &cert);
    curl_easy_setopt(h, CURLOPT_SSLCERTTYPE, "PEM");
    curl_easy_setopt(h, CURLOPT_SSLKEY_BLOB, &key);
    curl_easy_setopt(h, CURLOPT_SSLKEYTYPE, "PEM");
  }
  std::string token = config_.token;
  if (!config_.token_file.empty()) {
    auto t = readText(config_.token_file);
    if (!t) return fail("API token: " + t.error().describe());
    token = trim(*t);
  }
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, "Accept: application/json");
  std::string auth = "Authorization: Bearer " + token;
  if (!token.empty()) headers = curl_slist_append(headers, auth.c_str());
  if (body)
    headers =
        curl_slist_append(headers, method == "PATCH" ? "Content-Type: application/merge-patch+json"
                                                     : "Content-Type: application/json");
  std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)> header_guard(headers,
                                                                           curl_slist_free_all);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  if (body) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body->c_str());
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, static_cast<long>(body->size()));
  }
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method.c_str());
  Transfer t;
  t.curl = h;
  t.on_line = on_line;
  t.stop = stop;
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, onWrite);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, onHeader);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &t);
  if (stop) {
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, onProgress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, &t);
  }
  char err[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, err);
  CURLcode rc = curl_easy_perform(h);
  long status = 0;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  if (rc != CURLE_OK && status == 0)
    return fail(fmt::format("{} {}: {}", method, url, *err ? err : curl_easy_strerror(rc)));
  // A stream that breaks after the headers is a normal end of a watch; why
  // it broke is kept (a timeout says the server hung).
  Response out{status, std::move(t.body), t.retry_after, {}};
  if (rc != CURLE_OK && rc != CURLE_WRITE_ERROR && rc != CURLE_ABORTED_BY_CALLBACK)
    out.broken = *err ? err : curl_easy_strerror(rc);
  return out;
}

}  // namespace sluice::controlplane::kube
