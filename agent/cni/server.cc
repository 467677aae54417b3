#include "agent/cni/server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>

#include "sluice/common/log.h"

namespace sluice::agent::cni {

namespace {
auto logger() { return log::get("cni"); }

void writeAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

// Too many requests in flight: the client is told to retry (CNI code 11),
// on the loop thread, so it never waits. What the client already sent is
// read first, without waiting for more: closing a unix socket with unread
// data resets the client's side, and a client whose request is still being
// sent gets EPIPE — a busy agent must never look like an absent one, which
// a plugin with failOpen would let pods start unmeshed past.
void answerBusy(int fd) {
  char buf[4096];
  size_t drained = 0;
  while (drained <= sluice::cni::kMaxMessageBytes) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n <= 0) break;
    drained += static_cast<size_t>(n);
  }
  CniReply busy{false, false,
                fmt::format("busy: {} CNI requests are in flight; retry (the container "
                            "runtime retries this request by itself)",
                            Server::kMaxInFlight),
                ""};
  busy.code = sluice::cni::kReplyTryAgainLater;
  writeAll(fd, sluice::cni::encode(busy));
  ::shutdown(fd, SHUT_WR);
}
}  // namespace

Result<std::unique_ptr<Server>> Server::create(const std::string& socket_path, Handler& handler) {
  std::unique_ptr<Server> self(new Server(handler));
  self->path_ = socket_path;
  sockaddr_un addr{};
  if (socket_path.size() >= sizeof(addr.sun_path))
    return fail(fmt::format("CNI socket path {} is too long for a unix socket", socket_path));
  std::error_code ec;
  auto parent = std::filesystem::path(socket_path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  if (ec) return fail(fmt::format("cannot create {}: {}", parent.string(), ec.message()));
  ::unlink(socket_path.c_str());  // stale socket of a previous agent
  self->listen_fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!self->listen_fd_) return failErrno("socket(AF_UNIX) failed");
  int fd = self->listen_fd_.get();
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size());
  // Root-only: the socket decides which pods get a proxy.
  mode_t old = ::umask(0077);
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  ::umask(old);
  if (rc != 0) return failErrno(fmt::format("cannot bind CNI socket {}", socket_path));
  ::chmod(socket_path.c_str(), 0600);
  if (::listen(fd, 128) != 0) return failErrno("listen on CNI socket failed");
  self->wake_fd_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!self->wake_fd_) return failErrno("eventfd failed");
  Server* s = self.get();
  self->thread_ = std::jthread([s] { s->loop(); });
  logger()->info("listening for sluice-cni on {}", socket_path);
  return self;
}

Server::~Server() {
  if (wake_fd_) {
    uint64_t one = 1;
    (void)!::write(wake_fd_.get(), &one, sizeof(one));
  }
  if (thread_.joinable()) thread_.join();
  // Requests still being handled hold a reference to handler_: wait them out.
  while (in_flight_.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  if (!path_.empty()) ::unlink(path_.c_str());
}

void Server::loop() {
  while (true) {
    pollfd fds[2] = {{listen_fd_.get(), POLLIN, 0}, {wake_fd_.get(), POLLIN, 0}};
    int n = ::poll(fds, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      logger()->error("poll on the CNI socket failed: {}", std::strerror(errno));
      return;
    }
    if (fds[1].revents) return;
    if (!(fds[0].revents & POLLIN)) continue;
    UniqueFd conn(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) continue;
    if (in_flight_.load() >= kMaxInFlight) {
      answerBusy(conn.get());
      continue;
    }
    in_flight_.fetch_add(1);
    std::thread([this, conn = std::move(conn)]() mutable {
      serve(conn.get());
      conn.reset();  // closed before ~Server may stop waiting for this request
      in_flight_.fetch_sub(1);
    }).detach();
  }
}

void Server::serve(int fd) {
  std::string line;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kReadDeadlineMs);
  char buf[4096];
  while (line.find('\n') == std::string::npos) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      logger()->warn("CNI client sent no complete request within {} ms; closing", kReadDeadlineMs);
      writeAll(fd, sluice::cni::encode(CniReply{false, false, "request not received in time", ""}));
      return;
    }
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;  // EOF without newline: parse what we have
    line.append(buf, static_cast<size_t>(n));
    if (line.size() > sluice::cni::kMaxMessageBytes) {
      writeAll(fd, sluice::cni::encode(CniReply{false, false, "request larger than 64 KiB", ""}));
      return;
    }
  }
  auto req = sluice::cni::decodeRequest(line.substr(0, line.find('\n')));
  if (!req) {
    logger()->warn("rejected malformed CNI request: {}", req.error().describe());
    writeAll(fd, sluice::cni::encode(
                     CniReply{false, false, "malformed request: " + req.error().describe(), ""}));
    return;
  }
  logger()->info("CNI {} container={} pod={}/{}", req->command, req->container_id,
                 req->pod_namespace, req->pod_name);
  CniReply reply = handler_.handle(*req);
  if (!reply.ok)
    logger()->warn("CNI {} for {}/{} failed: {}", req->command, req->pod_namespace, req->pod_name,
                   reply.error);
  writeAll(fd, sluice::cni::encode(reply));
}

}  // namespace sluice::agent::cni
