#include "cni-plugin/agent_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "sluice/common/unique_fd.h"

namespace sluice::cni {

tl::expected<CniReply, std::string> callAgent(const PluginConfig& cfg, const CniRequest& req) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return tl::unexpected(std::string("socket(AF_UNIX) failed: ") + std::strerror(errno));
  sockaddr_un addr{};
  if (cfg.agent_socket.size() >= sizeof(addr.sun_path))
    return tl::unexpected(std::string("agentSocket path too long"));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, cfg.agent_socket.c_str(), cfg.agent_socket.size());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(cfg.timeout_ms);
  auto left = [&] {
    return std::max<int>(0, static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                 deadline - std::chrono::steady_clock::now())
                                                 .count()));
  };
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 &&
      errno != EINPROGRESS && errno != EAGAIN)
    return tl::unexpected(std::string(std::strerror(errno)));
  std::string out = encode(req);
  size_t off = 0;
  while (off < out.size()) {
    pollfd p{fd.get(), POLLOUT, 0};
    if (::poll(&p, 1, left()) <= 0)
      return tl::unexpected(std::string("timed out sending to the agent"));
    ssize_t n = ::send(fd.get(), out.data() + off, out.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return tl::unexpected(std::string(std::strerror(errno)));
    }
    off += static_cast<size_t>(n);
  }
  std::string in;
  char buf[4096];
  while (in.find('\n') == std::string::npos) {
    pollfd p{fd.get(), POLLIN, 0};
    if (::poll(&p, 1, left()) <= 0)
      return tl::unexpected(fmt::format("no answer from the agent within {} ms", cfg.timeout_ms));
    ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) break;
    in.append(buf, static_cast<size_t>(n));
    if (in.size() > kMaxMessageBytes) return tl::unexpected(std::string("agent reply too large"));
  }
  auto reply = decodeReply(in.substr(0, in.find('\n')));
  if (!reply) return tl::unexpected("malformed agent reply: " + reply.error().describe());
  return *reply;
}

}  // namespace sluice::cni
