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

// Splits argv[start..]. Positional arguments, flags not in `known` (when
// given) and flags without a value are errors naming the argument.
// `switches` take no value (reported with an empty value).
Result<std::vector<FlagArg>> splitFlags(int argc, char** argv, int start = 1,
                                        const std::vector<std::string>& known = {},
                                        const std::vector<std::string>& switches = {});

// Blocks SIGTERM/SIGINT in the calling thread (call before starting any
// thread, so all inherit the mask); waitForTermination() then returns the
// signal's name when one arrives. SIGPIPE is ignored.
void blockTerminationSignals();
std::string waitForTermination();

}  // namespace sluice
