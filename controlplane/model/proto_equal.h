// Equality of two messages of the protobuf lite runtime (no reflection):
// their deterministic serializations (map entries sorted by key) are equal.
#pragma once

#include <google/protobuf/message_lite.h>

#include <string>

namespace sluice::controlplane::model {

std::string canonical(const google::protobuf::MessageLite& m);

inline bool sameMessage(const google::protobuf::MessageLite& a,
                        const google::protobuf::MessageLite& b) {
  return canonical(a) == canonical(b);
}

}  // namespace sluice::controlplane::model
