#include "sluice/common/flags.h"

#include <signal.h>

#include <algorithm>
#include <cstring>

namespace sluice {

Result<std::vector<FlagArg>> splitFlags(int argc, char** argv, int start,
                                        const std::vector<std::string>& known,
                                        const std::vector<std::string>& switches) {
  std::vector<FlagArg> out;
  for (int i = start; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      out.push_back({"--help", ""});
      continue;
    }
    if (arg.rfind("--", 0) != 0) return fail("unexpected argument '" + arg + "'");
    auto eq = arg.find('=');
    std::string name = arg.substr(0, eq);
    bool is_switch = std::find(switches.begin(), switches.end(), name) != switches.end();
    if (is_switch) {
      if (eq != std::string::npos) return fail("flag " + name + " takes no value");
      out.push_back({name, ""});
      continue;
    }
    if (!known.empty() && std::find(known.begin(), known.end(), name) == known.end())
      return fail("unknown flag " + name);
    if (eq != std::string::npos) {
      out.push_back({arg.substr(0, eq), arg.substr(eq + 1)});
      continue;
    }
    if (i + 1 >= argc) return fail("flag " + arg + " needs a value");
    out.push_back({arg, argv[++i]});
  }
  return out;
}

namespace {
sigset_t terminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}
}  // namespace

void blockTerminationSignals() {
  sigset_t set = terminationSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

std::string waitForTermination() {
  sigset_t set = terminationSignals();
  int sig = 0;
  sigwait(&set, &sig);
  return strsignal(sig);
}

}  // namespace sluice
