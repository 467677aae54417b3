// Result<T>: value or an Error carrying an errno-style code and a message that
// tells the operator what happened and, where possible, what to do.
#pragma once

#include <cerrno>
#include <cstring>
#include <string>
#include <tl/expected.hpp>
#include <utility>

#include "sluice/common/fmt.h"

namespace sluice {

struct Error {
  int code = 0;         // errno value when the failure came from the kernel, else 0
  std::string message;  // human-readable, complete sentence fragment

  std::string describe() const {
    if (code != 0) return fmt::format("{} ({})", message, std::strerror(code));
    return message;
  }
};

template <typename T>
using Result = tl::expected<T, Error>;

inline tl::unexpected<Error> fail(std::string message, int code = 0) {
  return tl::unexpected<Error>(Error{code, std::move(message)});
}

// Captures errno at the call site.
inline tl::unexpected<Error> failErrno(std::string message) {
  return tl::unexpected<Error>(Error{errno, std::move(message)});
}

}  // namespace sluice
