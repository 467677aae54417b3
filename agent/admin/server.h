// Admin HTTP API of the agent (default 127.0.0.1:15000): /healthz, /ready,
// /config_dump, /connections, /stats, /certs, /policies, /authz. Read-only JSON; served from its
// own thread (libevent's evhttp), never from a data-plane thread. The same server serves other
// read-only documents by path (Routes): the agent's metrics endpoint (:15020) is a second instance.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "sluice/common/result.h"
#include "sluice/common/unique_fd.h"

struct event;
struct event_base;
struct evhttp;
struct evhttp_request;

namespace sluice::agent::admin {

// Each source builds its document on demand, on an admin thread.
struct Sources {
  std::function<nlohmann::json()> config_dump;
  std::function<nlohmann::json()> connections;
  std::function<nlohmann::json()> stats;
  std::function<nlohmann::json()> certs;
  // Empty string = ready; otherwise the reason it is not.
  std::function<std::string()> not_ready_reason;
  // When ready: an operator-facing note appended to "ready" (e.g. serving
  // the last known state while the control plane is unreachable). Optional.
  std::function<std::string()> ready_note;
  // /policies, and /authz?from=...&to=... (status and document). Optional.
  std::function<nlohmann::json()> policies;
  std::function<std::pair<int, nlohmann::json>(const std::map<std::string, std::string>&)>
      authz_check;
};

// A document built on demand for one GET (or HEAD) of a path.
struct Response {
  int status = 200;
  std::string content_type = "text/plain";
  std::string body;
};
// Exact path (query string ignored) -> its document, built on the server's thread.
using Routes = std::map<std::string, std::function<Response()>>;
// The decoded query parameters of a request (the last value of a repeated one).
using Query = std::map<std::string, std::string>;

class Server {
 public:
  // The admin API.
  static Result<std::unique_ptr<Server>> create(const std::string& address, Sources sources);
  // Any read-only documents; `name` names the server in logs and errors
  // ("metrics endpoint"). Unknown paths get 404.
  static Result<std::unique_ptr<Server>> create(const std::string& address, std::string name,
                                                Routes routes);
  // Documents that read the request's query parameters.
  static Result<std::unique_ptr<Server>> create(
      const std::string& address, std::string name,
      std::map<std::string, std::function<Response(const Query&)>> routes);
  ~Server();
  std::string address() const { return address_; }

 private:
  Server() = default;
  void handle(evhttp_request* req);
  event_base* base_ = nullptr;
  evhttp* http_ = nullptr;
  event* stop_event_ = nullptr;
  UniqueFd stop_fd_;  // written to stop the loop
  std::jthread thread_;
  std::string address_;
  std::map<std::string, std::function<Response(const Query&)>> routes_;
};

}  // namespace sluice::agent::admin
