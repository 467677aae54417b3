// sluicectl: the operator CLI. Parses flags and runs one command
// (commands.h); the commands list of --help comes from the same table.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "sluice/common/addr.h"
#include "sluice/common/flags.h"
#include "tools/sluicectl/commands.h"

using namespace sluice;

namespace {

std::string usageHead() {
  std::string s = "Usage: sluicectl [flags] COMMAND [command flags]\n\nCommands:\n";
  for (const auto& c : ctl::commands()) {
    std::string name = c.name;
    s += "  " + name + std::string(name.size() < 14 ? 14 - name.size() : 1, ' ') + c.summary + "\n";
  }
  return s + "\n'sluicectl COMMAND --help' shows a command's own flags.\n\nFlags:\n";
}

std::string commandUsage(const ctl::Command& c) {
  return std::string("Usage: sluicectl ") + c.name + (*c.usage ? " " : "") + c.usage + "\n\n" +
         c.summary + "\n\nFlags:\n";
}

}  // namespace

int main(int argc, char** argv) {
  ctl::Options options;
  options.admin = getenv("SLUICE_ADMIN") ? getenv("SLUICE_ADMIN") : "127.0.0.1:15000";
  options.pin_dir =
      getenv("SLUICE_BPF_PIN_DIR") ? getenv("SLUICE_BPF_PIN_DIR") : "/sys/fs/bpf/sluice";
  // The command is the first argument that names one: its flags are
  // accepted before and after it, with the global ones.
  const ctl::Command* command = nullptr;
  for (int i = 1; i < argc && !command; ++i)
    for (const auto& c : ctl::commands())
      if (std::strcmp(argv[i], c.name) == 0) command = &c;

  std::string output = "table";
  std::string unknown;
  bool named = false;
  FlagTable flags;
  flags
      .value("--admin", "IP:PORT", "agent admin API (default 127.0.0.1:15000, or $SLUICE_ADMIN)",
             [&options](const std::string& v) -> std::string {
               if (auto ep = SockAddr::parse(v); !ep || ep->port() == 0)
                 return "must be IP:PORT or [IPv6]:PORT, got '" + v + "'";
               options.admin = v;
               return "";
             })
      .value("--bpf-pin-dir", "DIR",
             "pinned BPF state for `bpf` (default /sys/fs/bpf/sluice, or\n"
             "$SLUICE_BPF_PIN_DIR)",
             FlagTable::into(&options.pin_dir))
      .value("--output", "FORMAT", "table (default) or json", FlagTable::into(&output))
      .alias("-o");
  if (command && command->declare) command->declare(flags, options);
  flags.positional([&](const std::string& arg) -> std::string {
    if (command && !named && arg == command->name) {
      named = true;
      return "";
    }
    if (!command) {
      unknown = arg;
      return "";
    }
    if (options.args.size() >= command->max_args)
      return std::string("unexpected argument '") + arg + "' for " + command->name;
    options.args.push_back(arg);
    return "";
  });
  auto help = flags.parse(argc, argv);
  if (!help)
    ctl::die(help.error().message + "\nRun 'sluicectl " +
                 (command ? std::string(command->name) + " " : std::string()) +
                 "--help' for usage.",
             2);
  if (*help) {
    std::fputs((command ? commandUsage(*command) : usageHead()).c_str(), stdout);
    std::fputs(flags.help().c_str(), stdout);
    return 0;
  }
  if (output != "table" && output != "json")
    ctl::die("-o must be 'table' or 'json', got '" + output + "'", 2);
  options.as_json = output == "json";
  if (!unknown.empty())
    ctl::die("unknown command '" + unknown + "'\nRun 'sluicectl --help' for usage.", 2);
  if (!command) ctl::die("no command given\nRun 'sluicectl --help' for usage.", 2);
  return command->run(options);
}
