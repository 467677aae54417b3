// Helpers for tests of local HTTP servers (the agent's admin API and its
// metrics endpoint).
#pragma once

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

namespace sluice::test {

// A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's
// pick for an ephemeral bind), for a server the test starts on it.
inline int freePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// What the server sent on one connection, and whether it closed it.
struct Exchange {
  std::string bytes;
  bool closed = false;  // false: 5 s passed without the server closing
};

// One request on a fresh connection to 127.0.0.1:port (half_close: our end
// shut after it); everything the server sent until it closed (5 s receive
// timeout).
inline Exchange exchange(int port, const std::string& request, bool half_close = false) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  [[maybe_unused]] auto n = ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  if (half_close) ::shutdown(fd, SHUT_WR);
  Exchange out;
  char buf[65536];
  ssize_t r;
  while ((r = ::recv(fd, buf, sizeof(buf), 0)) > 0) out.bytes.append(buf, static_cast<size_t>(r));
  out.closed = r == 0;
  ::close(fd);
  return out;
}

inline std::string roundTrip(int port, const std::string& request) {
  return exchange(port, request).bytes;
}

inline std::string httpGet(int port, const std::string& path) {
  return roundTrip(port, "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
}

}  // namespace sluice::test
