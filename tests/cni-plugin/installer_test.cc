// The CNI installer on temporary conf/bin dirs: the library for each rule, and
// the real sluice-cni binary for install (with SIGTERM) and uninstall.
#include "cni-plugin/installer.h"

#include <doctest/doctest.h>
#include <elf.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace sluice::cni;
namespace fs = std::filesystem;
using nlohmann::ordered_json;

namespace {

// A conf dir and a bin dir under one temporary directory, removed on every exit path.
struct TempNode {
  fs::path root, conf, bin;
  TempNode() {
    char tmpl[] = "/tmp/sluice-installer-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    root = tmpl;
    conf = root / "net.d";
    bin = root / "bin";
    fs::create_directories(conf);
    fs::create_directories(bin);
  }
  ~TempNode() {
    std::error_code ec;
    fs::remove_all(root, ec);
  }
  InstallerOptions options() const {
    InstallerOptions o;
    o.conf_dir = conf;
    o.bin_dir = bin;
    o.source_binary = SLUICE_CNI_BINARY;
    return o;
  }
};

void writeFile(const fs::path& p, const std::string& text, mode_t mode = 0644) {
  std::ofstream(p, std::ios::trunc) << text;
  REQUIRE(::chmod(p.c_str(), mode) == 0);
}

std::string readFile(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ordered_json readJson(const fs::path& p) { return ordered_json::parse(readFile(p)); }

mode_t modeOf(const fs::path& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

int countOurs(const ordered_json& conflist) {
  int n = 0;
  for (const auto& p : conflist["plugins"]) n += p.value("type", "") == "sluice-cni";
  return n;
}

std::vector<std::string> listDir(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// A flannel-like primary conflist with fields the installer must keep as they are.
const std::string kFlannel = R"({
  "name": "cbr0",
  "cniVersion": "1.0.0",
  "disableCheck": false,
  "plugins": [
    {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
    {"type": "portmap", "capabilities": {"portMappings": true}, "weight": 1.5, "big": 9007199254740993}
  ]
})";

const std::string kBridgeConf =
    R"({"cniVersion":"0.4.0","name":"k8s","type":"bridge","bridge":"cni0","isGateway":true,)"
    R"("ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}]]}})";

template <typename Pred>
bool pollUntil(Pred pred, std::chrono::milliseconds limit = std::chrono::milliseconds(5000)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

struct Child {
  pid_t pid = -1;
  ~Child() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
  int wait() {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
};

// Starts the real binary with args, stderr (and stdout) into log.
Child spawn(const std::vector<std::string>& args, const fs::path& log) {
  Child c;
  c.pid = ::fork();
  REQUIRE(c.pid >= 0);
  if (c.pid == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    std::vector<char*> argv;
    std::string bin = SLUICE_CNI_BINARY;
    argv.push_back(bin.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  return c;
}

int runToEnd(const std::vector<std::string>& args, const fs::path& log) {
  Child c = spawn(args, log);
  return c.wait();
}

}  // namespace

TEST_SUITE("installer") {
  TEST_CASE("the primary config is the first *.conflist/*.conf/*.json by name") {
    TempNode node;
    auto none = findPrimaryConfig(node.conf);
    REQUIRE(none.has_value());
    CHECK_FALSE(none->has_value());
    writeFile(node.conf / "99-last.conflist", kFlannel);
    writeFile(node.conf / "20-b.json", kBridgeConf);
    writeFile(node.conf / "10-a.conf.bak", kBridgeConf);       // not a config extension
    writeFile(node.conf / ".10-a.conf.sluice-tmp", kFlannel);  // our temporary files
    fs::create_directories(node.conf / "00-dir.conf");         // directories are skipped
    auto p = findPrimaryConfig(node.conf);
    REQUIRE(p.has_value());
    REQUIRE(p->has_value());
    CHECK((*p)->filename() == "20-b.json");
    writeFile(node.conf / "15-c.conflist", kFlannel);
    CHECK((*findPrimaryConfig(node.conf))->filename() == "15-c.conflist");
    auto missing = findPrimaryConfig(node.root / "absent");
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().describe().find("absent") != std::string::npos);
  }

  TEST_CASE("a conflist gets one sluice-cni entry appended and everything else kept") {
    TempNode node;
    auto file = node.conf / "10-flannel.conflist";
    writeFile(file, kFlannel, 0640);
    InstallerOptions o = node.options();
    o.plugin_entry = {{"type", "sluice-cni"}, {"failOpen", false}, {"timeoutMs", 2000}};
    Installer inst(o);
    auto st = inst.ensureChained();
    REQUIRE(st.has_value());
    CHECK(st->state == ChainState::kChained);
    CHECK(st->changed);
    CHECK(st->file == file);
    auto before = ordered_json::parse(kFlannel);
    auto after = readJson(file);
    REQUIRE(after["plugins"].size() == 3);
    CHECK(after["plugins"][0] == before["plugins"][0]);
    CHECK(after["plugins"][1] == before["plugins"][1]);
    CHECK(after["plugins"][2] == o.plugin_entry);
    CHECK(after["plugins"][1]["big"].get<uint64_t>() == 9007199254740993ull);
    after["plugins"].erase(2);
    CHECK(after == before);  // key order included
    CHECK(modeOf(file) == 0640);
    CHECK(listDir(node.conf) == std::vector<std::string>{"10-flannel.conflist"});
  }

  TEST_CASE("idempotent: a second pass writes nothing and duplicates collapse to one entry") {
    TempNode node;
    auto file = node.conf / "10-flannel.conflist";
    writeFile(file, kFlannel);
    Installer inst(node.options());
    REQUIRE(inst.ensureChained()->changed);
    std::string once = readFile(file);
    struct stat st1 {};
    REQUIRE(::stat(file.c_str(), &st1) == 0);
    auto again = inst.ensureChained();
    REQUIRE(again.has_value());
    CHECK(again->state == ChainState::kChained);
    CHECK_FALSE(again->changed);
    struct stat st2 {};
    REQUIRE(::stat(file.c_str(), &st2) == 0);
    CHECK(st1.st_ino == st2.st_ino);  // not even rewritten with the same bytes
    CHECK(readFile(file) == once);
    CHECK(countOurs(readJson(file)) == 1);

    auto doubled = ordered_json::parse(kFlannel);
    doubled["plugins"].insert(doubled["plugins"].begin(),
                              ordered_json::object({{"type", "sluice-cni"}}));
    doubled["plugins"].push_back(
        ordered_json::object({{"type", "sluice-cni"}, {"failOpen", true}}));
    REQUIRE(countOurs(doubled) == 2);
    writeFile(file, doubled.dump());
    REQUIRE(inst.ensureChained()->changed);
    auto fixed = readJson(file);
    CHECK(countOurs(fixed) == 1);
    CHECK(fixed["plugins"][0]["type"] == "flannel");
    CHECK(fixed["plugins"].back() == ordered_json{{"type", "sluice-cni"}});
  }

  TEST_CASE("plan() reads and decides without writing, and says whether the chain is in place") {
    TempNode node;
    auto file = node.conf / "10-flannel.conflist";
    writeFile(file, kFlannel);
    Installer inst(node.options());
    auto before = inst.plan();
    REQUIRE(before.has_value());
    CHECK(before->status.state == ChainState::kChained);  // chainable
    CHECK_FALSE(before->already_chained);
    CHECK_FALSE(before->up_to_date);
    CHECK(readFile(file) == kFlannel);  // nothing written
    REQUIRE(inst.ensureChained()->changed);
    auto after = inst.plan();
    REQUIRE(after.has_value());
    CHECK(after->already_chained);
    CHECK(after->up_to_date);
    // Chained twice, or not last: not in place.
    auto doubled = readJson(file);
    doubled["plugins"].insert(doubled["plugins"].begin(),
                              ordered_json::object({{"type", "sluice-cni"}}));
    writeFile(file, doubled.dump());
    CHECK_FALSE(inst.plan()->already_chained);
    // A single-plugin .conf is chainable through its conflist form.
    fs::remove(file);
    writeFile(node.conf / "10-bridge.conf", kBridgeConf);
    auto conf = inst.plan();
    REQUIRE(conf.has_value());
    CHECK(conf->status.state == ChainState::kChained);
    CHECK_FALSE(conf->already_chained);
    CHECK(conf->target.filename() == "10-bridge.conflist");
    CHECK(conf->remove.filename() == "10-bridge.conf");
  }

  TEST_CASE("a single .conf becomes a .conflist and comes back on removal") {
    TempNode node;
    writeFile(node.conf / "10-bridge.conf", kBridgeConf, 0600);
    Installer inst(node.options());
    auto st = inst.ensureChained();
    REQUIRE(st.has_value());
    CHECK(st->state == ChainState::kChained);
    CHECK(st->file == node.conf / "10-bridge.conflist");
    CHECK(listDir(node.conf) == std::vector<std::string>{"10-bridge.conflist"});
    auto list = readJson(node.conf / "10-bridge.conflist");
    CHECK(list["cniVersion"] == "0.4.0");
    CHECK(list["name"] == "k8s");
    REQUIRE(list["plugins"].size() == 2);
    CHECK(list["plugins"][0] == ordered_json::parse(kBridgeConf));
    CHECK(list["plugins"][1]["type"] == "sluice-cni");
    CHECK(modeOf(node.conf / "10-bridge.conflist") == 0600);
    CHECK_FALSE(inst.ensureChained()->changed);

    auto removed = inst.removeChain();
    REQUIRE(removed.has_value());
    CHECK(*removed == 1);
    CHECK(listDir(node.conf) == std::vector<std::string>{"10-bridge.conf"});
    CHECK(readJson(node.conf / "10-bridge.conf") == ordered_json::parse(kBridgeConf));
    CHECK(modeOf(node.conf / "10-bridge.conf") == 0600);
  }

  TEST_CASE("a single .json config is converted too") {
    TempNode node;
    writeFile(node.conf / "05-net.json", kBridgeConf);
    Installer inst(node.options());
    REQUIRE(inst.ensureChained()->state == ChainState::kChained);
    CHECK(listDir(node.conf) == std::vector<std::string>{"05-net.conflist"});
    REQUIRE(inst.removeChain().has_value());
    CHECK(listDir(node.conf) == std::vector<std::string>{"05-net.json"});
    CHECK(readJson(node.conf / "05-net.json") == ordered_json::parse(kBridgeConf));
  }

  TEST_CASE("the chain is restored after the primary CNI rewrites its file") {
    TempNode node;
    auto file = node.conf / "10-flannel.conflist";
    writeFile(file, kFlannel);
    Installer inst(node.options());
    REQUIRE(inst.ensureChained()->changed);
    writeFile(file, kFlannel);  // the primary CNI writes its own version again
    CHECK(countOurs(readJson(file)) == 0);
    auto st = inst.ensureChained();
    REQUIRE(st.has_value());
    CHECK(st->changed);
    CHECK(countOurs(readJson(file)) == 1);

    // A .conf primary writing its .conf again: converted again, one file left.
    TempNode other;
    writeFile(other.conf / "10-bridge.conf", kBridgeConf);
    Installer inst2(other.options());
    REQUIRE(inst2.ensureChained()->changed);
    writeFile(other.conf / "10-bridge.conf", kBridgeConf);
    auto st2 = inst2.ensureChained();
    REQUIRE(st2.has_value());
    CHECK(st2->changed);
    CHECK(listDir(other.conf) == std::vector<std::string>{"10-bridge.conflist"});
    CHECK(countOurs(readJson(other.conf / "10-bridge.conflist")) == 1);
  }

  TEST_CASE("removal leaves the original meaning and a second removal changes nothing") {
    TempNode node;
    auto file = node.conf / "10-flannel.conflist";
    writeFile(file, kFlannel);
    writeFile(node.conf / "50-other.conflist", kFlannel);  // not primary: never touched
    std::string other_before = readFile(node.conf / "50-other.conflist");
    Installer inst(node.options());
    REQUIRE(inst.ensureChained()->changed);
    CHECK(readFile(node.conf / "50-other.conflist") == other_before);
    auto removed = inst.removeChain();
    REQUIRE(removed.has_value());
    CHECK(*removed == 1);
    CHECK(readJson(file) == ordered_json::parse(kFlannel));
    CHECK(readFile(node.conf / "50-other.conflist") == other_before);
    auto again = inst.removeChain();
    REQUIRE(again.has_value());
    CHECK(*again == 0);
  }

  TEST_CASE("a malformed primary is reported by name and left untouched") {
    TempNode node;
    auto file = node.conf / "10-broken.conflist";
    const std::string broken = "{\n  \"cniVersion\": \"1.0.0\",\n  \"plugins\": [ {\"type\": \n";
    writeFile(file, broken);
    writeFile(node.conf / "20-fine.conflist", kFlannel);
    Installer inst(node.options());
    auto st = inst.ensureChained();
    REQUIRE(st.has_value());
    CHECK(st->state == ChainState::kUnusable);
    CHECK(st->file == file);
    CHECK(st->detail.find(file.string()) != std::string::npos);
    CHECK(st->detail.find("not valid JSON") != std::string::npos);
    CHECK(st->detail.find("line") != std::string::npos);
    CHECK(readFile(file) == broken);
    CHECK(countOurs(readJson(node.conf / "20-fine.conflist")) == 0);  // not the primary
    auto removed = inst.removeChain();
    REQUIRE(removed.has_value());
    CHECK(readFile(file) == broken);

    writeFile(file, R"({"cniVersion":"1.0.0","name":"x"})");  // valid JSON, no plugins
    st = inst.ensureChained();
    CHECK(st->state == ChainState::kUnusable);
    CHECK(st->detail.find("'plugins'") != std::string::npos);
    CHECK(readFile(file) == R"({"cniVersion":"1.0.0","name":"x"})");

    writeFile(file, "");
    CHECK(inst.ensureChained()->state == ChainState::kUnusable);
    CHECK(readFile(file).empty());

    // Only sluice-cni in it: nothing to chain after, and nothing left after removal.
    const std::string alone =
        R"({"cniVersion":"1.0.0","name":"x","plugins":[{"type":"sluice-cni"}]})";
    writeFile(file, alone);
    st = inst.ensureChained();
    CHECK(st->state == ChainState::kUnusable);
    CHECK(st->detail.find("no plugin but sluice-cni") != std::string::npos);
    REQUIRE(inst.removeChain().has_value());
    CHECK(readFile(file) == alone);
  }

  TEST_CASE("flannel's and Calico's stock cniVersion 0.3.1 conflists are chained") {
    TempNode node;
    auto file = node.conf / "10-flannel.conflist";
    auto old = ordered_json::parse(kFlannel);
    old["cniVersion"] = "0.3.1";
    writeFile(file, old.dump());
    Installer inst(node.options());
    auto st = inst.ensureChained();
    REQUIRE(st.has_value());
    CHECK(st->state == ChainState::kChained);
    auto after = readJson(file);
    CHECK(after["cniVersion"] == "0.3.1");
    REQUIRE(after["plugins"].size() == 3);
    CHECK(after["plugins"][2]["type"] == "sluice-cni");
  }

  TEST_CASE("a cniVersion sluice-cni does not speak is left untouched") {
    TempNode node;
    auto file = node.conf / "10-calico.conflist";
    auto old = ordered_json::parse(kFlannel);
    old["cniVersion"] = "0.2.0";
    writeFile(file, old.dump());
    Installer inst(node.options());
    auto st = inst.ensureChained();
    REQUIRE(st.has_value());
    CHECK(st->state == ChainState::kUnsupportedVersion);
    CHECK(st->detail.find("0.2.0") != std::string::npos);
    CHECK(readFile(file) == old.dump());
  }

  TEST_CASE("a foreign .conflist beside the .conf blocks the conversion") {
    TempNode node;
    writeFile(node.conf / "10-bridge.conf", kBridgeConf);
    writeFile(node.conf / "10-bridge.conflist", kFlannel);
    Installer inst(node.options());
    auto st = inst.ensureChained();
    REQUIRE(st.has_value());
    CHECK(st->state == ChainState::kUnusable);
    CHECK(readFile(node.conf / "10-bridge.conf") == kBridgeConf);
    CHECK(readFile(node.conf / "10-bridge.conflist") == kFlannel);
  }

  TEST_CASE("the binary is copied atomically with mode 0755 and removed") {
    TempNode node;
    Installer inst(node.options());
    auto copied = inst.installBinary(true);
    REQUIRE(copied.has_value());
    CHECK(*copied);
    auto dest = node.bin / "sluice-cni";
    CHECK(modeOf(dest) == 0755);
    CHECK(fs::file_size(dest) == fs::file_size(SLUICE_CNI_BINARY));
    CHECK(readFile(dest) == readFile(SLUICE_CNI_BINARY));
    CHECK(listDir(node.bin) == std::vector<std::string>{"sluice-cni"});  // no temporary left
    CHECK_FALSE(*inst.installBinary(false));
    writeFile(dest, "truncated");
    CHECK(*inst.installBinary(false));
    CHECK(readFile(dest) == readFile(SLUICE_CNI_BINARY));
    CHECK(*inst.removeBinary());
    CHECK_FALSE(fs::exists(dest));
    CHECK_FALSE(*inst.removeBinary());
  }

  TEST_CASE("flags") {
    auto parse = [](std::vector<std::string> args) {
      args.insert(args.begin(), "sluice-cni");
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      auto cmd = args[1] == "install" ? Subcommand::kInstall : Subcommand::kUninstall;
      return parseInstallerFlags(cmd, static_cast<int>(argv.size()), argv.data());
    };
    auto ok = parse({"install", "--cni-bin-dir", "/b", "--cni-conf-dir=/c", "--plugin-config",
                     R"({"failOpen":true,"agentSocket":"/run/s.sock"})"});
    REQUIRE(ok.has_value());
    CHECK(ok->bin_dir == "/b");
    CHECK(ok->conf_dir == "/c");
    CHECK(ok->plugin_entry.dump() ==
          R"({"type":"sluice-cni","failOpen":true,"agentSocket":"/run/s.sock"})");
    CHECK(ok->source_binary == "/proc/self/exe");
    CHECK_FALSE(parse({"install", "--cni-bin-dir", "/b"}).has_value());
    CHECK_FALSE(parse({"install", "--cni-conf-dir", "/c"}).has_value());
    auto bad_type = parse({"install", "--cni-bin-dir", "/b", "--cni-conf-dir", "/c",
                           "--plugin-config", R"({"type":"bridge"})"});
    REQUIRE_FALSE(bad_type.has_value());
    CHECK(bad_type.error().describe().find("type") != std::string::npos);
    auto bad_field = parse({"install", "--cni-bin-dir", "/b", "--cni-conf-dir", "/c",
                            "--plugin-config", R"({"failOpen":"yes"})"});
    REQUIRE_FALSE(bad_field.has_value());
    CHECK(bad_field.error().describe().find("failOpen") != std::string::npos);
    auto unknown = parse({"install", "--cni-bin-dir", "/b", "--cni-conf-dir", "/c",
                          "--plugin-config", R"({"failOpen":true,"retries":3})"});
    REQUIRE_FALSE(unknown.has_value());
    CHECK(unknown.error().describe().find("unknown field 'retries'") != std::string::npos);
    CHECK_FALSE(
        parse({"install", "--cni-bin-dir", "/b", "--cni-conf-dir", "/c", "--plugin-config", "[1]"})
            .has_value());
    CHECK_FALSE(
        parse({"uninstall", "--cni-bin-dir", "/b", "--cni-conf-dir", "/c", "--plugin-config", "{}"})
            .has_value());  // install-only flag
    // The messages operators see, unchanged since the installer has had flags.
    auto error = [&](std::vector<std::string> args) {
      auto r = parse(std::move(args));
      return r ? std::string("<accepted>") : r.error().describe();
    };
    CHECK(error({"install", "--cni-bin-dir", "/b", "--cni-conf-dir", "/c", "--bogus", "1"}) ==
          "unknown flag --bogus");
    CHECK(error({"install", "--cni-bin-dir=", "--cni-conf-dir", "/c"}) ==
          "flag --cni-bin-dir needs a non-empty value");
    CHECK(error({"install", "--cni-bin-dir", "/b", "--cni-conf-dir"}) ==
          "flag --cni-conf-dir needs a value");
    CHECK(error({"install", "--cni-bin-dir", "/b", "--cni-conf-dir", "/c", "--recheck-interval-ms",
                 "5"}) == "--recheck-interval-ms must be an integer between 10 and 3600000");
    CHECK(error({"uninstall", "--cni-bin-dir", "/b"}) ==
          "--cni-conf-dir is required (the node's /etc/cni/net.d, as mounted)");
    CHECK(error({"install", "--cni-bin-dir", "/b", "--help"}) ==
          "--help is answered by `sluice-cni --help`");
    auto interval =
        parse({"install", "--cni-bin-dir", "/b", "--cni-conf-dir", "/c",
               "--recheck-interval-ms=250", "--source-binary", "/s", "--log-level", "debug"});
    REQUIRE(interval.has_value());
    CHECK(interval->recheck_interval == std::chrono::milliseconds(250));
    CHECK(interval->source_binary == "/s");
    CHECK(interval->log_level == "debug");
  }

  TEST_CASE("sluice-cni install leaves the chain in place on SIGTERM: a restart opens no window") {
    TempNode node;
    auto file = node.conf / "10-flannel.conflist";
    writeFile(file, kFlannel);
    auto log = node.root / "install.log";
    Child c = spawn(
        {"install", "--cni-bin-dir", node.bin.string(), "--cni-conf-dir", node.conf.string()}, log);
    CHECK(pollUntil([&] { return countOurs(readJson(file)) == 1; }));
    ::kill(c.pid, SIGTERM);
    CHECK(c.wait() == 0);
    CHECK(countOurs(readJson(file)) == 1);
    CHECK(fs::exists(node.bin / "sluice-cni"));
    CHECK(readFile(log).find("leaving sluice-cni chained") != std::string::npos);
    // The next installer (the new DaemonSet pod) finds it in place and writes nothing.
    auto before = readFile(file);
    Child next = spawn(
        {"install", "--cni-bin-dir", node.bin.string(), "--cni-conf-dir", node.conf.string()}, log);
    CHECK(pollUntil([&] { return readFile(log).find("already chains") != std::string::npos; }));
    ::kill(next.pid, SIGTERM);
    CHECK(next.wait() == 0);
    CHECK(readFile(file) == before);
  }

  TEST_CASE(
      "sluice-cni install chains and restores after a rewrite and, with --uninstall-on-exit, "
      "cleans up on SIGTERM") {
    TempNode node;
    auto file = node.conf / "10-flannel.conflist";
    auto log = node.root / "install.log";
    Child c = spawn({"install", "--cni-bin-dir", node.bin.string(), "--cni-conf-dir",
                     node.conf.string(), "--recheck-interval-ms", "60000", "--uninstall-on-exit"},
                    log);
    // No primary config yet: it waits and says so.
    CHECK(pollUntil([&] { return readFile(log).find("waiting for") != std::string::npos; }));
    CHECK(pollUntil([&] { return fs::exists(node.bin / "sluice-cni"); }));
    CHECK(modeOf(node.bin / "sluice-cni") == 0755);
    // The long recheck interval leaves inotify as the only way to notice these in time.
    writeFile(file, kFlannel);
    CHECK(pollUntil([&] { return countOurs(readJson(file)) == 1; }));
    writeFile(file, kFlannel);
    CHECK(pollUntil([&] { return countOurs(readJson(file)) == 1; }));
    CHECK(pollUntil([&] { return readFile(log).find("re-chained") != std::string::npos; }));
    ::kill(c.pid, SIGTERM);
    CHECK(c.wait() == 0);
    CHECK(readJson(file) == ordered_json::parse(kFlannel));
    CHECK_FALSE(fs::exists(node.bin / "sluice-cni"));
    CHECK(listDir(node.conf) == std::vector<std::string>{"10-flannel.conflist"});
  }

  TEST_CASE("sluice-cni uninstall --wait removes, then waits for SIGTERM") {
    TempNode node;
    auto file = node.conf / "10-flannel.conflist";
    writeFile(file, kFlannel);
    Installer inst(node.options());
    REQUIRE(inst.ensureChained()->changed);
    auto log = node.root / "uninstall.log";
    Child c = spawn({"uninstall", "--cni-bin-dir", node.bin.string(), "--cni-conf-dir",
                     node.conf.string(), "--wait"},
                    log);
    CHECK(
        pollUntil([&] { return readFile(log).find("waiting for SIGTERM") != std::string::npos; }));
    CHECK(countOurs(readJson(file)) == 0);
    CHECK(::kill(c.pid, 0) == 0);  // still there
    ::kill(c.pid, SIGTERM);
    CHECK(c.wait() == 0);
  }

  TEST_CASE("sluice-cni uninstall removes what an installer left and errors are clear") {
    TempNode node;
    writeFile(node.conf / "10-bridge.conf", kBridgeConf);
    Installer inst(node.options());
    REQUIRE(inst.installBinary(true).has_value());
    REQUIRE(inst.ensureChained()->changed);
    auto log = node.root / "uninstall.log";
    CHECK(runToEnd({"uninstall", "--cni-bin-dir", node.bin.string(), "--cni-conf-dir",
                    node.conf.string()},
                   log) == 0);
    CHECK(listDir(node.conf) == std::vector<std::string>{"10-bridge.conf"});
    CHECK(readJson(node.conf / "10-bridge.conf") == ordered_json::parse(kBridgeConf));
    CHECK_FALSE(fs::exists(node.bin / "sluice-cni"));

    CHECK(runToEnd({"install", "--cni-bin-dir", node.bin.string(), "--cni-conf-dir",
                    (node.root / "missing").string()},
                   log) == 1);
    CHECK(readFile(log).find("--cni-conf-dir") != std::string::npos);
    CHECK(readFile(log).find("does not exist") != std::string::npos);
    CHECK(runToEnd({"install", "--cni-conf-dir", node.conf.string()}, log) == 2);
    CHECK(readFile(log).find("--cni-bin-dir is required") != std::string::npos);
    // A subcommand's --help lists exactly the flags it accepts; --help lists both.
    CHECK(runToEnd({"install", "--help"}, log) == 0);
    CHECK(readFile(log).find("--source-binary PATH") != std::string::npos);
    CHECK(runToEnd({"uninstall", "--help"}, log) == 0);
    CHECK(readFile(log).find("--cni-conf-dir DIR") != std::string::npos);
    CHECK(readFile(log).find("--source-binary") == std::string::npos);
    CHECK(runToEnd({"--help"}, log) == 0);
    CHECK(readFile(log).find("sluice-cni uninstall") != std::string::npos);
    CHECK(readFile(log).find("--recheck-interval-ms N") != std::string::npos);
  }

  TEST_CASE("the sluice-cni executable is static because it runs with the host libraries") {
#if SLUICE_CNI_STATIC
    std::string elf = readFile(SLUICE_CNI_BINARY);
    REQUIRE(elf.size() > sizeof(Elf64_Ehdr));
    Elf64_Ehdr eh;
    std::memcpy(&eh, elf.data(), sizeof(eh));
    REQUIRE(std::memcmp(eh.e_ident, ELFMAG, SELFMAG) == 0);
    REQUIRE(eh.e_ident[EI_CLASS] == ELFCLASS64);
    int interp = 0, load = 0;
    for (int i = 0; i < eh.e_phnum; ++i) {
      Elf64_Phdr ph;
      REQUIRE(eh.e_phoff + (i + 1) * sizeof(ph) <= elf.size());
      std::memcpy(&ph, elf.data() + eh.e_phoff + i * sizeof(ph), sizeof(ph));
      interp += ph.p_type == PT_INTERP;
      load += ph.p_type == PT_LOAD;
    }
    CHECK(load > 0);
    CHECK(interp == 0);  // no dynamic loader, so no shared library from the host
#else
    MESSAGE("sanitizer build: sluice-cni is dynamic by necessity");
#endif
  }
}
