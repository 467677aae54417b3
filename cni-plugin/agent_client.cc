#include "cni-plugin/agent_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "sluice/common/unique_fd.h"

namespace sluice::cni {

namespace {
tl::unexpected<AgentError> failure(AgentFailure kind, std::string message) {
  return tl::unexpected<AgentError>(AgentError{kind, std::move(message)});
}
}  // namespace

tl::expected<CniReply, AgentError> callAgent(const PluginConfig& cfg, const CniRequest& req) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd)
    return failure(AgentFailure::kNoAnswer,
                   std::string("socket(AF_UNIX) failed: ") + std::strerror(errno));
  sockaddr_un addr{};
  if (cfg.agent_socket.size() >= sizeof(addr.sun_path))
    return failure(AgentFailure::kUnreachable, "agentSocket path too long");
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, cfg.agent_socket.c_str(), cfg.agent_socket.size());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(cfg.timeout_ms);
  auto left = [&] {
    return std::max<int>(0, static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                 deadline - std::chrono::steady_clock::now())
                                                 .count()));
  };
  // A unix socket connects at once or not at all; EAGAIN is a full accept
  // backlog: the agent is there, only busy.
  while (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int e = errno;
    if (e == EINTR) continue;
    if (e == EAGAIN || e == EINPROGRESS) {
      if (left() == 0)
        return failure(AgentFailure::kBusy,
                       fmt::format("the agent accepted no connection within {} ms (its queue "
                                   "of CNI requests is full)",
                                   cfg.timeout_ms));
      std::this_thread::sleep_for(std::chrono::milliseconds(std::min(10, left())));
      continue;
    }
    if (e == ENOENT || e == ECONNREFUSED)
      return failure(AgentFailure::kUnreachable, std::strerror(e));
    return failure(AgentFailure::kNoAnswer, std::strerror(e));
  }
  std::string out = encode(req);
  size_t off = 0;
  std::string send_error;
  while (off < out.size()) {
    pollfd p{fd.get(), POLLOUT, 0};
    if (::poll(&p, 1, left()) <= 0)
      return failure(AgentFailure::kNoAnswer, "timed out sending to the agent");
    ssize_t n = ::send(fd.get(), out.data() + off, out.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      // The agent may have answered without reading the whole request (a
      // busy agent does): its reply is still there to read.
      send_error = std::strerror(errno);
      break;
    }
    off += static_cast<size_t>(n);
  }
  std::string in;
  char buf[4096];
  while (in.find('\n') == std::string::npos) {
    pollfd p{fd.get(), POLLIN, 0};
    if (::poll(&p, 1, left()) <= 0)
      return failure(AgentFailure::kNoAnswer,
                     fmt::format("no answer from the agent within {} ms", cfg.timeout_ms));
    ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) break;
    in.append(buf, static_cast<size_t>(n));
    if (in.size() > kMaxMessageBytes)
      return failure(AgentFailure::kNoAnswer, "agent reply too large");
  }
  if (in.empty())
    return failure(
        AgentFailure::kNoAnswer,
        send_error.empty()
            ? std::string("the agent closed the connection without answering")
            : "the agent closed the connection before the request was sent (" + send_error + ")");
  auto reply = decodeReply(in.substr(0, in.find('\n')));
  if (!reply)
    return failure(AgentFailure::kNoAnswer, "malformed agent reply: " + reply.error().describe());
  return *reply;
}

}  // namespace sluice::cni
