#include "sluice/common/flags.h"

#include <signal.h>

#include <algorithm>
#include <cstring>
#include <string>

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

FlagTable& FlagTable::value(std::string name, std::string metavar, std::string help, Apply apply) {
  flags_.push_back({std::move(name), std::move(metavar), std::move(help), std::move(apply), {}});
  return *this;
}

FlagTable& FlagTable::toggle(std::string name, std::string help, std::function<void()> apply) {
  flags_.push_back({std::move(name), "", std::move(help), nullptr, std::move(apply)});
  return *this;
}

FlagTable::Apply FlagTable::into(std::string* out) {
  return [out](const std::string& v) {
    *out = v;
    return std::string();
  };
}

FlagTable::Apply FlagTable::number(unsigned* out, unsigned min, unsigned max) {
  return [out, min, max](const std::string& v) -> std::string {
    unsigned long n = 0;
    size_t pos = 0;
    try {
      n = std::stoul(v, &pos);
    } catch (const std::exception&) {
      pos = 0;
    }
    if (v.empty() || pos != v.size() || v[0] == '-' || n < min || n > max)
      return "expects a number from " + std::to_string(min) + " to " + std::to_string(max) +
             ", got '" + v + "'";
    *out = static_cast<unsigned>(n);
    return "";
  };
}

std::string FlagTable::help() const {
  constexpr size_t kColumn = 27;  // where the help text starts
  std::string out;
  auto entry = [&](const std::string& head, const std::string& text) {
    std::string line = "  " + head;
    if (line.size() + 2 > kColumn) {  // at least two spaces before the text
      out += line + "\n";
      line.clear();
    }
    size_t start = 0;
    bool first = true;
    while (start <= text.size()) {
      size_t nl = text.find('\n', start);
      std::string part = text.substr(start, nl == std::string::npos ? nl : nl - start);
      std::string prefix = first ? line : "";
      prefix.resize(kColumn, ' ');
      out += prefix + part + "\n";
      first = false;
      if (nl == std::string::npos) break;
      start = nl + 1;
    }
  };
  for (const auto& f : flags_) entry(f.metavar.empty() ? f.name : f.name + " " + f.metavar, f.help);
  entry("-h, --help", "this text");
  return out;
}

Result<bool> FlagTable::parse(int argc, char** argv, int start) const {
  std::vector<std::string> known, switches;
  for (const auto& f : flags_) (f.apply ? known : switches).push_back(f.name);
  known.insert(known.end(), switches.begin(), switches.end());
  auto args = splitFlags(argc, argv, start, known, switches);
  if (!args) return tl::unexpected(args.error());
  for (const auto& a : *args)
    if (a.name == "--help") return true;
  for (const auto& a : *args) {
    for (const auto& f : flags_) {
      if (f.name != a.name) continue;
      if (!f.apply) {
        f.on();
      } else if (auto err = f.apply(a.value); !err.empty()) {
        return fail(f.name + " " + err);
      }
    }
  }
  return false;
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
