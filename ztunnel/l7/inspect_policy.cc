#include "ztunnel/l7/inspect_policy.h"

#include <arpa/inet.h>
#include <strings.h>

#include <algorithm>
#include <string>

namespace sluice::ztunnel {

std::optional<bool> appProtocolOpaque(std::string_view app_protocol) {
  static constexpr const char* kOpaque[] = {
      "tcp",   "tls",   "https", "opaque",           "linkerd.io/opaque", "linkerd.io/tcp",
      "mysql", "mongo", "redis", "kubernetes.io/wss"};
  static constexpr const char* kInspect[] = {
      "http", "http2", "h2c", "grpc", "grpc-web", "kubernetes.io/h2c", "kubernetes.io/ws"};
  std::string v(app_protocol);
  auto is = [&](const char* name) { return strcasecmp(v.c_str(), name) == 0; };
  if (std::ranges::any_of(kOpaque, is)) return true;
  if (std::ranges::any_of(kInspect, is)) return false;
  return std::nullopt;
}

namespace l7 {

bool shouldInspect(const EngineConfig& config, MeshDirectory* directory, const SockAddr& dst) {
  if (!config.http_detection) return false;
  uint16_t port = dst.port();
  if (directory)
    if (auto opaque = directory->opaquePort(dst.ip(), port)) return !*opaque;
  return std::ranges::find(config.opaque_ports, port) == config.opaque_ports.end();
}

}  // namespace l7
}  // namespace sluice::ztunnel
