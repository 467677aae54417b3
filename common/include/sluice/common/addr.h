// IPv4 endpoint helpers used across components.
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
// "10.0.0.1:80" for a sockaddr_in.
std::string formatEndpoint(const sockaddr_in& sa);
sockaddr_in makeSockaddr(uint32_t ip_net, uint16_t port_host);
// "10.0.0.1:80" -> sockaddr_in (port required).
std::optional<sockaddr_in> parseEndpoint(const std::string& text);

}  // namespace sluice
