// stat, top and tap: the agent's live inspection endpoints (/live/stat,
// /live/tap), printed.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "sluice/common/json_text.h"
#include "tools/sluicectl/admin_client.h"
#include "tools/sluicectl/commands.h"
#include "tools/sluicectl/live_format.h"

using nlohmann::json;

namespace sluice::ctl {

namespace {

constexpr size_t kTopRows = 30;

void declareFilter(FlagTable& f, Options& o) {
  f.value("--namespace", "NS", "only requests from or to a workload in NS",
          FlagTable::into(&o.namespace_))
      .alias("-n")
      .value("--from", "RESOURCE",
             "only requests from RESOURCE: deploy/NAME, pod/NAME, ns/NAME, or\na workload NAME",
             FlagTable::into(&o.from))
      .value("--to", "RESOURCE",
             "only requests to RESOURCE: deploy/NAME, pod/NAME, svc/NAME,\nns/NAME, or a workload "
             "NAME",
             FlagTable::into(&o.to))
      .value("--method", "METHOD", "only requests with this method (GET, POST, ...)",
             FlagTable::into(&o.method))
      .value("--path", "PREFIX", "only requests whose path starts with PREFIX",
             FlagTable::into(&o.path))
      .value("--authority", "HOST", "only requests with this :authority (or Host)",
             FlagTable::into(&o.authority));
}

std::string tapPath(const Options& o) {
  std::string q;
  auto add = [&](const char* key, const std::string& v) {
    if (!v.empty()) q += (q.empty() ? "?" : "&") + std::string(key) + "=" + urlEncode(v);
  };
  add("namespace", o.namespace_);
  add("from", o.from);
  add("to", o.to);
  add("method", o.method);
  add("path", o.path);
  add("authority", o.authority);
  if (o.count) add("max", std::to_string(o.count));
  return "/live/tap" + q;
}

// A {"dropped": N} line: the session fell behind the node's traffic.
bool reportDrops(const json& j) {
  if (!j.contains("dropped")) return false;
  std::fprintf(stderr,
               "sluicectl: %s requests not shown so far: the tap fell behind (it shows about "
               "12,000 requests/s per proxy worker, and only as fast as this terminal or pipe "
               "takes them; narrow it with --to, --method or --path)\n",
               jsonText(j["dropped"]).c_str());
  return true;
}

}  // namespace

void declareStat(FlagTable& f, Options& o) {
  f.value("--namespace", "NS", "only workloads of this namespace (default: all)",
          FlagTable::into(&o.namespace_))
      .alias("-n")
      .toggle("--outbound",
              "requests the workloads sent (default: those they received, as\nLinkerd's viz stat)",
              [&o] { o.outbound = true; });
}

void declareTap(FlagTable& f, Options& o) {
  declareFilter(f, o);
  f.value("--count", "N", "stop after N requests (default: until interrupted)",
          FlagTable::number(&o.count, 1));
}

void declareTop(FlagTable& f, Options& o) {
  declareFilter(f, o);
  f.value("--interval", "SECONDS", "refresh every SECONDS (default 2)",
          FlagTable::number(&o.interval, 1, 3600))
      .toggle("--once", "print one table after one interval and exit (for scripts)",
              [&o] { o.once = true; });
}

int cmdStat(const Options& o) {
  std::string kind = o.args.empty() ? "deploy" : statKind(o.args[0]);
  if (kind.empty())
    die("stat: unknown resource kind '" + o.args[0] + "': use deploy, pod or ns", 2);
  json stat = adminGet(o.admin, "/live/stat");
  if (o.as_json) {
    json rows = json::array();
    for (const auto& r : stat.value(kind, json::array()))
      if (o.namespace_.empty() ||
          (kind == "ns" ? r.value("name", "") : r.value("namespace", "")) == o.namespace_)
        rows.push_back(r);
    std::printf("%s\n", jsonText(json{{"window_seconds", stat["window_seconds"]},
                                      {"covered_seconds", stat["covered_seconds"]},
                                      {"kind", kind},
                                      {"rows", rows}},
                                 2)
                            .c_str());
    return 0;
  }
  Table t = statTable(stat, kind, o.namespace_, o.outbound ? "outbound" : "inbound");
  if (t.empty()) {
    std::fprintf(stderr, "No %s of this node%s.\n",
                 kind == "ns"    ? "namespaces"
                 : kind == "pod" ? "pods"
                                 : "workloads",
                 o.namespace_.empty() ? "" : (" in namespace " + o.namespace_).c_str());
    return 0;
  }
  std::fputs(t.render().c_str(), stdout);
  return 0;
}

int cmdTap(const Options& o) {
  AdminStream stream(o.admin, tapPath(o));
  std::string line;
  while (stream.next(line, -1) == AdminStream::Next::kLine) {
    if (line.empty()) continue;  // the agent's keep-alive
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded()) continue;
    if (o.as_json) {
      std::printf("%s\n", line.c_str());
    } else if (!reportDrops(j)) {
      std::printf("%s\n", tapLine(j).c_str());
    }
    std::fflush(stdout);
  }
  if (o.count) return 0;  // the agent ends the stream after --count requests
  die("the agent at " + o.admin + " ended the tap (is it shutting down?)");
}

int cmdTop(const Options& o) {
  AdminStream stream(o.admin, tapPath(o));
  TopTable top;
  bool tty = isatty(STDOUT_FILENO) && !o.as_json;
  using Clock = std::chrono::steady_clock;
  auto next_print = Clock::now() + std::chrono::seconds(o.interval);
  auto print = [&] {
    if (o.as_json) {
      std::printf("%s\n", jsonText(top.toJson(kTopRows), 2).c_str());
    } else {
      if (tty) std::fputs("\033[H\033[2J", stdout);  // redraw in place
      std::fputs(top.render(kTopRows).render().c_str(), stdout);
      if (!tty) std::fputs("\n", stdout);
    }
    std::fflush(stdout);
  };
  std::string line;
  while (true) {
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next_print - Clock::now());
    auto r = stream.next(line, static_cast<int>(std::max<int64_t>(0, wait.count())));
    if (r == AdminStream::Next::kClosed) {
      print();
      die("the agent at " + o.admin + " ended the tap (is it shutting down?)");
    }
    if (r == AdminStream::Next::kLine && !line.empty()) {
      json j = json::parse(line, nullptr, false);
      if (!j.is_discarded() && !reportDrops(j)) top.add(j);
    }
    if (Clock::now() >= next_print) {
      print();
      if (o.once) return 0;
      next_print = Clock::now() + std::chrono::seconds(o.interval);
    }
  }
}

}  // namespace sluice::ctl
