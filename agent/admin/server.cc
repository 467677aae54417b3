#include "agent/admin/server.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sys/eventfd.h>

#include "sluice/common/addr.h"
#include "sluice/common/log.h"

namespace sluice::agent::admin {

namespace {

void reply(evhttp_request* req, int status, const char* reason, const std::string& body,
           const char* content_type) {
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", content_type);
  evbuffer* buf = evbuffer_new();
  evbuffer_add(buf, body.data(), body.size());
  evhttp_send_reply(req, status, reason, buf);
  evbuffer_free(buf);
}

Response jsonResponse(const nlohmann::json& j, int status = 200) {
  return {status, "application/json", j.dump(2) + "\n"};
}

using QueryRoutes = std::map<std::string, std::function<Response(const Query&)>>;

QueryRoutes withQueries(Routes routes) {
  QueryRoutes out;
  for (auto& [path, fn] : routes) out[path] = [fn = std::move(fn)](const Query&) { return fn(); };
  return out;
}

Query parseQuery(evhttp_request* req) {
  Query q;
  const evhttp_uri* uri = evhttp_request_get_evhttp_uri(req);
  const char* raw = uri ? evhttp_uri_get_query(uri) : nullptr;
  if (!raw) return q;
  evkeyvalq kv;
  kv.tqh_first = nullptr;  // TAILQ_INIT, without <sys/queue.h>
  kv.tqh_last = &kv.tqh_first;
  if (evhttp_parse_query_str(raw, &kv) != 0) return q;
  for (evkeyval* e = kv.tqh_first; e; e = e->next.tqe_next) q[e->key] = e->value;
  evhttp_clear_headers(&kv);
  return q;
}

QueryRoutes adminRoutes(Sources sources) {
  auto src = std::make_shared<const Sources>(std::move(sources));
  Routes r;
  r["/healthz"] = [] { return Response{200, "text/plain", "ok\n"}; };
  r["/ready"] = [src] {
    std::string reason = src->not_ready_reason();
    if (!reason.empty()) return Response{503, "text/plain", "not ready: " + reason + "\n"};
    std::string note = src->ready_note ? src->ready_note() : "";
    return Response{200, "text/plain", note.empty() ? "ready\n" : "ready: " + note + "\n"};
  };
  r["/config_dump"] = [src] { return jsonResponse(src->config_dump()); };
  r["/connections"] = [src] { return jsonResponse(src->connections()); };
  r["/certs"] = [src] { return jsonResponse(src->certs()); };
  r["/stats"] = [src] { return jsonResponse(src->stats()); };
  if (src->policies) r["/policies"] = [src] { return jsonResponse(src->policies()); };
  QueryRoutes out = withQueries(std::move(r));
  if (src->authz_check)
    out["/authz"] = [src](const Query& q) {
      auto [status, doc] = src->authz_check(q);
      return jsonResponse(doc, status);
    };
  return out;
}

const char* reasonPhrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
  }
  return "";
}

}  // namespace

// One libevent loop on the server's own thread: evhttp parses the requests
// (bounded headers, no bodies, timeouts; malformed ones get 400, methods
// other than GET/HEAD 405) and the handler builds each document on demand.
void Server::handle(evhttp_request* req) {
  std::string path = evhttp_request_get_uri(req);
  path = path.substr(0, path.find('?'));
  auto it = routes_.find(path);
  Response r = it == routes_.end() ? jsonResponse({{"error", "no such endpoint: " + path}}, 404)
                                   : it->second(parseQuery(req));
  reply(req, r.status, reasonPhrase(r.status), r.body, r.content_type.c_str());
}

Result<std::unique_ptr<Server>> Server::create(const std::string& address, Sources sources) {
  return create(address, "admin API", adminRoutes(std::move(sources)));
}

Result<std::unique_ptr<Server>> Server::create(const std::string& address, std::string name,
                                               Routes routes) {
  return create(address, std::move(name), withQueries(std::move(routes)));
}

Result<std::unique_ptr<Server>> Server::create(
    const std::string& address, std::string name,
    std::map<std::string, std::function<Response(const Query&)>> routes) {
  auto ep = parseEndpoint(address);
  if (!ep) return fail(fmt::format("invalid {} address '{}': expected IP:PORT", name, address));
  std::unique_ptr<Server> self(new Server());
  self->routes_ = std::move(routes);
  self->base_ = event_base_new();
  if (!self->base_) return fail(name + ": cannot create an event loop");
  self->http_ = evhttp_new(self->base_);
  evhttp_set_allowed_methods(self->http_, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
  evhttp_set_max_headers_size(self->http_, 16 * 1024);
  evhttp_set_max_body_size(self->http_, 0);
  evhttp_set_timeout(self->http_, 10);
  evhttp_set_gencb(
      self->http_, [](evhttp_request* req, void* s) { static_cast<Server*>(s)->handle(req); },
      self.get());
  std::string host = formatIp4(ep->sin_addr.s_addr);
  if (!evhttp_bind_socket_with_handle(self->http_, host.c_str(), ntohs(ep->sin_port)))
    return failErrno(
        fmt::format("cannot listen on {} address {} (is another agent running?)", name, address));
  self->stop_fd_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  self->stop_event_ = event_new(
      self->base_, self->stop_fd_.get(), EV_READ,
      [](evutil_socket_t, short, void* base) {
        event_base_loopbreak(static_cast<event_base*>(base));
      },
      self->base_);
  event_add(self->stop_event_, nullptr);
  self->address_ = address;
  Server* s = self.get();
  self->thread_ = std::jthread([s] { event_base_dispatch(s->base_); });
  log::get("admin")->info("{} on http://{}", name, address);
  return self;
}

Server::~Server() {
  if (thread_.joinable()) {
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(stop_fd_.get(), &one, sizeof(one));
    thread_.join();
  }
  if (stop_event_) event_free(stop_event_);
  if (http_) evhttp_free(http_);
  if (base_) event_base_free(base_);
}

}  // namespace sluice::agent::admin
