// Admin HTTP API of the agent (default 127.0.0.1:15000): /healthz, /ready,
// /config_dump, /connections, /stats, /certs, /policies, /authz, and what the
// agent adds (the live inspection: /live/stat, /live/tap). Read-only but for
// the actions (ActionRoutes: POST /connections/reset), which take POST only
// and refuse a request that carries an Origin header (a browser's page: no
// web page can make the agent act). Served from its own thread (an epoll loop
// over agent/admin/http_connection.h), never from a data-plane thread. The
// same server serves other
// read-only documents by path (Routes): the agent's metrics endpoint
// (:15020) is a second instance.
//
// Streams (StreamRoutes): a response that goes on until its Stream says it is
// done or the client goes away (chunked for HTTP/1.1 clients, until close for
// HTTP/1.0; the connection closes at its end). The server polls each stream every 100 ms on its
// thread, and stops polling while the client has not taken 1 MiB already sent, so a client that
// stops reading costs bounded memory (and the stream drops).
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "sluice/common/log_limiter.h"
#include "sluice/common/result.h"
#include "sluice/common/unique_fd.h"

namespace sluice::agent::admin {

struct Request;  // agent/admin/http_connection.h

// A document built on demand for one GET (or HEAD) of a path.
struct Response {
  int status = 200;
  std::string content_type = "text/plain";
  std::string body;
  // When set, sent instead of `body`, without a copy: the server holds a
  // reference until the bytes are on the socket (a scraper can tell from
  // use_count() whether it may reuse the buffer for the next page).
  std::shared_ptr<const std::string> shared_body = nullptr;
};
// Exact path (query string ignored) -> its document, built on the server's thread.
using Routes = std::map<std::string, std::function<Response()>>;

// A query string's parameters, decoded (the last value of a repeated one).
using Query = std::map<std::string, std::string>;
// Exact path -> a document that reads the request's query parameters.
using QueryRoutes = std::map<std::string, std::function<Response(const Query&)>>;
// Exact path -> an action, by POST only, parameters in the query string (no
// body). GET or HEAD of it: 405; with an Origin header: 403.
using ActionRoutes = QueryRoutes;
struct StreamStep {
  std::string data;   // the next bytes of the body, may be empty
  bool done = false;  // end the response after `data`
};
// One streamed response; polled on the server's thread, destroyed there when
// it is done or its client has gone.
class Stream {
 public:
  virtual ~Stream() = default;
  virtual StreamStep poll() = 0;
};
// Opens a stream for a request; an error is answered with its message as 400
// (code EBUSY: 503, try later).
using StreamOpener = std::function<Result<std::unique_ptr<Stream>>(const Query&)>;
using StreamRoutes = std::map<std::string, StreamOpener>;

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
  std::function<std::pair<int, nlohmann::json>(const Query&)> authz_check;
  // POST /connections/reset?id=N or ?pod=ns/name (status and document). Optional.
  std::function<std::pair<int, nlohmann::json>(const Query&)> reset_connections;
  // More documents and streams by path. Optional.
  Routes routes;
  StreamRoutes streams;
};

class Server {
 public:
  // The admin API.
  static Result<std::unique_ptr<Server>> create(const std::string& address, Sources sources);
  // Any read-only documents; `name` names the server in logs and errors
  // ("metrics endpoint"). Unknown paths get 404.
  static Result<std::unique_ptr<Server>> create(const std::string& address, std::string name,
                                                Routes routes, StreamRoutes streams = {},
                                                QueryRoutes query_routes = {},
                                                ActionRoutes actions = {});
  ~Server();
  std::string address() const { return address_; }
  // Streams being served now.
  size_t streams() const { return stream_count_.load(std::memory_order_relaxed); }
  // The most answer bytes ever queued on all connections together, not yet
  // taken by their clients (bounded: 16 MiB, then no connection takes a new
  // request until clients take theirs, plus the one answer that crossed it).
  size_t queuedPeak() const { return queued_peak_.load(std::memory_order_relaxed); }

 private:
  struct Client;
  Server() = default;
  void run();
  void acceptAll();
  void service(Client& c, bool readable);
  void handle(Client& c, const Request& req);
  void tick();
  void close(Client& c);
  void watch(Client& c);
  void account(Client& c);  // its queued bytes into queued_
  UniqueFd listen_fd_;
  UniqueFd epoll_fd_;
  UniqueFd stop_fd_;  // written to stop the loop
  std::jthread thread_;
  std::string name_;
  std::string address_;
  Routes routes_;
  QueryRoutes query_routes_;
  ActionRoutes actions_;
  StreamRoutes stream_routes_;
  log::Limiter limiter_;                            // accept failures
  bool accepting_ = true;                           // false for a tick after EMFILE
  std::map<int, std::unique_ptr<Client>> clients_;  // by socket; the server's thread only
  std::map<std::string, size_t> per_source_;        // open clients by source address
  std::atomic<size_t> stream_count_{0};
  size_t queued_ = 0;  // answer bytes queued on all connections (the server's thread)
  std::atomic<size_t> queued_peak_{0};
};

}  // namespace sluice::agent::admin
