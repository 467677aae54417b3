// Command-line splitting shared by the binaries: "--name value" or
// "--name=value"; -h/--help is reported as the flag "--help".
#pragma once

#include <functional>
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

// A binary's flags, declared once: the parser and the flag list of --help
// both come from this table, so a documented flag is always accepted and an
// accepted one always documented.
class FlagTable {
 public:
  // Applies a flag's value; returns an error message, empty when fine.
  using Apply = std::function<std::string(const std::string& value)>;

  // "--name METAVAR": takes a value. `help` may span lines ('\n').
  FlagTable& value(std::string name, std::string metavar, std::string help, Apply apply);
  // "--name": takes no value.
  FlagTable& toggle(std::string name, std::string help, std::function<void()> apply);

  // Appliers for the common cases.
  static Apply into(std::string* out);
  static Apply number(unsigned* out, unsigned min = 0, unsigned max = 1000000);

  // The flag list for --help: one aligned entry per flag, "-h, --help" last.
  std::string help() const;
  // Parses argv[start..] and applies each flag in order. Returns true when
  // -h/--help was given (then nothing is applied). Errors name the flag.
  Result<bool> parse(int argc, char** argv, int start = 1) const;

 private:
  struct Flag {
    std::string name, metavar, help;
    Apply apply;  // null for a toggle
    std::function<void()> on;
  };
  std::vector<Flag> flags_;
};

// Blocks SIGTERM/SIGINT in the calling thread (call before starting any
// thread, so all inherit the mask); waitForTermination() then returns the
// signal's name when one arrives. SIGPIPE is ignored.
void blockTerminationSignals();
std::string waitForTermination();

}  // namespace sluice
