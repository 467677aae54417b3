// JSON text of a value whose strings may hold any bytes: a pod's CNI_ARGS,
// an HTTP request's path or Host, a query parameter. nlohmann's dump()
// throws on bytes that are not UTF-8; here each such byte becomes U+FFFD,
// so input from a pod or the network can never end a process.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace sluice {

template <typename Json>
std::string jsonText(const Json& j, int indent = -1) {
  return j.dump(indent, ' ', false, Json::error_handler_t::replace);
}

}  // namespace sluice
