// Value matchers of the L4 authorization model, shared by the parser (which
// validates values with them) and the compiled PolicySet (which matches with
// them). Istio's conventions throughout: istiod's stringToMatch / stringToIP /
// stringToPort (pilot/pkg/serviceregistry/ambient/authorization.go) and
// ztunnel's StringMatch / IpNet matching (src/rbac.rs).
#pragma once

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

// An ipBlocks entry: "10.1.0.0/16" or a single address ("10.1.2.3" = /32).
// IPv6 blocks are valid Istio input but never match: Sluice carries IPv4 only.
struct IpBlock {
  uint32_t network = 0;  // host order, already masked
  uint32_t mask = 0;     // host order
  bool v6 = false;

  bool contains(uint32_t ip_host) const { return !v6 && (ip_host & mask) == network; }
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
