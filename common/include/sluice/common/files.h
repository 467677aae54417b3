// Reading a whole (small) file: certificates, tokens, CA material.
#pragma once

#include <fstream>
#include <sstream>
#include <string>

#include "sluice/common/result.h"

namespace sluice {

inline Result<std::string> readFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return failErrno("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace sluice
