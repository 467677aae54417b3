#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "tools/sluicectl/check.h"

#include <doctest/doctest.h>

#include <stdexcept>

using namespace sluice::ctl::check;

TEST_SUITE("sluicectl check") {
  TEST_CASE("groups, marks, detail and hint under a problem, and the closing line") {
    std::vector<Check> checks = {
        {"agent", "the agent answers", [] { return Outcome::ok("127.0.0.1:15000"); }},
        {"agent", "the agent is ready",
         [] { return Outcome::failed("not ready: no snapshot", "connect it"); }},
        {"clock", "the clock is synchronized", [] { return Outcome::warn("unsynced", "run NTP"); }},
        {"clock", "a check that throws", []() -> Outcome { throw std::runtime_error("boom"); }},
    };
    auto results = runAll(checks);
    REQUIRE(results.size() == 4);
    CHECK(toString(results[3].outcome.status) == std::string("error"));
    CHECK(results[3].outcome.detail.find("boom") != std::string::npos);
    auto text = render(results);
    CHECK(text ==
          "agent\n"
          "-----\n"
          "\u2714 the agent answers (127.0.0.1:15000)\n"
          "\u2718 the agent is ready\n"
          "    not ready: no snapshot\n"
          "    hint: connect it\n"
          "\n"
          "clock\n"
          "-----\n"
          "\u203c the clock is synchronized\n"
          "    unsynced\n"
          "    hint: run NTP\n"
          "\u2718 a check that throws\n"
          "    the check itself failed: boom\n"
          "    hint: report this as a sluicectl bug, with the output of `sluicectl check`\n"
          "\n"
          "Status check results are \u2718 (2 failed, 1 warning(s))\n");
    CHECK(exitStatus(results) == 1);
    auto j = toJson(results);
    CHECK(j["success"] == false);
    CHECK(j["checks"][1]["result"] == "error");
    CHECK(j["checks"][2]["result"] == "warning");
    CHECK(j["checks"][1]["hint"] == "connect it");
  }

  TEST_CASE("warnings alone pass") {
    auto results = runAll({{"g", "a", [] { return Outcome::warn("w", "h"); }},
                           {"g", "b", [] { return Outcome::ok(); }}});
    CHECK(exitStatus(results) == 0);
    CHECK(render(results).ends_with("Status check results are \u203c (1 warning(s))\n"));
    auto ok = runAll({{"g", "b", [] { return Outcome::ok(); }}});
    CHECK(render(ok).ends_with("Status check results are \u2714\n"));
    CHECK(toJson(ok)["success"] == true);
  }
}
