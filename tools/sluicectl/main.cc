// sluicectl: the operator CLI. Parses flags and runs one command
// (commands.h); the commands list of --help comes from the same table.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "sluice/common/flags.h"
#include "tools/sluicectl/commands.h"

using namespace sluice;

namespace {

std::string usageHead() {
  std::string s = "Usage: sluicectl [flags] COMMAND\n\nCommands:\n";
  for (const auto& c : ctl::commands()) {
    std::string name = c.name;
    s += "  " + name + std::string(name.size() < 14 ? 14 - name.size() : 1, ' ') + c.summary + "\n";
  }
  return s + "\nFlags:\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::string admin = getenv("SLUICE_ADMIN") ? getenv("SLUICE_ADMIN") : "127.0.0.1:15000";
  std::string pin_dir =
      getenv("SLUICE_BPF_PIN_DIR") ? getenv("SLUICE_BPF_PIN_DIR") : "/sys/fs/bpf/sluice";
  std::string output = "table";
  std::string command, from, to;
  std::vector<std::string> args;
  FlagTable flags;
  flags
      .value("--admin", "IP:PORT", "agent admin API (default 127.0.0.1:15000, or $SLUICE_ADMIN)",
             FlagTable::into(&admin))
      .value("--bpf-pin-dir", "DIR",
             "pinned BPF state for `bpf` (default /sys/fs/bpf/sluice, or\n"
             "$SLUICE_BPF_PIN_DIR)",
             FlagTable::into(&pin_dir))
      .value("--output", "FORMAT", "table (default) or json", FlagTable::into(&output))
      .alias("-o")
      .value("--from", "NS/SA|IP",
             "`authz check`: the client, a service account's identity or a\n"
             "plaintext source address",
             FlagTable::into(&from))
      .value("--to", "NS/POD:PORT", "`authz check`: a pod of this node and a port",
             FlagTable::into(&to))
      .positional([&](const std::string& arg) -> std::string {
        if (command.empty())
          command = arg;
        else
          args.push_back(arg);
        return "";
      });
  auto help = flags.parse(argc, argv);
  if (!help) ctl::die(help.error().message + "\nRun 'sluicectl --help' for usage.", 2);
  if (*help) {
    std::fputs(usageHead().c_str(), stdout);
    std::fputs(flags.help().c_str(), stdout);
    return 0;
  }
  if (output != "table" && output != "json")
    ctl::die("-o must be 'table' or 'json', got '" + output + "'", 2);
  ctl::Options options{admin, pin_dir, output == "json", args, from, to};
  if (!args.empty() && command != "authz")
    ctl::die("unexpected argument '" + args[0] + "'\nRun 'sluicectl --help' for usage.", 2);
  if ((!from.empty() || !to.empty()) && command != "authz")
    ctl::die("--from and --to belong to `sluicectl authz check`", 2);
  for (const auto& c : ctl::commands())
    if (command == c.name) return c.run(options);
  if (command.empty()) ctl::die("no command given\nRun 'sluicectl --help' for usage.", 2);
  ctl::die("unknown command '" + command + "'\nRun 'sluicectl --help' for usage.", 2);
}
