// Reading a whole (small) file: certificates, tokens, CA material.
#pragma once

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "sluice/common/result.h"

namespace sluice {

inline Result<std::string> readFile(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    return fail("cannot read " + path + ": it is a directory, not a file");
  std::ifstream in(path);
  if (!in) return failErrno("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return failErrno("cannot read " + path);
  return ss.str();
}

}  // namespace sluice
