#include "sluice/common/flags.h"

#include <signal.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace sluice {

FlagTable& FlagTable::value(std::string name, std::string metavar, std::string help, Apply apply) {
  flags_.push_back(
      {std::move(name), "", std::move(metavar), std::move(help), std::move(apply), {}});
  return *this;
}

FlagTable& FlagTable::choice(std::string name, std::vector<std::string> words, std::string help,
                             std::function<void(const std::string& word)> apply) {
  std::string metavar, allowed;  // "a|b|c" and "'a', 'b' or 'c'"
  for (size_t i = 0; i < words.size(); ++i) {
    metavar += (i ? "|" : "") + words[i];
    allowed += (i == 0 ? "" : i + 1 == words.size() ? " or " : ", ") + ("'" + words[i] + "'");
  }
  return value(std::move(name), metavar, std::move(help),
               [words = std::move(words), allowed,
                apply = std::move(apply)](const std::string& v) -> std::string {
                 if (std::find(words.begin(), words.end(), v) == words.end())
                   return "must be " + allowed + ", got '" + v + "'";
                 apply(v);
                 return "";
               });
}

FlagTable& FlagTable::toggle(std::string name, std::string help, std::function<void()> apply) {
  flags_.push_back({std::move(name), "", "", std::move(help), nullptr, std::move(apply)});
  return *this;
}

FlagTable& FlagTable::alias(std::string short_name) {
  flags_.back().short_name = std::move(short_name);
  return *this;
}

FlagTable& FlagTable::positional(Apply apply) {
  positional_ = std::move(apply);
  return *this;
}

FlagTable& FlagTable::logLevel(std::string* out) {
  return choice("--log-level", {"trace", "debug", "info", "warn", "error"},
                "what to log (default info)", [out](const std::string& w) { *out = w; });
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
  for (const auto& f : flags_) {
    std::string head = f.short_name.empty() ? f.name : f.short_name + ", " + f.name;
    entry(f.metavar.empty() ? head : head + " " + f.metavar, f.help);
  }
  entry("-h, --help", "this text");
  return out;
}

Result<bool> FlagTable::parse(int argc, char** argv, int start) const {
  // Every argument is checked before any is applied: a mistake anywhere on
  // the command line changes nothing, and --help anywhere wins.
  struct Given {
    const Flag* flag;  // null: a positional argument
    std::string value;
  };
  std::vector<Given> given;
  bool help = false;
  for (int i = start; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      help = true;
      continue;
    }
    if (arg.size() < 2 || arg[0] != '-') {
      if (!positional_) return fail("unexpected argument '" + arg + "'");
      given.push_back({nullptr, arg});
      continue;
    }
    bool is_long = arg.rfind("--", 0) == 0;
    // The flag as spelled, and its value when given in the same argument.
    size_t split = is_long ? arg.find('=') : 2;
    std::string spelled = arg.substr(0, split);
    auto flag = std::find_if(flags_.begin(), flags_.end(), [&](const Flag& f) {
      return is_long ? f.name == spelled : f.short_name == spelled;
    });
    if (flag == flags_.end()) return fail("unknown flag " + (is_long ? spelled : arg));
    bool inline_value = split < arg.size();
    if (!flag->apply) {
      if (inline_value) return fail("flag " + spelled + " takes no value");
      given.push_back({&*flag, ""});
    } else if (inline_value) {
      given.push_back({&*flag, arg.substr(is_long ? split + 1 : split)});
    } else if (i + 1 < argc) {
      // A value that is itself one of our flags is a value left out: the
      // flag after it would be taken as that value, and its own value
      // as a stray argument ("--name=--x" still gives such a value).
      std::string next = argv[i + 1];
      std::string next_flag = next.substr(0, next.rfind("--", 0) == 0 ? next.find('=') : 2);
      if (next.size() > 1 && next[0] == '-' &&
          std::any_of(flags_.begin(), flags_.end(), [&](const Flag& f) {
            return f.name == next_flag || (!f.short_name.empty() && f.short_name == next);
          }))
        return fail("flag " + arg + " needs a value (" + next + " is a flag)");
      given.push_back({&*flag, argv[++i]});
    } else {
      return fail("flag " + arg + " needs a value");
    }
  }
  if (help) return true;
  for (const auto& g : given) {
    if (!g.flag) {
      if (auto err = positional_(g.value); !err.empty()) return fail(err);
    } else if (!g.flag->apply) {
      g.flag->on();
    } else if (auto err = g.flag->apply(g.value); !err.empty()) {
      return fail(err.find(g.flag->name) == std::string::npos ? g.flag->name + " " + err : err);
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

std::optional<std::string> waitForTermination(std::chrono::milliseconds timeout) {
  sigset_t set = terminationSignals();
  timespec ts{static_cast<time_t>(timeout.count() / 1000),
              static_cast<long>(timeout.count() % 1000) * 1000000};
  int sig = sigtimedwait(&set, nullptr, &ts);
  if (sig < 0) return std::nullopt;
  return std::string(strsignal(sig));
}

}  // namespace sluice
