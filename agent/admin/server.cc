#include "agent/admin/server.h"

#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <vector>

#include "agent/admin/http_connection.h"
#include "sluice/common/addr.h"
#include "sluice/common/json_text.h"
#include "sluice/common/log.h"
#include "sluice/common/log_limiter.h"

namespace sluice::agent::admin {

namespace {

Response jsonResponse(const nlohmann::json& j, int status = 200) {
  return {status, "application/json", jsonText(j, 2) + "\n"};
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

// A query string's parameters: percent-decoded, '+' a space, the last
// value of a repeated name; a name without '=' has the empty value.
std::string decode(std::string_view in) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '+') {
      out += ' ';
    } else if (in[i] == '%' && i + 2 < in.size() && hex(in[i + 1]) >= 0 && hex(in[i + 2]) >= 0) {
      out += char(hex(in[i + 1]) * 16 + hex(in[i + 2]));
      i += 2;
    } else {
      out += in[i];
    }
  }
  return out;
}

Query parseQuery(std::string_view target) {
  Query out;
  size_t q = target.find('?');
  if (q == std::string_view::npos) return out;
  std::string_view rest = target.substr(q + 1);
  rest = rest.substr(0, rest.find('#'));
  while (!rest.empty()) {
    std::string_view pair = rest.substr(0, rest.find('&'));
    rest.remove_prefix(std::min(rest.size(), pair.size() + 1));
    if (pair.empty()) continue;
    size_t eq = pair.find('=');
    out[decode(pair.substr(0, eq))] =
        eq == std::string_view::npos ? std::string() : decode(pair.substr(eq + 1));
  }
  return out;
}

// Registers (or changes, or removes) what epoll reports for fd.
int epollSet(int epfd, int op, int fd, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  return ::epoll_ctl(epfd, op, fd, &ev);
}

constexpr auto kStreamPoll = std::chrono::milliseconds(100);
// While a stream runs: its source's queue (a tap session's: 256 requests per
// worker) is emptied 50 times a second, so it keeps up with about 12,800
// requests/s per worker before it drops.
constexpr auto kStreamPollActive = std::chrono::milliseconds(20);
constexpr size_t kStreamBacklog = 1 << 20;  // bytes sent but not yet taken by the client
constexpr size_t kMaxClients = 256;
// From one address: a scraper or an operator needs a few; a pod that opens
// hundreds and trickles their requests must not take them all (the metrics
// port listens where every pod reaches it).
constexpr size_t kMaxPerSource = 32;
// Answers queued on all connections together and not yet taken by their
// clients. Beyond it no connection takes a new request (a client that does
// not read holds at most its 1 MiB; 256 of them would otherwise hold 256
// MiB), until clients take what is queued or time out.
constexpr size_t kQueuedBudget = 16 << 20;

}  // namespace

// One client connection, and the stream it is being served, if any.
struct Server::Client {
  Client(UniqueFd fd, std::string from) : conn(std::move(fd)), source(std::move(from)) {}
  Connection conn;
  std::string source;  // the peer's address (per_source_)
  std::unique_ptr<Stream> stream;
  uint32_t watched = 0;  // the epoll events registered
  size_t counted = 0;    // its queued bytes as counted in queued_
  bool starved = false;  // a request may wait: the server was over its budget
};

// Requests are answered on the server's thread as they are parsed: a
// document is built and queued; an action is run; a stream is opened and
// then polled by tick() every 20 ms (100 ms without a stream).
void Server::handle(Client& c, const Request& req) {
  Connection& conn = c.conn;
  std::string path = req.target.substr(0, req.target.find('?'));
  auto json = [&](const nlohmann::json& j, int status, std::string_view extra = {}) {
    Response r = jsonResponse(j, status);
    conn.respond(r.status, r.content_type, std::move(r.body), extra);
  };
  const bool read = req.method == HTTP_GET || req.method == HTTP_HEAD;
  const bool post = req.method == HTTP_POST;
  auto action = actions_.find(path);
  if (action != actions_.end()) {
    if (!post)
      json({{"error", path + " changes state: POST only"}}, 405, "Allow: POST\r\n");
    else if (req.has_origin)
      // A browser sends Origin with every POST: a web page open on this
      // node must not make the agent act.
      json({{"error", "refused: a request from a web page (Origin header)"}}, 403);
    else {
      Response r = action->second(parseQuery(req.target));
      conn.respond(r.status, r.content_type, std::move(r.body));
    }
    return;
  }
  const bool known =
      routes_.count(path) > 0 || query_routes_.count(path) > 0 || stream_routes_.count(path) > 0;
  if (!known) {
    json({{"error", "no such endpoint: " + path}}, 404);
    return;
  }
  if (!read) {
    std::string why = post ? "POST is for actions only; " + path + " is read by GET"
                           : fmt::format("method {} not served; {} is read by GET",
                                         http_method_str(req.method), path);
    json({{"error", why}}, 405, "Allow: GET, HEAD\r\n");
    return;
  }
  if (auto st = stream_routes_.find(path); st != stream_routes_.end()) {
    // HEAD: the same checks and head as GET, the stream closed at once.
    auto stream = st->second(parseQuery(req.target));
    if (!stream) {
      json({{"error", stream.error().message}}, stream.error().code == EBUSY ? 503 : 400);
      return;
    }
    if (req.method != HTTP_HEAD) {
      c.stream = std::move(*stream);
      stream_count_.fetch_add(1, std::memory_order_relaxed);
    }
    conn.startStream("application/x-ndjson", "Cache-Control: no-cache\r\n");
    return;
  }
  Response r;
  if (auto q = query_routes_.find(path); q != query_routes_.end()) {
    r = q->second(parseQuery(req.target));
  } else {
    r = routes_.at(path)();  // known (above)
  }
  if (r.shared_body)
    conn.respond(r.status, r.content_type, std::move(r.shared_body));
  else
    conn.respond(r.status, r.content_type, std::move(r.body));
}

// Reads, answers what is complete, writes; then closes the client or
// registers what it waits for.
void Server::service(Client& c, bool readable) {
  if (readable && !c.conn.readSome()) return close(c);
  while (true) {
    c.starved = false;
    while (true) {
      if (queued_ >= kQueuedBudget) {
        c.starved = true;  // tick() comes back to it
        break;
      }
      auto req = c.conn.next();
      if (!req) break;
      try {
        handle(c, *req);
      } catch (const std::exception& e) {
        // A defect of ours answering a request must not end the agent: the
        // client gets a 500, every other client and the data path go on.
        SLUICE_LOG_LIMITED(limiter_, log::get("admin"), spdlog::level::err,
                           "{}: answering {} failed: {}", name_, req->target.substr(0, 200),
                           e.what());
        c.conn.respond(
            500, "application/json",
            jsonText(nlohmann::json{{"error", std::string("internal error: ") + e.what()}}) + "\n");
      }
      account(c);
    }
    const bool blocked = c.conn.blocked();
    if (!c.conn.flush()) return close(c);
    account(c);
    // Answering stopped at the bound and the write took it all: answer on
    // (nothing would wake this connection again otherwise).
    if (!blocked || c.conn.pending() > 0) break;
  }
  // A streamed answer's client has gone when it closes its end.
  if (c.conn.done() || (c.stream && c.conn.eof())) return close(c);
  watch(c);
}

void Server::watch(Client& c) {
  uint32_t want = (c.conn.wantsRead() ? EPOLLIN : 0u) | (c.conn.pending() ? EPOLLOUT : 0u);
  if (want == c.watched) return;
  epollSet(epoll_fd_.get(), EPOLL_CTL_MOD, c.conn.fd(), want);
  c.watched = want;
}

void Server::account(Client& c) {
  queued_ = queued_ - c.counted + c.conn.pending();
  c.counted = c.conn.pending();
  if (queued_ > queued_peak_.load(std::memory_order_relaxed))
    queued_peak_.store(queued_, std::memory_order_relaxed);
}

void Server::close(Client& c) {
  queued_ -= c.counted;
  if (c.stream) stream_count_.fetch_sub(1, std::memory_order_relaxed);
  ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, c.conn.fd(), nullptr);
  if (auto it = per_source_.find(c.source); it != per_source_.end() && --it->second == 0)
    per_source_.erase(it);
  clients_.erase(c.conn.fd());  // closes the socket
}

void Server::acceptAll() {
  while (accepting_) {
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof(peer);
    UniqueFd fd(::accept4(listen_fd_.get(), reinterpret_cast<sockaddr*>(&peer), &peer_len,
                          SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: stop taking connections until the next tick
        // rather than spin on a listener that stays readable.
        SLUICE_LOG_LIMITED(limiter_, log::get("admin"), spdlog::level::warn,
                           "{}: cannot accept a connection: {} (retrying)", name_,
                           std::strerror(errno));
        accepting_ = false;
        ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, listen_fd_.get(), nullptr);
      }
      return;
    }
    if (clients_.size() >= kMaxClients) {
      SLUICE_LOG_LIMITED(limiter_, log::get("admin"), spdlog::level::warn,
                         "{}: {} connections open, refusing another", name_, kMaxClients);
      continue;  // closed
    }
    IpAddr from = SockAddr::fromRaw(reinterpret_cast<const sockaddr*>(&peer), peer_len).ip();
    std::string source = from.empty() ? "local" : from.str();  // a unix socket: not limited
    size_t& from_source = per_source_[source];
    if (from_source >= kMaxPerSource && source != "local") {
      SLUICE_LOG_LIMITED(limiter_, log::get("admin"), spdlog::level::warn,
                         "{}: {} connections open from {}, refusing another from it", name_,
                         kMaxPerSource, source);
      continue;  // closed
    }
    int raw = fd.get();
    auto client = std::make_unique<Client>(std::move(fd), source);
    if (epollSet(epoll_fd_.get(), EPOLL_CTL_ADD, raw, EPOLLIN) != 0) {
      if (from_source == 0) per_source_.erase(source);
      continue;
    }
    from_source++;
    client->watched = EPOLLIN;
    clients_.emplace(raw, std::move(client));
  }
}

// Every 100 ms: streams produce (unless their client has not taken 1 MiB
// already sent: the stream's own queue drops meanwhile), idle and stuck
// connections are dropped, connections held back by the server's budget
// are answered if it allows, a paused listener resumes.
void Server::tick() {
  limiter_.flush();
  auto now = Connection::Clock::now();
  std::vector<Client*> all;
  all.reserve(clients_.size());
  for (auto& [fd, c] : clients_) all.push_back(c.get());
  for (Client* c : all) {
    if (c->conn.expired(now)) {
      close(*c);
      continue;
    }
    if (c->stream && c->conn.pending() <= kStreamBacklog) {
      StreamStep step = c->stream->poll();
      c->conn.streamData(std::move(step.data));
      if (step.done) {
        c->stream.reset();
        stream_count_.fetch_sub(1, std::memory_order_relaxed);
        c->conn.endStream();
      }
      service(*c, false);  // may close it
    } else if (c->starved && queued_ < kQueuedBudget) {
      service(*c, false);
    }
  }
  if (!accepting_) {
    accepting_ = true;
    epollSet(epoll_fd_.get(), EPOLL_CTL_ADD, listen_fd_.get(), EPOLLIN);
  }
}

void Server::run() {
  std::array<epoll_event, 64> events;
  auto next_tick = Connection::Clock::now() + kStreamPoll;
  while (true) {
    int timeout = -1;
    if (!clients_.empty() || !accepting_) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(next_tick -
                                                                        Connection::Clock::now());
      timeout = int(std::max<long>(0, left.count()));
    }
    int n = ::epoll_wait(epoll_fd_.get(), events.data(), int(events.size()), timeout);
    for (int i = 0; i < n; ++i) {
      int fd = events[size_t(i)].data.fd;
      if (fd == stop_fd_.get()) return;
      if (fd == listen_fd_.get()) {
        acceptAll();
        continue;
      }
      auto it = clients_.find(fd);
      if (it != clients_.end())
        service(*it->second, events[size_t(i)].events & (EPOLLIN | EPOLLHUP | EPOLLERR));
    }
    if (Connection::Clock::now() >= next_tick) {
      tick();
      next_tick = Connection::Clock::now() +
                  (stream_count_.load(std::memory_order_relaxed) ? kStreamPollActive : kStreamPoll);
    }
  }
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
  self->name_ = name;
  self->listen_fd_ = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  int one = 1;
  ::setsockopt(self->listen_fd_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(self->listen_fd_.get(), reinterpret_cast<const sockaddr*>(&*ep), sizeof(*ep)) != 0 ||
      ::listen(self->listen_fd_.get(), 64) != 0)
    return failErrno(
        fmt::format("cannot listen on {} address {} (is another agent running?)", name, address));
  self->epoll_fd_ = UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
  self->stop_fd_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!self->epoll_fd_ || !self->stop_fd_)
    return failErrno(name + ": cannot create its event loop");
  for (int fd : {self->listen_fd_.get(), self->stop_fd_.get()})
    if (epollSet(self->epoll_fd_.get(), EPOLL_CTL_ADD, fd, EPOLLIN) != 0)
      return failErrno(name + ": cannot create its event loop");
  self->address_ = address;
  Server* s = self.get();
  self->thread_ = std::jthread([s] { s->run(); });
  log::get("admin")->info("{} on http://{}", name, address);
  return self;
}

Server::~Server() {
  if (thread_.joinable()) {
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(stop_fd_.get(), &one, sizeof(one));
    thread_.join();
  }
}

}  // namespace sluice::agent::admin
