#include "agent/upgrade/handover.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "agent/upgrade/observations.h"
#include "sluice/common/json_text.h"
#include "sluice/common/log.h"

namespace sluice::agent::upgrade {

namespace {

auto logger() { return log::get("upgrade"); }

constexpr size_t kMaxMessageBytes = 64 * 1024;
// How long the old agent waits for "adopted": the successor re-adopts every
// pod (netns, tc, maps) in between.
constexpr std::chrono::seconds kAdoptTimeout{60};

Result<sockaddr_un> unixAddress(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path))
    return fail(fmt::format("handover socket path {} is too long for a unix socket", path));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  return addr;
}

Result<nlohmann::json> parse(const Message& m, const char* want) {
  auto j = nlohmann::json::parse(m.text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("op") || !j["op"].is_string())
    return fail("malformed handover message");
  std::string op = j["op"].get<std::string>();
  if (op == "refused")
    return fail("the running agent refused the handover: " +
                messageField(j, "error", std::string("?")));
  if (op != want) return fail(fmt::format("expected '{}' in the handover, got '{}'", want, op));
  return j;
}

// Raw bytes per message after a connection's header (within kMaxMessageBytes).
constexpr size_t kChunkBytes = 60 * 1024;

}  // namespace

// ------------------------------------------------------------------ wire

Result<void> sendMessage(int sock, const std::string& text, const std::vector<int>& fds) {
  if (fds.size() > kMaxFdsPerMessage) return fail("too many descriptors for one message");
  iovec iov{const_cast<char*>(text.data()), text.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  while (true) {
    ssize_t n = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n >= 0) return {};
    if (errno != EINTR) return failErrno("sending a handover message failed");
  }
}

Result<Message> recvMessage(int sock, std::chrono::milliseconds timeout) {
  pollfd p{sock, POLLIN, 0};
  int ready;
  do {
    ready = ::poll(&p, 1, static_cast<int>(timeout.count()));
  } while (ready < 0 && errno == EINTR);
  if (ready < 0) return failErrno("poll on the handover socket failed");
  if (ready == 0) return fail(fmt::format("no handover message within {} ms", timeout.count()));
  std::string buf(kMaxMessageBytes, '\0');
  iovec iov{buf.data(), buf.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return failErrno("receiving a handover message failed");
  Message out;
  // Take ownership of what arrived before anything can fail.
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      out.fds.emplace_back(fd);
    }
  }
  if (n == 0) return fail("the other agent closed the handover connection");
  if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) return fail("a handover message was truncated");
  out.text.assign(buf.data(), static_cast<size_t>(n));
  return out;
}

Result<uid_t> peerUid(int sock) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
    return failErrno("SO_PEERCRED on the handover socket failed");
  return cred.uid;
}

Result<void> sendConnection(int sock, const ztunnel::ConnectionFd& c) {
  const auto& r = c.record;
  std::string bytes = c.to_upstream + c.to_client;
  size_t chunks = (bytes.size() + kChunkBytes - 1) / kChunkBytes;
  nlohmann::json m{{"op", "connection"},
                   {"pod_uid", c.pod_uid},
                   {"target_uid", c.target_uid},
                   {"dest_pod_uid", c.dest_pod_uid},
                   {"dest_pod", c.dest_pod},
                   {"client_eof", c.client_eof},
                   {"upstream_eof", c.upstream_eof},
                   {"upstream_shut", c.upstream_shut},
                   {"client_shut", c.client_shut},
                   {"to_upstream", c.to_upstream.size()},
                   {"to_client", c.to_client.size()},
                   {"chunks", chunks}};
  writeRecord(r, m);
  if (auto ok = sendMessage(sock, jsonText(m), {c.client.get(), c.upstream.get()}); !ok) return ok;
  for (size_t i = 0; i < chunks; ++i)
    if (auto ok = sendMessage(sock, bytes.substr(i * kChunkBytes, kChunkBytes)); !ok) return ok;
  return {};
}

Result<ztunnel::ConnectionFd> recvConnection(int sock, std::chrono::milliseconds timeout) {
  auto m = recvMessage(sock, timeout);
  if (!m) return tl::unexpected(m.error());
  auto j = parse(*m, "connection");
  if (!j) return tl::unexpected(j.error());
  if (m->fds.size() != 2) return fail("a handed-over connection came without its two sockets");
  ztunnel::ConnectionFd c;
  c.client = std::move(m->fds[0]);
  c.upstream = std::move(m->fds[1]);
  auto rec = readRecord(*j);
  if (!rec)
    return fail(fmt::format("malformed handed-over connection: {}", rec.error().describe()));
  if (rec->path == ztunnel::Path::kNone) return fail("a handed-over connection has no path");
  c.record = std::move(*rec);
  // The successor's record continues it: its own id, open.
  c.record.id = 0;
  c.record.state = ztunnel::ConnState::kOpen;
  c.record.reason = ztunnel::CloseReason::kNone;
  c.record.reason_detail.clear();
  size_t to_upstream = 0, to_client = 0, chunks = 0;
  try {
    const auto& h = *j;
    c.pod_uid = h.at("pod_uid").get<std::string>();
    c.target_uid = h.at("target_uid").get<std::string>();
    c.dest_pod_uid = h.at("dest_pod_uid").get<std::string>();
    c.dest_pod = h.at("dest_pod").get<std::string>();
    c.client_eof = h.at("client_eof").get<bool>();
    c.upstream_eof = h.at("upstream_eof").get<bool>();
    c.upstream_shut = h.at("upstream_shut").get<bool>();
    c.client_shut = h.at("client_shut").get<bool>();
    to_upstream = h.at("to_upstream").get<size_t>();
    to_client = h.at("to_client").get<size_t>();
    chunks = h.at("chunks").get<size_t>();
  } catch (const nlohmann::json::exception& e) {
    return fail(fmt::format("malformed handed-over connection: {}", e.what()));
  }
  if (chunks != (to_upstream + to_client + kChunkBytes - 1) / kChunkBytes)
    return fail("a handed-over connection's byte counts do not match its chunks");
  std::string bytes;
  for (size_t i = 0; i < chunks; ++i) {
    auto d = recvMessage(sock, timeout);
    if (!d) return tl::unexpected(d.error());
    bytes += d->text;
  }
  if (bytes.size() != to_upstream + to_client)
    return fail("a handed-over connection's buffered bytes are incomplete");
  c.to_upstream = bytes.substr(0, to_upstream);
  c.to_client = bytes.substr(to_upstream);
  return c;
}

// ------------------------------------------------------------------ server

Result<std::unique_ptr<HandoverServer>> HandoverServer::create(const std::string& path,
                                                               Handler& handler,
                                                               uid_t allowed_uid) {
  auto addr = unixAddress(path);
  if (!addr) return tl::unexpected(addr.error());
  std::unique_ptr<HandoverServer> self(new HandoverServer(handler, allowed_uid));
  self->path_ = path;
  self->listen_fd_.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!self->listen_fd_) return failErrno("socket(AF_UNIX, SOCK_SEQPACKET) failed");
  ::unlink(path.c_str());  // a stale socket: its agent is gone (a live one was taken over)
  mode_t old = ::umask(0077);
  int rc = ::bind(self->listen_fd_.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr));
  ::umask(old);
  if (rc != 0) return failErrno(fmt::format("cannot bind the handover socket {}", path));
  if (::listen(self->listen_fd_.get(), 4) != 0) return failErrno("listen on the handover socket");
  self->wake_fd_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!self->wake_fd_) return failErrno("eventfd failed");
  HandoverServer* s = self.get();
  self->thread_ = std::jthread([s] { s->loop(); });
  logger()->info("a successor agent can take over through {}", path);
  return self;
}

HandoverServer::~HandoverServer() {
  if (wake_fd_) {
    uint64_t one = 1;
    (void)!::write(wake_fd_.get(), &one, sizeof(one));
  }
  if (thread_.joinable()) thread_.join();
  // After a handover the path is the successor's socket: leave it.
  if (!path_.empty() && !handed_over_) ::unlink(path_.c_str());
}

void HandoverServer::loop() {
  while (!handed_over_.load()) {
    pollfd fds[2] = {{listen_fd_.get(), POLLIN, 0}, {wake_fd_.get(), POLLIN, 0}};
    int n = ::poll(fds, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      logger()->error("poll on the handover socket failed: {}", std::strerror(errno));
      return;
    }
    if (fds[1].revents) return;
    if (!(fds[0].revents & POLLIN)) continue;
    UniqueFd peer(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (peer) serve(std::move(peer));
  }
  listen_fd_.reset();  // nobody else may take over from an agent that handed over
}

void HandoverServer::serve(UniqueFd peer) {
  auto uid = peerUid(peer.get());
  if (!uid || *uid != allowed_uid_) {
    std::string why =
        uid ? fmt::format("uid {} may not take over (only uid {})", *uid, allowed_uid_)
            : uid.error().describe();
    logger()->warn("refused a handover: {}", why);
    (void)sendMessage(peer.get(), jsonText(nlohmann::json{{"op", "refused"}, {"error", why}}));
    // Closing with its hello unread would reset the connection before the
    // peer reads why.
    (void)recvMessage(peer.get(), std::chrono::seconds(1));
    return;
  }
  auto hello = recvMessage(peer.get(), std::chrono::seconds(10));
  Result<nlohmann::json> j = hello ? parse(*hello, "hello") : tl::unexpected(hello.error());
  if (!j) {
    logger()->warn("handover: {}", j.error().describe());
    return;
  }
  const int version = messageField(*j, "version", 0);
  if (version != kProtocolVersion) {
    std::string why =
        fmt::format("protocol version {} (this agent speaks {})", version, kProtocolVersion);
    logger()->warn("refused a handover: {}", why);
    (void)sendMessage(peer.get(), jsonText(nlohmann::json{{"op", "refused"}, {"error", why}}));
    return;
  }
  logger()->info("a successor agent is taking over: freezing the pod set");
  auto listeners = handler_.freeze();
  if (!listeners) {
    (void)sendMessage(peer.get(), jsonText(nlohmann::json{
                                      {"op", "refused"}, {"error", listeners.error().describe()}}));
    handler_.thaw(listeners.error().describe());
    return;
  }
  auto fail_with = [&](const std::string& why) {
    logger()->error("handover failed: {}; this agent carries on", why);
    handler_.thaw(why);
  };
  size_t sent = 0;
  do {
    nlohmann::json items = nlohmann::json::array();
    std::vector<int> fds;
    for (; sent < listeners->size() && fds.size() < kMaxFdsPerMessage; ++sent) {
      const auto& l = (*listeners)[sent];
      items.push_back({{"pod", l.pod_uid}, {"kind", l.kind}});
      fds.push_back(l.fd.get());
    }
    nlohmann::json m{{"op", "listeners"}, {"items", items}, {"more", sent < listeners->size()}};
    if (auto r = sendMessage(peer.get(), jsonText(m), fds); !r)
      return fail_with(r.error().describe());
  } while (sent < listeners->size());
  listeners->clear();  // the successor holds them now
  auto adopted = recvMessage(peer.get(), kAdoptTimeout);
  Result<nlohmann::json> a = adopted ? parse(*adopted, "adopted") : tl::unexpected(adopted.error());
  if (!a) return fail_with(a.error().describe());
  handler_.release();
  std::vector<ztunnel::ConnectionFd> connections;
  const bool with_connections = messageField(*j, "connections", false);
  if (with_connections) connections = handler_.exportConnections();
  nlohmann::json released{{"op", "released"}};
  if (with_connections) released["connections"] = connections.size();
  const bool observations = messageField(*j, "observations", false);
  if (observations) released["observations"] = true;
  // The agent drains from now on; its destructor waits for this thread.
  handed_over_ = true;
  (void)sendMessage(peer.get(), jsonText(released));
  size_t moved = 0;
  for (const auto& c : connections) {
    if (auto r = sendConnection(peer.get(), c); !r) {
      logger()->error("handing over a connection failed: {}; {} connection(s) lost",
                      r.error().describe(), connections.size() - moved);
      break;
    }
    ++moved;
  }
  connections.clear();  // the successor holds them now (or they are lost)
  handler_.observationsTo(observations ? std::move(peer) : UniqueFd());
  logger()->info(
      "handed over {} listener(s) and {} plaintext connection(s) to the successor; this agent no "
      "longer accepts",
      sent, moved);
}

// ------------------------------------------------------------------ client

Result<std::unique_ptr<HandoverClient>> HandoverClient::connect(const std::string& path,
                                                                std::chrono::milliseconds timeout,
                                                                uid_t allowed_uid) {
  auto addr = unixAddress(path);
  if (!addr) return tl::unexpected(addr.error());
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd) return failErrno("socket(AF_UNIX, SOCK_SEQPACKET) failed");
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
    if (errno == ENOENT || errno == ECONNREFUSED) return nullptr;  // no agent running
    return failErrno(fmt::format("cannot connect to the handover socket {}", path));
  }
  auto uid = peerUid(fd.get());
  if (!uid) return tl::unexpected(uid.error());
  if (*uid != allowed_uid)
    return fail(fmt::format("the process behind {} runs as uid {}, not {}: not taking over from it",
                            path, *uid, allowed_uid));
  std::unique_ptr<HandoverClient> self(new HandoverClient(std::move(fd), timeout));
  int sock = self->fd_.get();
  if (auto r = sendMessage(sock, jsonText(nlohmann::json{{"op", "hello"},
                                                         {"version", kProtocolVersion},
                                                         {"connections", true},
                                                         {"observations", true}}));
      !r) {
    // Refused at once: the reason is still queued for us.
    auto m = recvMessage(sock, std::chrono::milliseconds(100));
    if (!m) return tl::unexpected(r.error());
    if (auto j = parse(*m, "listeners"); !j) return tl::unexpected(j.error());
    return tl::unexpected(r.error());
  }
  while (true) {
    auto m = recvMessage(sock, timeout);
    if (!m) return tl::unexpected(m.error());
    auto j = parse(*m, "listeners");
    if (!j) return tl::unexpected(j.error());
    const auto& items = (*j)["items"];
    if (!items.is_array() || items.size() != m->fds.size())
      return fail("a handover message's sockets do not match its items");
    for (size_t i = 0; i < items.size(); ++i) {
      if (!items[i].is_object() || !items[i].contains("pod") || !items[i]["pod"].is_string() ||
          !items[i].contains("kind") || !items[i]["kind"].is_string())
        return fail("malformed listener item in the handover");
      self->listeners_.push_back({items[i]["pod"].get<std::string>(),
                                  items[i]["kind"].get<std::string>(), std::move(m->fds[i])});
    }
    if (!messageField(*j, "more", false)) break;
  }
  return self;
}

Result<void> HandoverClient::release() {
  if (auto r = sendMessage(fd_.get(), jsonText(nlohmann::json{{"op", "adopted"}})); !r) return r;
  auto m = recvMessage(fd_.get(), timeout_);
  if (!m) return tl::unexpected(m.error());
  auto j = parse(*m, "released");
  if (!j) return tl::unexpected(j.error());
  auto n = messageField(*j, "connections", size_t{0});
  for (size_t i = 0; i < n; ++i) {
    auto c = recvConnection(fd_.get(), timeout_);
    if (!c)
      return fail(
          fmt::format("connection {} of {} in the handover: {}", i + 1, n, c.error().describe()));
    connections_.push_back(std::move(*c));
  }
  // Only after every connection: a socket left part-way is out of step.
  observations_ = messageField(*j, "observations", false);
  return {};
}

std::unique_ptr<ObservationReceiver> HandoverClient::receiveObservations(
    ztunnel::ConnectionObserver& observer, unsigned slot) {
  if (!observations_ || !fd_) return nullptr;
  return std::make_unique<ObservationReceiver>(std::move(fd_), observer, slot);
}

}  // namespace sluice::agent::upgrade
