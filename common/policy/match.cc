#include "common/policy/match.h"

#include <arpa/inet.h>

#include <charconv>

namespace sluice::policy {

StringMatch StringMatch::compile(std::string_view pattern) {
  if (pattern == "*") return {Kind::kPresence, ""};
  if (pattern.starts_with('*')) return {Kind::kSuffix, std::string(pattern.substr(1))};
  if (pattern.ends_with('*'))
    return {Kind::kPrefix, std::string(pattern.substr(0, pattern.size() - 1))};
  return {Kind::kExact, std::string(pattern)};
}

std::optional<IpBlock> parseIpBlock(std::string_view text) {
  std::string_view addr = text;
  std::optional<unsigned> prefix;
  if (auto slash = text.find('/'); slash != std::string_view::npos) {
    addr = text.substr(0, slash);
    std::string_view p = text.substr(slash + 1);
    unsigned v = 0;
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
    if (p.empty() || ec != std::errc() || end != p.data() + p.size()) return std::nullopt;
    prefix = v;
  }
  std::string a(addr);  // inet_pton needs a NUL-terminated string
  in_addr v4{};
  if (inet_pton(AF_INET, a.c_str(), &v4) == 1) {
    unsigned bits = prefix.value_or(32);
    if (bits > 32) return std::nullopt;
    IpBlock b;
    b.mask = bits == 0 ? 0 : ~uint32_t{0} << (32 - bits);
    b.network = ntohl(v4.s_addr) & b.mask;  // "10.0.0.1/8" is accepted as 10.0.0.0/8 (Go netip)
    return b;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, a.c_str(), &v6) == 1) {
    unsigned bits = prefix.value_or(128);
    if (bits > 128) return std::nullopt;
    IpBlock b;
    b.v6 = true;
    b.prefix6 = static_cast<uint8_t>(bits);
    for (unsigned i = 0; i < 16; ++i) {  // "fd00::1/8" is accepted as fd00::/8
      unsigned keep = bits >= 8 * (i + 1) ? 8 : (bits > 8 * i ? bits - 8 * i : 0);
      b.network6[i] = v6.s6_addr[i] & uint8_t(keep == 0 ? 0 : 0xff << (8 - keep));
    }
    return b;
  }
  return std::nullopt;
}

std::optional<uint16_t> parsePort(std::string_view text) {
  unsigned v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || v > 65535)
    return std::nullopt;
  return static_cast<uint16_t>(v);
}

PeerIdentity parsePeerIdentity(std::string_view uri) {
  PeerIdentity id;
  constexpr std::string_view kScheme = "spiffe://";
  // ztunnel's matches_principal: no "spiffe://" prefix, no principal.
  if (!uri.starts_with(kScheme) || uri.size() == kScheme.size()) return id;
  id.authenticated = true;
  id.principal = uri.substr(kScheme.size());
  // td / "ns" / NS / "sa" / SA, nothing more.
  std::string_view rest = id.principal;
  std::string_view parts[5];
  for (int i = 0; i < 5; ++i) {
    size_t slash = rest.find('/');
    if ((slash == std::string_view::npos) != (i == 4)) return id;
    parts[i] = rest.substr(0, slash);
    if (parts[i].empty()) return id;
    rest = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash + 1);
  }
  if (parts[1] != "ns" || parts[3] != "sa") return id;
  id.ns = parts[2];
  id.service_account = parts[4];
  return id;
}

}  // namespace sluice::policy
