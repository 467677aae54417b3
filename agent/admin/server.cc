#include "agent/admin/server.h"

#include <httplib.h>

#include "sluice/common/addr.h"
#include "sluice/common/log.h"

namespace sluice::agent::admin {

namespace {
void sendJson(httplib::Response& res, const nlohmann::json& j, int status = 200) {
  res.status = status;
  res.set_content(j.dump(2) + "\n", "application/json");
}
}  // namespace

Result<std::unique_ptr<Server>> Server::create(const std::string& address, Sources sources) {
  auto ep = parseEndpoint(address);
  if (!ep) return fail(fmt::format("invalid admin address '{}': expected IP:PORT", address));
  std::unique_ptr<Server> self(new Server());
  self->sources_ = std::move(sources);
  self->http_ = std::make_unique<httplib::Server>();
  auto& http = *self->http_;
  Server* s = self.get();
  http.new_task_queue = [] { return new httplib::ThreadPool(2); };
  http.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  http.Get("/ready", [s](const httplib::Request&, httplib::Response& res) {
    std::string reason = s->sources_.not_ready_reason();
    if (reason.empty()) {
      std::string note = s->sources_.ready_note ? s->sources_.ready_note() : "";
      res.set_content(note.empty() ? "ready\n" : "ready: " + note + "\n", "text/plain");
    } else {
      res.status = 503;
      res.set_content("not ready: " + reason + "\n", "text/plain");
    }
  });
  http.Get("/config_dump", [s](const httplib::Request&, httplib::Response& res) {
    sendJson(res, s->sources_.config_dump());
  });
  http.Get("/connections", [s](const httplib::Request&, httplib::Response& res) {
    sendJson(res, s->sources_.connections());
  });
  http.Get("/certs", [s](const httplib::Request&, httplib::Response& res) {
    sendJson(res, s->sources_.certs());
  });
  http.Get("/stats", [s](const httplib::Request&, httplib::Response& res) {
    sendJson(res, s->sources_.stats());
  });
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (res.status == 404) sendJson(res, {{"error", "no such endpoint: " + req.path}}, 404);
  });

  int port = ntohs(ep->sin_port);
  std::string host = formatIp4(ep->sin_addr.s_addr);
  if (!http.bind_to_port(host, port))
    return failErrno(
        fmt::format("cannot listen on admin address {} (is another agent running?)", address));
  self->address_ = address;
  self->thread_ = std::thread([s] { s->http_->listen_after_bind(); });
  log::get("admin")->info("admin API on http://{}", address);
  return self;
}

Server::~Server() {
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace sluice::agent::admin
