#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "sluice/common/addr.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "sluice/common/bearer_token.h"
#include "sluice/common/bpf_abi.h"
#include "sluice/common/ip6.h"

TEST_SUITE("addr") {
  TEST_CASE("endpoints round-trip and malformed ones are refused") {
    auto sa = sluice::parseEndpoint("10.244.1.5:8080");
    REQUIRE(sa.has_value());
    CHECK(sluice::formatEndpoint(*sa) == "10.244.1.5:8080");
    CHECK_FALSE(sluice::parseEndpoint("10.244.1.5").has_value());
    CHECK_FALSE(sluice::parseEndpoint("10.244.1.5:99999").has_value());
    CHECK_FALSE(sluice::parseEndpoint("10.244.1:80").has_value());
    CHECK_FALSE(sluice::parseEndpoint("10.244.1.5:8o").has_value());
    CHECK_FALSE(sluice::parseEndpoint(":80").has_value());
  }
  TEST_CASE("IPv6 addresses parse to their canonical text - malformed ones are refused") {
    auto a = sluice::parseIp6("fd00:0244:0001:0000::0005");
    REQUIRE(a.has_value());
    CHECK(sluice::formatIp6(*a) == "fd00:244:1::5");
    CHECK(sluice::formatIp6(*sluice::parseIp6("::ffff:10.0.0.1")) == "::ffff:10.0.0.1");
    CHECK_FALSE(sluice::parseIp6("10.0.0.1").has_value());
    CHECK_FALSE(sluice::parseIp6("fd00::1::2").has_value());
    CHECK_FALSE(sluice::parseIp6("fd00::1/64").has_value());
    CHECK_FALSE(sluice::parseIp6("").has_value());
  }
}

TEST_SUITE("IpAddr and SockAddr") {
  using sluice::IpAddr;
  using sluice::SockAddr;
  TEST_CASE("both families parse, format and compare - IPv4-mapped is IPv4") {
    auto v4 = IpAddr::parse("10.244.1.5");
    auto v6 = IpAddr::parse("fd00:0244:0001::0005");
    REQUIRE(v4.has_value());
    REQUIRE(v6.has_value());
    CHECK(v4->isV4());
    CHECK(v4->v4net() == *sluice::parseIp4("10.244.1.5"));
    CHECK(v4->str() == "10.244.1.5");
    CHECK(v6->isV6());
    CHECK(v6->v4net() == 0);
    CHECK(v6->str() == "fd00:244:1::5");
    auto mapped = IpAddr::parse("::ffff:10.244.1.5");
    REQUIRE(mapped.has_value());
    CHECK(mapped->isV4());
    CHECK(*mapped == *v4);
    CHECK(std::hash<IpAddr>()(*mapped) == std::hash<IpAddr>()(*v4));
    CHECK(*v4 != *v6);
    CHECK(IpAddr() != *v4);
    CHECK(IpAddr().empty());
    CHECK(IpAddr().str().empty());
    CHECK(sluice::formatIp6(v4->v6addr()) == "::ffff:10.244.1.5");
    CHECK_FALSE(IpAddr::parse("10.244.1").has_value());
    CHECK_FALSE(IpAddr::parse("fd00::1::2").has_value());
    CHECK_FALSE(IpAddr::parse("").has_value());
  }
  TEST_CASE("endpoints of both families round-trip as 1.2.3.4:80 and [fd00::1]:80") {
    auto a = SockAddr::parse("10.244.1.5:8080");
    REQUIRE(a.has_value());
    CHECK(a->isV4());
    CHECK(a->port() == 8080);
    CHECK(a->portNet() == htons(8080));
    CHECK(a->len() == sizeof(sockaddr_in));
    CHECK(a->str() == "10.244.1.5:8080");
    CHECK(*a == SockAddr(*sluice::parseEndpoint("10.244.1.5:8080")));
    auto b = SockAddr::parse("[fd00:244:1:0::5]:15008");
    REQUIRE(b.has_value());
    CHECK(b->isV6());
    CHECK(b->len() == sizeof(sockaddr_in6));
    CHECK(b->str() == "[fd00:244:1::5]:15008");
    CHECK(b->ip() == *IpAddr::parse("fd00:244:1::5"));
    b->setPort(80);
    CHECK(b->str() == "[fd00:244:1::5]:80");
    CHECK(*b == *SockAddr::parse("[fd00:244:1::5]:80"));
    CHECK(*b != *SockAddr::parse("[fd00:244:1::5]:81"));
    CHECK(std::hash<SockAddr>()(*b) ==
          std::hash<SockAddr>()(*SockAddr::parse("[fd00:244:1::5]:80")));
    // A v4-mapped socket address (a dual-stack socket's peer) is the IPv4 one.
    sockaddr_in6 m{};
    m.sin6_family = AF_INET6;
    m.sin6_addr = IpAddr::parse("10.244.1.5")->v6addr();
    m.sin6_port = htons(8080);
    SockAddr from6(m);
    CHECK(from6.isV4());
    CHECK(from6 == *a);
    CHECK(from6.str() == "10.244.1.5:8080");
    CHECK(SockAddr::fromRaw(b->sa(), b->len()) == *b);
    CHECK(SockAddr::fromRaw(b->sa(), sizeof(sockaddr_in)).empty());
    CHECK(SockAddr().str().empty());
    for (const char* bad : {"fd00::1:80", "[fd00::1]", "[fd00::1]:", "[10.0.0.1]:80",
                            "10.0.0.1:65536", "[fd00::1]:8o", ":80", "[]:80"})
      CHECK_MESSAGE(!SockAddr::parse(bad).has_value(), bad);
  }
}

TEST_SUITE("bpf_abi") {
  TEST_CASE("ABI structs have the sizes the BPF programs use") {
    CHECK(sizeof(sluice_pair_key) == 24);
    CHECK(offsetof(sluice_pair_key, src_ip4) == 8);
    CHECK(offsetof(sluice_pair_key, src_port) == 16);
    CHECK(sizeof(sluice_orig_dst) == 8);
    CHECK((SLUICE_MARK_INBOUND_APP & SLUICE_MARK_MASK) == SLUICE_MARK_MINE);
  }
}

TEST_SUITE("bearer_token") {
  TEST_CASE("a token file is re-read on every use, so a rotated token is picked up") {
    CHECK(sluice::BearerToken().empty());
    CHECK(sluice::BearerToken("literal").get() == "literal");
    char path[] = "/tmp/sluice-token-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    ::close(fd);
    sluice::BearerToken t({}, path);
    CHECK_FALSE(t.empty());
    std::ofstream(path) << "first\n";
    CHECK(t.get() == "first");
    std::ofstream(path) << "second \r\n";
    CHECK(t.get() == "second");
    std::remove(path);
    CHECK(t.get().empty());
  }
}

#include <spdlog/sinks/ostream_sink.h>

#include <sstream>

#include "sluice/common/log_limiter.h"

TEST_SUITE("log limiter") {
  TEST_CASE("one line per interval, and the next one says how many were suppressed") {
    using namespace std::chrono_literals;
    sluice::log::Limiter limiter(1000ms);
    auto t0 = sluice::log::Limiter::Clock::time_point{} + 1h;
    auto first = limiter.admit(t0);
    REQUIRE(first.has_value());
    CHECK(*first == 0);
    for (int i = 1; i <= 7750; ++i) CHECK_FALSE(limiter.admit(t0 + std::chrono::microseconds(i)));
    auto next = limiter.admit(t0 + 1001ms);
    REQUIRE(next.has_value());
    CHECK(*next == 7750);
    CHECK_FALSE(limiter.admit(t0 + 1500ms));
    auto later = limiter.admit(t0 + 10s);
    REQUIRE(later.has_value());
    CHECK(*later == 1);
  }

  TEST_CASE("a burst that no later line follows is counted by flush(), once") {
    using namespace std::chrono_literals;
    std::ostringstream out;
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
    auto logger = std::make_shared<spdlog::logger>("limiter-test", sink);
    logger->set_pattern("%l %v");
    sluice::log::Limiter limiter(1000ms);
    auto t0 = sluice::log::Limiter::Clock::time_point{} + 1h;
    CHECK(limiter.flush(t0) == 0);  // nothing written yet
    for (int i = 0; i < 5; ++i) {
      if (limiter.admit(t0 + std::chrono::milliseconds(i))) {
        logger->warn("refused a peer");
        limiter.wrote(logger, spdlog::level::warn, "refused a peer");
      }
    }
    CHECK(limiter.flush(t0 + 500ms) == 0);  // within the interval: the next line may carry it
    CHECK(limiter.flush(t0 + 1001ms) == 4);
    CHECK(limiter.flush(t0 + 5s) == 0);  // said once
    CHECK(out.str() ==
          "warning refused a peer\nwarning 4 more line(s) like this one suppressed: refused a "
          "peer\n");
    // The count starts again: a line right after the flush is suppressed
    // (the flush is a line), and the next admitted one carries it.
    CHECK_FALSE(limiter.admit(t0 + 1002ms));
    auto next = limiter.admit(t0 + 2100ms);
    REQUIRE(next.has_value());
    CHECK(*next == 1);
  }
}

#include "sluice/common/flags.h"

TEST_SUITE("flag table") {
  struct Argv {
    std::vector<std::string> words;
    std::vector<char*> ptrs;
    explicit Argv(std::vector<std::string> w) : words(std::move(w)) {
      for (auto& s : words) ptrs.push_back(s.data());
    }
    int argc() const { return static_cast<int>(ptrs.size()); }
    char** argv() { return ptrs.data(); }
  };
  // What `t` says to "prog WORDS...": its error message, or "<accepted>".
  std::string parseError(const sluice::FlagTable& t, std::vector<std::string> words) {
    words.insert(words.begin(), "prog");
    Argv a(std::move(words));
    auto r = t.parse(a.argc(), a.argv());
    return r ? std::string("<accepted>") : r.error().message;
  }

  TEST_CASE("every documented flag is parsed - values are checked - --help wins") {
    std::string name;
    unsigned n = 7;
    bool on = false;
    sluice::FlagTable t;
    t.value("--name", "NAME", "a name\nover two lines", sluice::FlagTable::into(&name))
        .value("--count", "N", "a number", sluice::FlagTable::number(&n, 1, 10))
        .toggle("--on", "a switch", [&] { on = true; });
    std::string help = t.help();
    CHECK(help.find("  --name NAME") != std::string::npos);
    CHECK(help.find("\n                           over two lines\n") != std::string::npos);
    CHECK(help.find("  --count N") != std::string::npos);
    CHECK(help.find("  --on") != std::string::npos);
    CHECK(help.find("  -h, --help") != std::string::npos);

    Argv ok({"prog", "--name", "x", "--count=3", "--on"});
    auto r = t.parse(ok.argc(), ok.argv());
    REQUIRE(r.has_value());
    CHECK_FALSE(*r);
    CHECK(name == "x");
    CHECK(n == 3);
    CHECK(on);

    Argv bad({"prog", "--count", "11"});
    auto e = t.parse(bad.argc(), bad.argv());
    REQUIRE_FALSE(e.has_value());
    CHECK(e.error().message.find("--count expects a number from 1 to 10") != std::string::npos);

    Argv unknown({"prog", "--nope", "1"});
    auto u = t.parse(unknown.argc(), unknown.argv());
    REQUIRE_FALSE(u.has_value());
    CHECK(u.error().message == "unknown flag --nope");

    Argv help_wins({"prog", "--count", "99", "-h"});
    auto h = t.parse(help_wins.argc(), help_wins.argv());
    REQUIRE(h.has_value());
    CHECK(*h);
  }

  TEST_CASE("spellings - aliases - positional arguments - the errors operators see") {
    std::string out, command;
    bool verbose = false;
    sluice::FlagTable t;
    t.value("--output", "FORMAT", "table or json", sluice::FlagTable::into(&out))
        .alias("-o")
        .value("--dir", "DIR", "a directory",
               [](const std::string& v) -> std::string {
                 if (v.empty()) return "flag --dir needs a non-empty value";
                 return "";
               })
        .toggle("--verbose", "more", [&] { verbose = true; })
        .positional([&](const std::string& v) -> std::string {
          if (!command.empty()) return "unexpected argument '" + v + "'";
          command = v;
          return "";
        });
    CHECK(t.help().find("  -o, --output FORMAT") != std::string::npos);

    Argv ok({"prog", "certs", "--output=json", "--verbose"});
    REQUIRE(t.parse(ok.argc(), ok.argv()).has_value());
    CHECK(command == "certs");
    CHECK(out == "json");
    CHECK(verbose);
    Argv glued({"prog", "-otable"});
    REQUIRE(t.parse(glued.argc(), glued.argv()).has_value());
    CHECK(out == "table");
    Argv spaced({"prog", "-o", "json"});
    REQUIRE(t.parse(spaced.argc(), spaced.argv()).has_value());
    CHECK(out == "json");

    auto error = [&](std::vector<std::string> words) {
      command.clear();
      return parseError(t, std::move(words));
    };
    CHECK(error({"--output"}) == "flag --output needs a value");
    CHECK(error({"-o"}) == "flag -o needs a value");
    CHECK(error({"-x"}) == "unknown flag -x");
    CHECK(error({"--nope=1"}) == "unknown flag --nope");
    CHECK(error({"--verbose=yes"}) == "flag --verbose takes no value");
    CHECK(error({"a", "b"}) == "unexpected argument 'b'");
    // A value left out: the next flag is not taken as it.
    CHECK(error({"--dir", "--verbose"}) == "flag --dir needs a value (--verbose is a flag)");
    CHECK(error({"--dir", "--output=json"}) ==
          "flag --dir needs a value (--output=json is a flag)");
    CHECK(error({"--output", "-o"}) == "flag --output needs a value (-o is a flag)");
    CHECK(error({"--dir", "-"}) == "<accepted>");        // stdin, say
    CHECK(error({"--dir", "--other"}) == "<accepted>");  // not a flag of ours: a value
    // An applier's message that names the flag is kept as it is.
    CHECK(error({"--dir="}) == "flag --dir needs a non-empty value");

    sluice::FlagTable no_positional;
    Argv stray({"prog", "oops"});
    auto p = no_positional.parse(stray.argc(), stray.argv());
    REQUIRE_FALSE(p.has_value());
    CHECK(p.error().message == "unexpected argument 'oops'");
  }

  TEST_CASE("a choice takes one of its words and names them all when refusing another") {
    std::string mode = "unset";
    bool probes = true;
    sluice::FlagTable t;
    t.choice("--mode", {"fast", "safe", "off"}, "how to run",
             [&](const std::string& v) { mode = v; });
    t.choice("--probes", {"allow", "policy"}, "kubelet probes",
             [&](const std::string& v) { probes = v == "allow"; });
    CHECK(t.help().find("  --mode fast|safe|off     how to run\n") != std::string::npos);
    CHECK(t.help().find("  --probes allow|policy") != std::string::npos);

    Argv ok({"prog", "--mode", "safe", "--probes=policy"});
    REQUIRE(t.parse(ok.argc(), ok.argv()).has_value());
    CHECK(mode == "safe");
    CHECK_FALSE(probes);

    CHECK(parseError(t, {"--probes", "deny"}) ==
          "--probes must be 'allow' or 'policy', got 'deny'");
    CHECK(parseError(t, {"--mode=Fast"}) == "--mode must be 'fast', 'safe' or 'off', got 'Fast'");
    CHECK(parseError(t, {"--mode="}) == "--mode must be 'fast', 'safe' or 'off', got ''");
    CHECK(mode == "safe");  // a refused value changes nothing
    CHECK_FALSE(probes);
  }

  TEST_CASE("--log-level, as every binary declares it, refuses an unknown level") {
    std::string level = "info";
    sluice::FlagTable t;
    t.logLevel(&level);
    CHECK(parseError(t, {"--log-level", "x"}) ==
          "--log-level must be 'trace', 'debug', 'info', 'warn' or 'error', got 'x'");
    CHECK(level == "info");
    Argv ok({"prog", "--log-level=debug"});
    REQUIRE(t.parse(ok.argc(), ok.argv()).has_value());
    CHECK(level == "debug");
  }
}
