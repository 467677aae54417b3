// IPv6 address text, beside addr.h's IPv4 endpoint helpers (implemented in addr.cc).
#pragma once

#include <netinet/in.h>

#include <optional>
#include <string>

namespace sluice {

// "fd00:244:1::5" -> the address; IPv4-mapped (::ffff:a.b.c.d) included.
std::optional<in6_addr> parseIp6(const std::string& text);
// The canonical (RFC 5952) text of an IPv6 address.
std::string formatIp6(const in6_addr& a);

}  // namespace sluice
