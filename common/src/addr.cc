#include "sluice/common/addr.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

#include "sluice/common/fmt.h"
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

namespace {

// The port of "host:port": decimal, 0-65535, nothing else.
std::optional<uint16_t> parsePort(std::string_view text) {
  unsigned port = 0;
  const char* b = text.data();
  const char* e = text.data() + text.size();
  auto [p, ec] = std::from_chars(b, e, port);
  if (ec != std::errc() || p != e || b == e || port > 65535) return std::nullopt;
  return static_cast<uint16_t>(port);
}

}  // namespace

std::optional<sockaddr_in> parseEndpoint(const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  auto ip = parseIp4(text.substr(0, colon));
  if (!ip) return std::nullopt;
  auto port = parsePort(text.substr(colon + 1));
  if (!port) return std::nullopt;
  return makeSockaddr(*ip, *port);
}

std::optional<sockaddr_in> parseListenEndpoint(const std::string& text) {
  auto ep = parseEndpoint(text);
  if (!ep || ep->sin_port == 0) return std::nullopt;
  return ep;
}

std::optional<HostPort> splitHostPort(const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) return std::nullopt;
  std::string host = text.substr(0, colon);
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') return std::nullopt;
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string::npos) {
    return std::nullopt;  // an IPv6 address needs its brackets
  }
  auto port = parsePort(text.substr(colon + 1));
  if (!port || *port == 0) return std::nullopt;
  return HostPort{std::move(host), *port};
}

// --- IpAddr ---

IpAddr IpAddr::v4(uint32_t ip_net) {
  IpAddr a;
  a.family_ = AF_INET;
  std::memcpy(a.bytes_.data(), &ip_net, 4);
  return a;
}

IpAddr IpAddr::v6(const in6_addr& in) {
  if (IN6_IS_ADDR_V4MAPPED(&in)) {
    uint32_t mapped;
    std::memcpy(&mapped, in.s6_addr + 12, 4);
    return v4(mapped);
  }
  IpAddr a;
  a.family_ = AF_INET6;
  std::memcpy(a.bytes_.data(), in.s6_addr, 16);
  return a;
}

std::optional<IpAddr> IpAddr::parse(std::string_view text) {
  std::string t(text);
  if (auto a = parseIp4(t)) return v4(*a);
  if (auto a = parseIp6(t)) return v6(*a);
  return std::nullopt;
}

uint32_t IpAddr::v4net() const {
  uint32_t v = 0;
  if (isV4()) std::memcpy(&v, bytes_.data(), 4);
  return v;
}

in6_addr IpAddr::v6addr() const {
  in6_addr a{};
  if (isV6()) {
    std::memcpy(a.s6_addr, bytes_.data(), 16);
  } else if (isV4()) {
    a.s6_addr[10] = 0xff;
    a.s6_addr[11] = 0xff;
    std::memcpy(a.s6_addr + 12, bytes_.data(), 4);
  }
  return a;
}

std::string IpAddr::str() const {
  if (isV4()) return formatIp4(v4net());
  if (isV6()) return formatIp6(v6addr());
  return {};
}

size_t IpAddr::hash() const {
  uint64_t hi, lo;
  std::memcpy(&hi, bytes_.data(), 8);
  std::memcpy(&lo, bytes_.data() + 8, 8);
  return std::hash<uint64_t>()(hi ^ (lo * 0x9e3779b97f4a7c15ull) ^ family_);
}

// --- SockAddr ---

SockAddr::SockAddr(const sockaddr_in& a) : SockAddr() { u_.in4 = a; }

SockAddr::SockAddr(const sockaddr_in6& a) : SockAddr() {
  if (IN6_IS_ADDR_V4MAPPED(&a.sin6_addr)) {
    u_.in4.sin_family = AF_INET;
    u_.in4.sin_port = a.sin6_port;
    std::memcpy(&u_.in4.sin_addr.s_addr, a.sin6_addr.s6_addr + 12, 4);
  } else {
    u_.in6 = a;
  }
}

SockAddr::SockAddr(const IpAddr& ip, uint16_t port_host) : SockAddr() {
  if (ip.isV4()) {
    u_.in4 = makeSockaddr(ip.v4net(), port_host);
  } else if (ip.isV6()) {
    u_.in6.sin6_family = AF_INET6;
    u_.in6.sin6_addr = ip.v6addr();
    u_.in6.sin6_port = htons(port_host);
  }
}

SockAddr SockAddr::fromRaw(const sockaddr* sa, socklen_t len) {
  if (sa && sa->sa_family == AF_INET && len >= sizeof(sockaddr_in))
    return SockAddr(*reinterpret_cast<const sockaddr_in*>(sa));
  if (sa && sa->sa_family == AF_INET6 && len >= sizeof(sockaddr_in6))
    return SockAddr(*reinterpret_cast<const sockaddr_in6*>(sa));
  return {};
}

std::optional<SockAddr> SockAddr::parse(std::string_view text) {
  auto colon = text.rfind(':');
  if (colon == std::string_view::npos) return std::nullopt;
  std::string_view host = text.substr(0, colon);
  std::optional<IpAddr> ip;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    auto a = parseIp6(std::string(host.substr(1, host.size() - 2)));
    if (a) ip = IpAddr::v6(*a);
  } else if (auto a = parseIp4(std::string(host))) {
    ip = IpAddr::v4(*a);
  }
  if (!ip) return std::nullopt;
  auto port = parsePort(text.substr(colon + 1));
  if (!port) return std::nullopt;
  return SockAddr(*ip, *port);
}

IpAddr SockAddr::ip() const {
  if (isV4()) return IpAddr::v4(u_.in4.sin_addr.s_addr);
  if (isV6()) return IpAddr::v6(u_.in6.sin6_addr);
  return {};
}

uint16_t SockAddr::portNet() const {
  if (isV4()) return u_.in4.sin_port;
  if (isV6()) return u_.in6.sin6_port;
  return 0;
}

uint16_t SockAddr::port() const { return ntohs(portNet()); }

void SockAddr::setPort(uint16_t port_host) {
  if (isV4()) u_.in4.sin_port = htons(port_host);
  if (isV6()) u_.in6.sin6_port = htons(port_host);
}

socklen_t SockAddr::len() const {
  if (isV4()) return sizeof(sockaddr_in);
  if (isV6()) return sizeof(sockaddr_in6);
  return 0;
}

std::string SockAddr::str() const {
  if (isV4()) return fmt::format("{}:{}", ip().str(), port());
  if (isV6()) return fmt::format("[{}]:{}", ip().str(), port());
  return {};
}

size_t SockAddr::hash() const { return ip().hash() * 31 + port(); }

}  // namespace sluice
