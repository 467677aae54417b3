// IPv4 endpoint helpers used across components, and IPv6 address text.
#pragma once

#include <netinet/in.h>

#include <cstdint>
#include <optional>
#include <string>

namespace sluice {

// "10.0.0.1" -> network-order address.
std::optional<uint32_t> parseIp4(const std::string& text);
// Network-order address -> "10.0.0.1".
std::string formatIp4(uint32_t ip_net);
// "fd00:244:1::5" -> the address; IPv4-mapped (::ffff:a.b.c.d) included.
std::optional<in6_addr> parseIp6(const std::string& text);
// The canonical (RFC 5952) text of an IPv6 address.
std::string formatIp6(const in6_addr& a);
// "10.0.0.1:80" for a sockaddr_in.
std::string formatEndpoint(const sockaddr_in& sa);
sockaddr_in makeSockaddr(uint32_t ip_net, uint16_t port_host);
// "10.0.0.1:80" -> sockaddr_in (port required).
std::optional<sockaddr_in> parseEndpoint(const std::string& text);

}  // namespace sluice
