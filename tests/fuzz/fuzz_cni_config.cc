// The network config a container runtime writes to the plugin's stdin (with
// prevResult when chained), through the plugin's own parser.
#include <cstddef>
#include <cstdint>
#include <string>

#include "cni-plugin/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  auto config = sluice::cni::parseConfig(text);
  if (config) {
    if (config->has_prev_result) {
      (void)sluice::cni::resultIps(config->prev_result);
      (void)sluice::cni::resultIps(config->prev_result, "eth0");
    }
    (void)sluice::cni::errorJson(config->cni_version, {sluice::cni::kInternal, "x", "y"});
  } else {
    (void)sluice::cni::errorJson("1.0.0", config.error());
  }
  // DEL's reading never fails, whatever the text.
  (void)sluice::cni::lenientConfig(text);
  return 0;
}
