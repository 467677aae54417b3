// Where the kernel-facing tests attach: the host's cgroup-v2 mount, found the
// same way the agent finds it (unified or hybrid hierarchy).
#pragma once

#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "agent/bpf/loader.h"
#include "sluice/common/addr.h"
#include "sluice/common/ip6.h"
#include "sluice/common/netns.h"

namespace sluice::test {

inline std::string cgroup2() {
  auto c = agent::bpf::Loader::findCgroup2();
  REQUIRE_MESSAGE(c.has_value(), "no cgroup2 mount: the BPF programs cannot be attached");
  return *c;
}

inline std::string pinDir() { return "/sys/fs/bpf/sluice-test-" + std::to_string(::getpid()); }

// The BPF programs loaded and attached under a per-process pin dir, removed
// again (pins and links) when the test ends, even on failure.
struct LoadedCapture {
  std::unique_ptr<agent::bpf::Loader> loader;
  std::string pin = pinDir();
  explicit LoadedCapture(bool sockmap = false) {
    auto l = agent::bpf::Loader::create({pin, cgroup2(), {9999}, sockmap});
    // A load that fails half-way (a program the verifier refuses) has pinned
    // maps already; the destructor does not run when the constructor fails.
    if (!l) (void)agent::bpf::Loader::removePinned(pin);
    REQUIRE_MESSAGE(l.has_value(), (l ? "" : l.error().describe()));
    loader = std::move(*l);
  }
  ~LoadedCapture() {
    loader.reset();
    (void)agent::bpf::Loader::removePinned(pin);
  }
};

// transparent: IP_TRANSPARENT, as the proxy's 15006 listener.
inline UniqueFd listenIn(int netns, const char* ip, uint16_t port, uint32_t mark = 0,
                         bool transparent = false) {
  auto s = socketInNetns(netns, AF_INET, SOCK_STREAM, 0);
  REQUIRE(s.has_value());
  int one = 1;
  setsockopt(s->get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (transparent) REQUIRE(setsockopt(s->get(), SOL_IP, IP_TRANSPARENT, &one, sizeof(one)) == 0);
  if (mark) REQUIRE(setsockopt(s->get(), SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) == 0);
  auto sa = makeSockaddr(*parseIp4(ip), port);
  REQUIRE(::bind(s->get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0);
  REQUIRE(::listen(s->get(), 16) == 0);
  return std::move(*s);
}

// Connects from inside the netns (blocking; the listener is local).
inline UniqueFd connectIn(int netns, const char* ip, uint16_t port, uint32_t mark = 0) {
  auto s = socketInNetns(netns, AF_INET, SOCK_STREAM, 0);
  REQUIRE(s.has_value());
  if (mark) REQUIRE(setsockopt(s->get(), SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) == 0);
  auto sa = makeSockaddr(*parseIp4(ip), port);
  REQUIRE_MESSAGE(::connect(s->get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0,
                  "connect failed: " << strerror(errno));
  return std::move(*s);
}

// getsockname()/getpeername() of fd as a sockaddr_in or sockaddr_in6.
template <class Sa>
Sa socketName(int fd, int (*get)(int, sockaddr*, socklen_t*)) {
  Sa sa{};
  socklen_t len = sizeof(sa);
  get(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  return sa;
}
inline sockaddr_in localOf(int fd) { return socketName<sockaddr_in>(fd, getsockname); }
inline sockaddr_in peerOf(int fd) { return socketName<sockaddr_in>(fd, getpeername); }

// IPv6 twins of the helpers above; endpoints as "[addr]:port" text.
inline sockaddr_in6 makeSockaddr6(const char* ip, uint16_t port) {
  sockaddr_in6 sa{};
  sa.sin6_family = AF_INET6;
  sa.sin6_port = htons(port);
  auto a = parseIp6(ip);
  REQUIRE_MESSAGE(a.has_value(), ip);
  sa.sin6_addr = *a;
  return sa;
}
inline std::string formatEndpoint6(const sockaddr_in6& sa) {
  return "[" + formatIp6(sa.sin6_addr) + "]:" + std::to_string(ntohs(sa.sin6_port));
}
inline UniqueFd listen6In(int netns, const char* ip, uint16_t port, uint32_t mark = 0,
                          bool transparent = false) {
  auto s = socketInNetns(netns, AF_INET6, SOCK_STREAM, 0);
  REQUIRE(s.has_value());
  int one = 1;
  setsockopt(s->get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  REQUIRE(setsockopt(s->get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) == 0);
  if (transparent)
    REQUIRE(setsockopt(s->get(), SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one)) == 0);
  if (mark) REQUIRE(setsockopt(s->get(), SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) == 0);
  auto sa = makeSockaddr6(ip, port);
  REQUIRE_MESSAGE(::bind(s->get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0,
                  "bind [" << ip << "]:" << port << ": " << strerror(errno));
  REQUIRE(::listen(s->get(), 16) == 0);
  return std::move(*s);
}
// connect() of a fresh IPv6 socket; returns it with the connect's errno (0: connected).
inline std::pair<UniqueFd, int> tryConnect6In(int netns, const char* ip, uint16_t port,
                                              uint32_t mark = 0) {
  auto s = socketInNetns(netns, AF_INET6, SOCK_STREAM, 0);
  REQUIRE(s.has_value());
  if (mark) REQUIRE(setsockopt(s->get(), SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) == 0);
  auto sa = makeSockaddr6(ip, port);
  int rc = ::connect(s->get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa));
  return {std::move(*s), rc == 0 ? 0 : errno};
}
inline UniqueFd connect6In(int netns, const char* ip, uint16_t port, uint32_t mark = 0) {
  auto [s, err] = tryConnect6In(netns, ip, port, mark);
  REQUIRE_MESSAGE(err == 0, "connect to [" << ip << "]:" << port << " failed: " << strerror(err));
  return std::move(s);
}
inline sockaddr_in6 local6Of(int fd) { return socketName<sockaddr_in6>(fd, getsockname); }
inline sockaddr_in6 peer6Of(int fd) { return socketName<sockaddr_in6>(fd, getpeername); }

}  // namespace sluice::test
