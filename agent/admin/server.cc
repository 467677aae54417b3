#include "agent/admin/server.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sys/eventfd.h>

#include <cerrno>

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

// A large body by reference: libevent sends from the string itself and lets
// go of it (the cleanup) once it is written or the connection is gone.
void reply(evhttp_request* req, int status, const char* reason,
           std::shared_ptr<const std::string> body, const char* content_type) {
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", content_type);
  evbuffer* buf = evbuffer_new();
  auto held = std::make_unique<std::shared_ptr<const std::string>>(std::move(body));
  const std::string& text = **held;
  if (evbuffer_add_reference(
          buf, text.data(), text.size(),
          [](const void*, size_t, void* arg) {
            delete static_cast<std::shared_ptr<const std::string>*>(arg);
          },
          held.get()) == 0)
    held.release();  // owned by the cleanup now
  // libevent writes 16 KiB per send() by default: a 34 MB page would take
  // ~2,000 trips through the loop. 1 MiB per send() (still non-blocking).
  if (evhttp_connection* conn = evhttp_request_get_connection(req))
    if (bufferevent* bev = evhttp_connection_get_bufferevent(conn))
      bufferevent_set_max_single_write(bev, 1 << 20);
  evhttp_send_reply(req, status, reason, buf);
  evbuffer_free(buf);
}

Response jsonResponse(const nlohmann::json& j, int status = 200) {
  return {status, "application/json", j.dump(2) + "\n"};
}

Routes adminRoutes(Sources sources) {
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
  for (const auto& [path, route] : src->routes) r[path] = route;
  return r;
}

const char* reasonPhrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
  }
  return "";
}

Query parseQuery(evhttp_request* req) {
  Query out;
  const evhttp_uri* uri = evhttp_request_get_evhttp_uri(req);
  const char* query = uri ? evhttp_uri_get_query(uri) : nullptr;
  if (!query) return out;
  evkeyvalq params{};  // evhttp_parse_query_str initialises it
  if (evhttp_parse_query_str(query, &params) == 0)
    for (evkeyval* kv = params.tqh_first; kv; kv = kv->next.tqe_next) out[kv->key] = kv->value;
  evhttp_clear_headers(&params);
  return out;
}

constexpr timeval kStreamPoll{0, 100 * 1000};
constexpr size_t kStreamBacklog = 1 << 20;  // bytes sent but not yet taken by the client

}  // namespace

// A streamed response in progress. `req` belongs to evhttp until the
// connection fails (client gone, write timeout) while the reply is still
// open: evhttp then detaches it from the connection and leaves it to us (the
// close callback frees it and ends the session).
struct Server::Session {
  Server* server = nullptr;
  evhttp_request* req = nullptr;
  evhttp_connection* conn = nullptr;
  event* timer = nullptr;
  std::unique_ptr<Stream> stream;
  ~Session() {
    if (timer) event_free(timer);
  }
};

void Server::startStream(evhttp_request* req, const StreamOpener& open) {
  auto stream = open(parseQuery(req));
  if (!stream) {
    int status = stream.error().code == EBUSY ? 503 : 400;
    Response r = jsonResponse({{"error", stream.error().message}}, status);
    reply(req, r.status, reasonPhrase(r.status), r.body, r.content_type.c_str());
    return;
  }
  auto session = std::make_unique<Session>();
  Session* s = session.get();
  s->server = this;
  s->req = req;
  s->conn = evhttp_request_get_connection(req);
  s->stream = std::move(*stream);
  s->timer = event_new(
      base_, -1, EV_PERSIST,
      [](evutil_socket_t, short, void* arg) {
        auto* s = static_cast<Session*>(arg);
        s->server->pollStream(s);
      },
      s);
  sessions_.emplace(s, std::move(session));
  stream_count_.store(sessions_.size(), std::memory_order_relaxed);
  // The client went away (or the write timeout hit): end the session. A
  // request evhttp detached from the failed connection (its reply never
  // ended) is ours to free; one still attached, evhttp frees with it.
  evhttp_connection_set_closecb(
      s->conn,
      [](evhttp_connection*, void* arg) {
        auto* s = static_cast<Session*>(arg);
        if (s->req && !evhttp_request_get_connection(s->req)) evhttp_request_free(s->req);
        s->req = nullptr;
        s->server->endSession(s);
      },
      s);
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/x-ndjson");
  evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-cache");
  evhttp_send_reply_start(req, 200, "OK");
  event_add(s->timer, &kStreamPoll);
}

void Server::pollStream(Session* s) {
  // A client that does not read: stop producing (the stream's own queue drops).
  if (bufferevent* bev = evhttp_connection_get_bufferevent(s->conn))
    if (evbuffer_get_length(bufferevent_get_output(bev)) > kStreamBacklog) return;
  StreamStep step = s->stream->poll();
  if (!step.data.empty()) {
    evbuffer* buf = evbuffer_new();
    evbuffer_add(buf, step.data.data(), step.data.size());
    evhttp_send_reply_chunk(s->req, buf);
    evbuffer_free(buf);
  }
  if (step.done) {
    evhttp_connection_set_closecb(s->conn, nullptr, nullptr);
    evhttp_send_reply_end(s->req);
    s->req = nullptr;
    endSession(s);
  }
}

void Server::endSession(Session* s) {
  sessions_.erase(s);
  stream_count_.store(sessions_.size(), std::memory_order_relaxed);
}

// One libevent loop on the server's own thread: evhttp parses the requests
// (bounded headers, no bodies, timeouts; malformed ones get 400, methods
// other than GET/HEAD, and POST where there are actions, 405) and the
// handler builds each document on demand.
void Server::handle(evhttp_request* req) {
  std::string path = evhttp_request_get_uri(req);
  path = path.substr(0, path.find('?'));
  const bool post = evhttp_request_get_command(req) == EVHTTP_REQ_POST;
  auto action = actions_.find(path);
  if (post || action != actions_.end()) {
    Response r;
    if (action == actions_.end()) {
      evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
      r = jsonResponse({{"error", "POST is for actions only; " + path + " is read by GET"}}, 405);
    } else if (!post) {
      evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
      r = jsonResponse({{"error", path + " changes state: POST only"}}, 405);
    } else if (evhttp_find_header(evhttp_request_get_input_headers(req), "Origin")) {
      // A browser sends Origin with every POST: a web page open on this
      // node must not make the agent act.
      r = jsonResponse({{"error", "refused: a request from a web page (Origin header)"}}, 403);
    } else {
      r = action->second(parseQuery(req));
    }
    reply(req, r.status, reasonPhrase(r.status), r.body, r.content_type.c_str());
    return;
  }
  if (auto st = stream_routes_.find(path); st != stream_routes_.end()) {
    startStream(req, st->second);
    return;
  }
  Response r;
  if (auto q = query_routes_.find(path); q != query_routes_.end()) {
    r = q->second(parseQuery(req));
  } else {
    auto it = routes_.find(path);
    r = it == routes_.end() ? jsonResponse({{"error", "no such endpoint: " + path}}, 404)
                            : it->second();
  }
  if (r.shared_body)
    reply(req, r.status, reasonPhrase(r.status), std::move(r.shared_body), r.content_type.c_str());
  else
    reply(req, r.status, reasonPhrase(r.status), r.body, r.content_type.c_str());
}

Result<std::unique_ptr<Server>> Server::create(const std::string& address, Sources sources) {
  StreamRoutes streams = std::move(sources.streams);
  QueryRoutes queries;
  ActionRoutes actions;
  if (sources.reset_connections)
    actions["/connections/reset"] = [reset = sources.reset_connections](const Query& q) {
      auto [status, doc] = reset(q);
      return jsonResponse(doc, status);
    };
  if (sources.authz_check)
    queries["/authz"] = [check = sources.authz_check](const Query& q) {
      auto [status, doc] = check(q);
      return jsonResponse(doc, status);
    };
  return create(address, "admin API", adminRoutes(std::move(sources)), std::move(streams),
                std::move(queries), std::move(actions));
}

Result<std::unique_ptr<Server>> Server::create(const std::string& address, std::string name,
                                               Routes routes, StreamRoutes streams,
                                               QueryRoutes query_routes, ActionRoutes actions) {
  auto ep = parseEndpoint(address);
  if (!ep) return fail(fmt::format("invalid {} address '{}': expected IP:PORT", name, address));
  std::unique_ptr<Server> self(new Server());
  self->routes_ = std::move(routes);
  self->query_routes_ = std::move(query_routes);
  self->stream_routes_ = std::move(streams);
  self->actions_ = std::move(actions);
  self->base_ = event_base_new();
  if (!self->base_) return fail(name + ": cannot create an event loop");
  self->http_ = evhttp_new(self->base_);
  evhttp_set_allowed_methods(self->http_, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD |
                                              (self->actions_.empty() ? 0 : EVHTTP_REQ_POST));
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
  // evhttp_free closes the streams' connections: their close callbacks must
  // not find sessions that are gone.
  for (auto& [s, session] : sessions_)
    if (session->req) evhttp_connection_set_closecb(session->conn, nullptr, nullptr);
  sessions_.clear();
  if (stop_event_) event_free(stop_event_);
  if (http_) evhttp_free(http_);
  if (base_) event_base_free(base_);
}

}  // namespace sluice::agent::admin
