#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "sluice/common/addr.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "sluice/common/bearer_token.h"
#include "sluice/common/bpf_abi.h"

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

#include "sluice/common/flags.h"

TEST_SUITE("flags") {
  TEST_CASE("both flag spellings and the errors operators see") {
    const char* argv[] = {"x", "--a", "1", "--b=2", "-h", "--c="};
    auto r = sluice::splitFlags(6, const_cast<char**>(argv));
    REQUIRE(r.has_value());
    REQUIRE(r->size() == 4);
    CHECK((*r)[0].name == "--a");
    CHECK((*r)[0].value == "1");
    CHECK((*r)[1].value == "2");
    CHECK((*r)[2].name == "--help");
    CHECK((*r)[3].value.empty());
    const char* dangling[] = {"x", "--a"};
    CHECK(sluice::splitFlags(2, const_cast<char**>(dangling)).error().message ==
          "flag --a needs a value");
    const char* positional[] = {"x", "oops"};
    CHECK_FALSE(sluice::splitFlags(2, const_cast<char**>(positional)).has_value());
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
}
