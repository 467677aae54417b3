#include "sluice/common/flags.h"

namespace sluice {

Result<std::vector<FlagArg>> splitFlags(int argc, char** argv, int start) {
  std::vector<FlagArg> out;
  for (int i = start; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      out.push_back({"--help", ""});
      continue;
    }
    if (arg.rfind("--", 0) != 0) return fail("unexpected argument '" + arg + "'");
    auto eq = arg.find('=');
    if (eq != std::string::npos) {
      out.push_back({arg.substr(0, eq), arg.substr(eq + 1)});
      continue;
    }
    if (i + 1 >= argc) return fail("flag " + arg + " needs a value");
    out.push_back({arg, argv[++i]});
  }
  return out;
}

}  // namespace sluice
