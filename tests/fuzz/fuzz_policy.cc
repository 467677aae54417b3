// AuthorizationPolicy / PeerAuthentication conversion. YAML::Load is the
// harness's (a syntax error is not the converter's business); everything the
// converter does with a parsed node must return a Result, never throw.
#include <yaml-cpp/yaml.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/policy/parse.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::policy;
  YAML::Node node;
  try {
    node = YAML::Load(std::string(reinterpret_cast<const char*>(data), size));
  } catch (const YAML::Exception&) {
    return 0;
  }
  (void)isAuthorizationPolicy(node);
  (void)isPeerAuthentication(node);
  (void)parseAuthorizationPolicy(node);
  (void)parsePeerAuthentication(node);
  return 0;
}
