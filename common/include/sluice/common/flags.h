// Command-line flags shared by the binaries: "--name value" or "--name=value",
// a one-letter alias as "-o value" or "-ovalue"; -h/--help asks for the usage.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "sluice/common/result.h"

namespace sluice {

// A binary's flags, declared once: the parser and the flag list of --help
// both come from this table, so a documented flag is always accepted and an
// accepted one always documented.
class FlagTable {
 public:
  // Applies a flag's value; returns an error message, empty when fine. A
  // message that does not name the flag is reported as "--flag <message>".
  using Apply = std::function<std::string(const std::string& value)>;

  // "--name METAVAR": takes a value. `help` may span lines ('\n').
  FlagTable& value(std::string name, std::string metavar, std::string help, Apply apply);
  // "--name a|b|c": takes one of `words` (listed as the METAVAR) and hands it
  // to `apply`; any other value is refused with a message naming them all.
  FlagTable& choice(std::string name, std::vector<std::string> words, std::string help,
                    std::function<void(const std::string& word)> apply);
  // "--name": takes no value.
  FlagTable& toggle(std::string name, std::string help, std::function<void()> apply);
  // "--log-level trace|debug|info|warn|error" into *out (every binary's).
  FlagTable& logLevel(std::string* out);
  // A one-letter spelling ("-o") of the flag declared last.
  FlagTable& alias(std::string short_name);
  // Arguments that are not flags (a COMMAND) go to `apply` in order, its
  // message reported as it is; without this they are errors.
  FlagTable& positional(Apply apply);

  // Appliers for the common cases.
  static Apply into(std::string* out);
  static Apply number(unsigned* out, unsigned min = 0, unsigned max = 1000000);

  // The flag list for --help: one aligned entry per flag, "-h, --help" last.
  std::string help() const;
  // Parses argv[start..] and applies each argument in order. Returns true
  // when -h/--help was given (then nothing is applied). Errors name the
  // argument: an unknown flag, a missing value, a value the flag refused.
  Result<bool> parse(int argc, char** argv, int start = 1) const;

 private:
  struct Flag {
    std::string name, short_name, metavar, help;
    Apply apply;  // null for a toggle
    std::function<void()> on;
  };
  std::vector<Flag> flags_;
  Apply positional_;
};

// Blocks SIGTERM/SIGINT in the calling thread (call before starting any
// thread, so all inherit the mask); waitForTermination() then returns the
// signal's name when one arrives. SIGPIPE is ignored.
void blockTerminationSignals();
std::string waitForTermination();
// The same, bounded: nullopt when no signal came within `timeout`.
std::optional<std::string> waitForTermination(std::chrono::milliseconds timeout);

}  // namespace sluice
