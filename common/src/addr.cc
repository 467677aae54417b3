#include "sluice/common/addr.h"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <charconv>
#include <cstring>

#include "sluice/common/ip6.h"

namespace sluice {

std::optional<uint32_t> parseIp4(const std::string& text) {
  in_addr a{};
  if (::inet_pton(AF_INET, text.c_str(), &a) != 1) return std::nullopt;
  return a.s_addr;
}

std::string formatIp4(uint32_t ip_net) {
  char buf[INET_ADDRSTRLEN] = {};
  in_addr a{};
  a.s_addr = ip_net;
  ::inet_ntop(AF_INET, &a, buf, sizeof(buf));
  return buf;
}

std::optional<in6_addr> parseIp6(const std::string& text) {
  in6_addr a{};
  if (::inet_pton(AF_INET6, text.c_str(), &a) != 1) return std::nullopt;
  return a;
}

std::string formatIp6(const in6_addr& a) {
  char buf[INET6_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET6, &a, buf, sizeof(buf));
  return buf;
}

std::string formatEndpoint(const sockaddr_in& sa) {
  return fmt::format("{}:{}", formatIp4(sa.sin_addr.s_addr), ntohs(sa.sin_port));
}

sockaddr_in makeSockaddr(uint32_t ip_net, uint16_t port_host) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = ip_net;
  sa.sin_port = htons(port_host);
  return sa;
}

std::optional<sockaddr_in> parseEndpoint(const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  auto ip = parseIp4(text.substr(0, colon));
  if (!ip) return std::nullopt;
  unsigned port = 0;
  const char* b = text.data() + colon + 1;
  const char* e = text.data() + text.size();
  auto [p, ec] = std::from_chars(b, e, port);
  if (ec != std::errc() || p != e || b == e || port > 65535) return std::nullopt;
  return makeSockaddr(*ip, static_cast<uint16_t>(port));
}

}  // namespace sluice
