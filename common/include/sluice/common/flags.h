// Command-line splitting shared by the binaries: "--name value" or
// "--name=value"; -h/--help is reported as the flag "--help".
#pragma once

#include <string>
#include <vector>

#include "sluice/common/result.h"

namespace sluice {

struct FlagArg {
  std::string name;   // "--node-name"
  std::string value;  // empty for --help
};

// Splits argv[start..]. Positional arguments are errors; a flag without a
// value is an error naming it.
Result<std::vector<FlagArg>> splitFlags(int argc, char** argv, int start = 1);

}  // namespace sluice
