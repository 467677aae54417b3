// The fake API server (fake_apiserver.py) as a child process, for the
// Kubernetes source's tests; and the helpers they share.
#pragma once

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "controlplane/kube/client.h"
#include "controlplane/kube/source.h"
#include "controlplane/model/store.h"
#include "support/eventually.h"

namespace sluice::testing {

using json = nlohmann::json;
using namespace sluice::controlplane;
using namespace std::chrono_literals;

inline std::string b64(const std::string& in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    for (int k = 18; k >= 0; k -= 6) out += t[(v >> k) & 63];
  }
  if (i + 1 == in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    out += t[(v >> 18) & 63];
    out += t[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += t[(v >> 18) & 63];
    out += t[(v >> 12) & 63];
    out += t[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

inline std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The fake API server as a child process; killed and its files removed on
// destruction, whatever happens in the test.
class FakeApiServer {
 public:
  FakeApiServer() {
    char tmpl[] = "/tmp/sluice-kube-XXXXXX";
    dir_ = mkdtemp(tmpl);
    std::string cmd =
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "-keyout " +
        dir_ + "/key.pem -out " + dir_ +
        "/cert.pem -subj /CN=fake-apiserver -addext subjectAltName=IP:127.0.0.1 "
        "-days 1 2>/dev/null";
    REQUIRE(std::system(cmd.c_str()) == 0);
    int out[2];
    REQUIRE(pipe(out) == 0);
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], 1);
      close(out[0]);
      std::string script = std::string(SLUICE_TESTS_DIR) + "/controlplane/fake_apiserver.py";
      std::string cert = dir_ + "/cert.pem", key = dir_ + "/key.pem";
      execlp("python3", "python3", script.c_str(), "--cert", cert.c_str(), "--key", key.c_str(),
             "--token", "good-token", "--bookmark-interval", "0.3", nullptr);
      _exit(127);
    }
    close(out[1]);
    FILE* f = fdopen(out[0], "r");
    char line[128] = {0};
    REQUIRE(fgets(line, sizeof(line), f) != nullptr);
    fclose(f);
    REQUIRE(std::sscanf(line, "PORT %d", &port_) == 1);
    ca_ = slurp(dir_ + "/cert.pem");
  }
  ~FakeApiServer() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    std::filesystem::remove_all(dir_);
  }
  std::string server() const { return "https://127.0.0.1:" + std::to_string(port_); }
  const std::string& ca() const { return ca_; }
  const std::string& dir() const { return dir_; }

  // A client configuration the fake accepts (its CA, the good token).
  kube::Config clientConfig() const {
    kube::Config c;
    c.server = server();
    c.ca_pem = ca_;
    c.token = "good-token";
    return c;
  }
  kube::Client control() const {
    kube::Config c;
    c.server = server();
    c.ca_pem = ca_;
    return kube::Client(c);
  }
  json call(const std::string& what, const json& body = json::object()) const {
    auto r = control().post("/_control/" + what, body.dump());
    REQUIRE(r.has_value());
    REQUIRE(r->status == 200);
    return json::parse(r->body);
  }
  // Every status PATCH: {"path", "body"}, oldest first.
  json patches() const {
    auto r = control().get("/_control/patches");
    REQUIRE(r.has_value());
    return json::parse(r->body)["patches"];
  }
  std::vector<std::string> requests() const {
    auto r = control().get("/_control/requests");
    REQUIRE(r.has_value());
    return json::parse(r->body)["requests"].get<std::vector<std::string>>();
  }

 private:
  std::string dir_;
  pid_t pid_ = -1;
  int port_ = 0;
  std::string ca_;
};

// A kubeconfig file pointing at the fake server (CA inline, token).
inline std::string writeKubeconfig(const FakeApiServer& api, const std::string& token) {
  std::string path = api.dir() + "/kubeconfig";
  std::ofstream(path) << "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
                      << "clusters:\n- name: fake\n  cluster:\n    server: " << api.server()
                      << "\n    certificate-authority-data: " << b64(api.ca()) << "\n"
                      << "users:\n- name: me\n  user:\n    token: " << token << "\n"
                      << "contexts:\n- name: test\n  context: {cluster: fake, user: me}\n";
  return path;
}

// A Store fed by a Source watching the fake server.
struct WatchingSource {
  model::Store store;
  kube::Client client;
  std::unique_ptr<kube::Source> source;
  WatchingSource(const FakeApiServer& api, kube::SourceOptions options,
                 model::EndpointsMode mode = model::EndpointsMode::kSlicesOnly)
      : store(mode), client(api.clientConfig()) {
    auto s = kube::Source::create(client, store, options);
    REQUIRE(s.has_value());
    source = std::move(*s);
  }
};

}  // namespace sluice::testing
