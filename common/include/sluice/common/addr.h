// Addresses used across components: IpAddr (an IPv4 or IPv6 address) and
// SockAddr (one with a port), plus the older IPv4 helpers.
//
// An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4 address: both
// types hold it as IPv4, so it compares, hashes and prints as a.b.c.d.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace sluice {

// "10.0.0.1" -> network-order address.
std::optional<uint32_t> parseIp4(const std::string& text);
// Network-order address -> "10.0.0.1".
std::string formatIp4(uint32_t ip_net);
// "10.0.0.1:80" for a sockaddr_in.
std::string formatEndpoint(const sockaddr_in& sa);
sockaddr_in makeSockaddr(uint32_t ip_net, uint16_t port_host);
// "10.0.0.1:80" -> sockaddr_in (port required).
std::optional<sockaddr_in> parseEndpoint(const std::string& text);
// An address to listen on: parseEndpoint with a port 1-65535 (port 0 would
// listen where nobody knows to connect).
std::optional<sockaddr_in> parseListenEndpoint(const std::string& text);
// "HOST:PORT" or "[V6]:PORT" -> host (without brackets) and port 1-65535.
struct HostPort {
  std::string host;
  uint16_t port = 0;
};
std::optional<HostPort> splitHostPort(const std::string& text);

// An IPv4 or IPv6 address, or none (empty()). A value type: compare, hash.
class IpAddr {
 public:
  IpAddr() = default;
  static IpAddr v4(uint32_t ip_net);
  static IpAddr v6(const in6_addr& a);  // an IPv4-mapped one is IPv4
  // "10.0.0.1", "fd00:244:1::5" (also "::ffff:10.0.0.1": IPv4).
  static std::optional<IpAddr> parse(std::string_view text);

  bool empty() const { return family_ == AF_UNSPEC; }
  bool isV4() const { return family_ == AF_INET; }
  bool isV6() const { return family_ == AF_INET6; }
  int family() const { return family_; }  // AF_INET | AF_INET6 | AF_UNSPEC
  uint32_t v4net() const;                 // network order; 0 unless isV4()
  in6_addr v6addr() const;                // an IPv4 one as ::ffff:a.b.c.d
  std::string str() const;                // "10.0.0.1" | "fd00::1" | ""
  size_t hash() const;

  friend bool operator==(const IpAddr&, const IpAddr&) = default;

 private:
  uint8_t family_ = AF_UNSPEC;
  std::array<uint8_t, 16> bytes_{};  // IPv4: the first 4
};

// An IPv4 or IPv6 address with a port: what sockets take and give.
class SockAddr {
 public:
  SockAddr() { std::memset(&u_, 0, sizeof(u_)); }
  SockAddr(const sockaddr_in& a);   // NOLINT(google-explicit-constructor): a value
  SockAddr(const sockaddr_in6& a);  // NOLINT(google-explicit-constructor); mapped -> IPv4
  SockAddr(const IpAddr& ip, uint16_t port_host);
  // getpeername()/getsockname()/accept() output; anything else: empty.
  static SockAddr fromRaw(const sockaddr* sa, socklen_t len);
  // "10.0.0.1:80", "[fd00::1]:80" (port required).
  static std::optional<SockAddr> parse(std::string_view text);

  bool empty() const { return family() == AF_UNSPEC; }
  int family() const { return u_.sa.sa_family; }
  bool isV4() const { return family() == AF_INET; }
  bool isV6() const { return family() == AF_INET6; }
  IpAddr ip() const;
  uint16_t port() const;     // host order
  uint16_t portNet() const;  // network order
  void setPort(uint16_t port_host);
  const sockaddr* sa() const { return &u_.sa; }
  socklen_t len() const;
  const sockaddr_in& in4() const { return u_.in4; }   // isV4() only
  const sockaddr_in6& in6() const { return u_.in6; }  // isV6() only
  std::string str() const;                            // "10.0.0.1:80" | "[fd00::1]:80"
  size_t hash() const;

  friend bool operator==(const SockAddr& a, const SockAddr& b) {
    return a.ip() == b.ip() && a.port() == b.port();
  }

 private:
  union {
    sockaddr sa;
    sockaddr_in in4;
    sockaddr_in6 in6;
  } u_;
};

// SockAddr::str(), beside the sockaddr_in one.
inline std::string formatEndpoint(const SockAddr& sa) { return sa.str(); }

}  // namespace sluice

template <>
struct std::hash<sluice::IpAddr> {
  size_t operator()(const sluice::IpAddr& a) const noexcept { return a.hash(); }
};
template <>
struct std::hash<sluice::SockAddr> {
  size_t operator()(const sluice::SockAddr& a) const noexcept { return a.hash(); }
};
