#include "tools/sluicectl/check.h"

#include <exception>

namespace sluice::ctl::check {

const char* toString(Status s) {
  switch (s) {
    case Status::kOk:
      return "ok";
    case Status::kWarn:
      return "warning";
    case Status::kFail:
      return "error";
  }
  return "?";
}

std::vector<Result> runAll(const std::vector<Check>& checks) {
  std::vector<Result> out;
  for (const auto& c : checks) {
    Outcome o;
    try {
      o = c.run();
    } catch (const std::exception& e) {
      o = Outcome::failed(std::string("the check itself failed: ") + e.what(),
                          "report this as a sluicectl bug, with the output of `sluicectl check`");
    }
    out.push_back({c.group, c.title, std::move(o)});
  }
  return out;
}

namespace {
const char* mark(Status s) {
  switch (s) {
    case Status::kOk:
      return "\u2714";  // ✔
    case Status::kWarn:
      return "\u203c";  // ‼
    case Status::kFail:
      return "\u2718";  // ✘
  }
  return "?";
}
}  // namespace

std::string render(const std::vector<Result>& results) {
  std::string out;
  std::string group;
  int failed = 0, warned = 0;
  for (const auto& r : results) {
    if (r.group != group) {
      if (!group.empty()) out += "\n";
      group = r.group;
      out += group + "\n" + std::string(group.size(), '-') + "\n";
    }
    out += std::string(mark(r.outcome.status)) + " " + r.title;
    if (r.outcome.status == Status::kOk && !r.outcome.detail.empty())
      out += " (" + r.outcome.detail + ")";
    out += "\n";
    if (r.outcome.status != Status::kOk) {
      if (!r.outcome.detail.empty()) out += "    " + r.outcome.detail + "\n";
      if (!r.outcome.hint.empty()) out += "    hint: " + r.outcome.hint + "\n";
    }
    failed += r.outcome.status == Status::kFail;
    warned += r.outcome.status == Status::kWarn;
  }
  out += "\nStatus check results are ";
  if (failed > 0)
    out += std::string(mark(Status::kFail)) + " (" + std::to_string(failed) + " failed" +
           (warned ? ", " + std::to_string(warned) + " warning(s)" : "") + ")\n";
  else if (warned > 0)
    out += std::string(mark(Status::kWarn)) + " (" + std::to_string(warned) + " warning(s))\n";
  else
    out += std::string(mark(Status::kOk)) + "\n";
  return out;
}

nlohmann::json toJson(const std::vector<Result>& results) {
  nlohmann::json checks = nlohmann::json::array();
  for (const auto& r : results)
    checks.push_back({{"group", r.group},
                      {"title", r.title},
                      {"result", toString(r.outcome.status)},
                      {"detail", r.outcome.detail},
                      {"hint", r.outcome.hint}});
  return {{"success", exitStatus(results) == 0}, {"checks", checks}};
}

int exitStatus(const std::vector<Result>& results) {
  for (const auto& r : results)
    if (r.outcome.status == Status::kFail) return 1;
  return 0;
}

}  // namespace sluice::ctl::check
