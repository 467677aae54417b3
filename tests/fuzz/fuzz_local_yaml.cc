// One local-config file (Namespace, Pod, Service, EndpointSlice documents)
// through local mode's parser into model objects.
#include <cstddef>
#include <cstdint>
#include <string>

#include "controlplane/local/source.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  (void)sluice::controlplane::local::parseYaml(text);
  return 0;
}
