// Value matchers of the L4 authorization model, shared by the parser (which
// validates values with them) and the compiled PolicySet (which matches with
// them). Istio's conventions throughout: istiod's stringToMatch / stringToIP /
// stringToPort (pilot/pkg/serviceregistry/ambient/authorization.go) and
// ztunnel's StringMatch / IpNet matching (src/rbac.rs).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sluice::policy {

// A principal / namespace value: "*" is presence (any non-empty value),
// "*x" a suffix, "x*" a prefix, anything else exact. A leading "*" wins over a
// trailing one ("*x*" is the suffix "x*"), as in istiod.
struct StringMatch {
  enum class Kind : uint8_t { kExact, kPrefix, kSuffix, kPresence };
  Kind kind = Kind::kExact;
  std::string value;  // without the '*'

  static StringMatch compile(std::string_view pattern);
  bool matches(std::string_view v) const {
    switch (kind) {
      case Kind::kExact:
        return v == value;
      case Kind::kPrefix:
        return v.starts_with(value);
      case Kind::kSuffix:
        return v.ends_with(value);
      case Kind::kPresence:
        return !v.empty();
    }
    return false;
  }
};

using Ip6 = std::array<uint8_t, 16>;  // an IPv6 address, network order

// An ipBlocks entry: "10.1.0.0/16" or a single address ("10.1.2.3" = /32),
// or an IPv6 one ("fd00:244::/48", "fd00::5" = /128). A block matches
// addresses of its own family only.
struct IpBlock {
  uint32_t network = 0;  // host order, already masked
  uint32_t mask = 0;     // host order
  bool v6 = false;
  Ip6 network6{};       // v6: already masked
  uint8_t prefix6 = 0;  // v6: prefix length, 0..128

  bool contains(uint32_t ip_host) const { return !v6 && (ip_host & mask) == network; }
  bool contains6(const Ip6& ip) const {
    if (!v6) return false;
    for (unsigned i = 0, bits = prefix6; bits > 0; ++i, bits = bits > 8 ? bits - 8 : 0) {
      uint8_t m = bits >= 8 ? 0xff : uint8_t(0xff << (8 - bits));
      if ((ip[i] & m) != network6[i]) return false;
    }
    return true;
  }
};

// nullopt: not an IPv4/IPv6 address or CIDR (the caller names the field).
std::optional<IpBlock> parseIpBlock(std::string_view text);

// "8080" -> 8080. Decimal digits only, 0..65535 (istiod: ParseUint <= 65535).
std::optional<uint16_t> parsePort(std::string_view text);

// A SPIFFE ID split as Istio reads it: "spiffe://td/ns/NS/sa/SA".
// `principal` is the ID without "spiffe://" (what `principals` values are
// compared with); namespace / service account are empty unless the ID has
// exactly the ns/sa form. All views point into the input.
struct PeerIdentity {
  bool authenticated = false;  // a SPIFFE ID was verified for the peer
  std::string_view principal;  // "td/ns/NS/sa/SA"
  std::string_view ns;
  std::string_view service_account;
};
PeerIdentity parsePeerIdentity(std::string_view spiffe_uri);

}  // namespace sluice::policy
