#include "agent/upgrade/observations.h"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <nlohmann/json.hpp>

#include "agent/upgrade/handover.h"
#include "sluice/common/json_text.h"
#include "sluice/common/log.h"

namespace sluice::agent::upgrade {

namespace {

auto logger() { return log::get("upgrade"); }

using ztunnel::CloseReason;
using ztunnel::ConnectionRecord;

// Enum values on the wire (both ends are builds of this code; a value out
// of range is refused).
constexpr int kDirections = static_cast<int>(ztunnel::Direction::kInbound) + 1;
constexpr int kPaths = static_cast<int>(ztunnel::Path::kNone) + 1;
constexpr int kStates = static_cast<int>(ztunnel::ConnState::kClosed) + 1;
constexpr int kReasons = static_cast<int>(CloseReason::kNoEndpoint) + 1;
constexpr int kProtocols = static_cast<int>(ztunnel::AppProtocol::kGrpc) + 1;

// An observation message stays well under the handover's 64 KiB.
constexpr size_t kMessageBudget = 48 * 1024;
// A request's strings on the wire (tap shows them; no metric label does).
constexpr size_t kMaxField = 1024;
// How long a send may block on a successor that does not read.
constexpr int kSendTimeoutSeconds = 5;
constexpr std::chrono::milliseconds kPoll{200};

std::string capped(std::string_view s) { return std::string(s.substr(0, kMaxField)); }

template <typename E>
E enumAt(const nlohmann::json& j, const char* key, int count) {
  int v = j.at(key).get<int>();
  if (v < 0 || v >= count) throw std::out_of_range(std::string(key) + " out of range");
  return static_cast<E>(v);
}

}  // namespace

void writeRecord(const ConnectionRecord& r, nlohmann::json& out) {
  out["id"] = r.id;
  out["direction"] = static_cast<int>(r.direction);
  out["path"] = static_cast<int>(r.path);
  out["pod"] = r.pod;
  out["source"] = r.source;
  out["destination"] = r.destination;
  out["destination_service"] = r.destination_service;
  out["inbound_service"] = r.inbound_service;
  out["source_principal"] = r.source_principal;
  out["destination_principal"] = r.destination_principal;
  out["mutual_tls"] = r.mutual_tls;
  out["bytes_sent"] = r.bytes_sent;
  out["bytes_received"] = r.bytes_received;
  out["start_unix_ms"] = r.start_unix_ms;
  out["duration_ms"] = r.duration_ms;
  out["state"] = static_cast<int>(r.state);
  out["reason"] = static_cast<int>(r.reason);
  out["reason_detail"] = r.reason_detail;
  out["retried"] = r.retried;
  out["adopted"] = r.adopted;
}

Result<ConnectionRecord> readRecord(const nlohmann::json& h) {
  ConnectionRecord r;
  try {
    r.direction = enumAt<ztunnel::Direction>(h, "direction", kDirections);
    r.path = enumAt<ztunnel::Path>(h, "path", kPaths);
    r.pod = h.at("pod").get<std::string>();
    r.source = h.at("source").get<std::string>();
    r.destination = h.at("destination").get<std::string>();
    r.destination_service = h.at("destination_service").get<std::string>();
    // (an agent before these fields sends none)
    r.inbound_service = h.value("inbound_service", std::string());
    r.id = h.value("id", uint64_t{0});
    r.mutual_tls = h.value("mutual_tls", r.path == ztunnel::Path::kHbone);
    r.duration_ms = h.value("duration_ms", int64_t{0});
    r.state = h.contains("state") ? enumAt<ztunnel::ConnState>(h, "state", kStates)
                                  : ztunnel::ConnState::kOpen;
    r.reason =
        h.contains("reason") ? enumAt<CloseReason>(h, "reason", kReasons) : CloseReason::kNone;
    r.reason_detail = h.value("reason_detail", std::string());
    r.retried = h.value("retried", false);
    r.adopted = h.value("adopted", false);
    r.source_principal = h.at("source_principal").get<std::string>();
    r.destination_principal = h.at("destination_principal").get<std::string>();
    r.bytes_sent = h.at("bytes_sent").get<uint64_t>();
    r.bytes_received = h.at("bytes_received").get<uint64_t>();
    r.start_unix_ms = h.at("start_unix_ms").get<int64_t>();
  } catch (const std::exception& e) {
    return fail(fmt::format("bad connection record: {}", e.what()));
  }
  return r;
}

// ------------------------------------------------------------------ forwarder

ObservationForwarder::~ObservationForwarder() { finish(); }

void ObservationForwarder::hold() {
  std::lock_guard lk(mu_);
  if (!finishing_) keeping_.store(true, std::memory_order_release);
}

void ObservationForwarder::forward(UniqueFd sock) {
  std::lock_guard lk(mu_);
  if (!sock || finishing_ || sender_.joinable()) {
    keeping_.store(false, std::memory_order_release);
    pending_.clear();
    pending_requests_ = 0;
    return;
  }
  timeval tv{kSendTimeoutSeconds, 0};
  (void)::setsockopt(sock.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sock_ = std::move(sock);
  sender_ = std::thread([this] { run(); });
}

void ObservationForwarder::finish() {
  {
    std::lock_guard lk(mu_);
    if (finishing_) return;
    finishing_ = true;
  }
  wake_.notify_all();
  if (sender_.joinable()) sender_.join();
  keeping_.store(false, std::memory_order_release);
}

template <typename Update>
void ObservationForwarder::keep(const ConnectionRecord& record, Update&& update) {
  if (!keeping_.load(std::memory_order_acquire)) return;
  std::lock_guard lk(mu_);
  if (!keeping_.load(std::memory_order_relaxed)) return;
  // Handed over with nothing kept of it: the successor relays it on and
  // counts it from the handed-over record.
  if (record.reason == CloseReason::kHandedOver && !pending_.contains(record.id)) return;
  auto [it, fresh] = pending_.try_emplace(record.id);
  if (fresh) it->second.record = record;
  update(it->second);
}

void ObservationForwarder::opened(unsigned worker, const ConnectionRecord& record) {
  local_.opened(worker, record);
  keep(record, [&](Pending& p) {
    p.record = record;
    p.opened = true;
  });
}

void ObservationForwarder::transferred(unsigned worker, const ConnectionRecord& record,
                                       uint64_t sent, uint64_t received) {
  local_.transferred(worker, record, sent, received);
  keep(record, [&](Pending& p) {
    p.sent += sent;
    p.received += received;
  });
}

void ObservationForwarder::request(unsigned worker, const ConnectionRecord& connection,
                                   const ztunnel::RequestRecord& r) {
  local_.request(worker, connection, r);
  keep(connection, [&](Pending& p) {
    if (pending_requests_ >= kMaxPendingRequests) {
      ++dropped_;
      return;
    }
    ++pending_requests_;
    p.requests.push_back({r.protocol, capped(r.method), capped(r.authority), capped(r.path),
                          r.status, r.grpc_status, r.request_bytes, r.response_bytes,
                          r.start_unix_ms, r.duration_us});
  });
}

void ObservationForwarder::closed(unsigned worker, const ConnectionRecord& record) {
  local_.closed(worker, record);
  keep(record, [&](Pending& p) {
    p.record = record;
    p.closed = true;
  });
}

void ObservationForwarder::run() {
  bool ok = true;
  bool last = false;
  while (!last) {
    std::unordered_map<uint64_t, Pending> batch;
    {
      std::unique_lock lk(mu_);
      wake_.wait_for(lk, kFlushInterval, [&] { return finishing_; });
      last = finishing_;
      batch.swap(pending_);
      pending_requests_ = 0;
    }
    if (ok && !batch.empty() && !send(batch)) {
      ok = false;  // the successor is gone: keep nothing more
      keeping_.store(false, std::memory_order_release);
    }
  }
  uint64_t dropped;
  {
    std::lock_guard lk(mu_);
    dropped = dropped_;
  }
  if (ok) {
    auto r =
        sendMessage(sock_.get(), jsonText(nlohmann::json{{"op", "drained"}, {"dropped", dropped}}));
    if (!r) logger()->warn("telling the successor the drain is over: {}", r.error().describe());
  }
  if (dropped)
    logger()->warn(
        "{} HTTP request(s) of the drain were not forwarded to the successor (over {} "
        "in {} ms)",
        dropped, kMaxPendingRequests, kFlushInterval.count());
  sock_.reset();
}

bool ObservationForwarder::send(std::unordered_map<uint64_t, Pending>& batch) {
  std::string events;
  auto flush = [&]() -> bool {
    if (events.empty()) return true;
    std::string text = R"({"op":"observed","events":[)" + events + "]}";
    events.clear();
    if (auto r = sendMessage(sock_.get(), text); !r) {
      logger()->warn(
          "forwarding the drain's connections to the successor failed: {}; what they "
          "move from now on is in no scrape",
          r.error().describe());
      return false;
    }
    return true;
  };
  auto add = [&](const nlohmann::json& e) -> bool {
    std::string text = jsonText(e);
    if (!events.empty() && events.size() + text.size() + 1 > kMessageBudget && !flush())
      return false;
    if (!events.empty()) events += ',';
    events += text;
    return true;
  };
  for (auto& [id, p] : batch) {
    nlohmann::json first{{"opened", p.opened}, {"sent", p.sent}, {"received", p.received}};
    writeRecord(p.record, first["record"]);
    if (!add(first)) return false;
    for (const auto& q : p.requests) {
      nlohmann::json e{{"id", id},
                       {"request",
                        {{"protocol", static_cast<int>(q.protocol)},
                         {"method", q.method},
                         {"authority", q.authority},
                         {"path", q.path},
                         {"status", q.status},
                         {"grpc_status", q.grpc_status},
                         {"request_bytes", q.request_bytes},
                         {"response_bytes", q.response_bytes},
                         {"start_unix_ms", q.start_unix_ms},
                         {"duration_us", q.duration_us}}}};
      if (!add(e)) return false;
    }
    if (p.closed) {
      nlohmann::json e;
      writeRecord(p.record, e["closed"]);
      if (!add(e)) return false;
    }
  }
  return flush();
}

// ------------------------------------------------------------------ receiver

ObservationReceiver::ObservationReceiver(UniqueFd sock, ztunnel::ConnectionObserver& observer,
                                         unsigned slot)
    : sock_(std::move(sock)), observer_(observer), slot_(slot) {
  thread_ = std::thread([this] { run(); });
}

ObservationReceiver::~ObservationReceiver() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void ObservationReceiver::run() {
  std::string why = "the previous agent went away before its drain ended";
  while (!stop_.load()) {
    pollfd p{sock_.get(), POLLIN, 0};
    int ready = ::poll(&p, 1, static_cast<int>(kPoll.count()));
    if (ready == 0 || (ready < 0 && errno == EINTR)) continue;
    auto m = recvMessage(sock_.get(), std::chrono::milliseconds(0));
    if (!m) {
      logger()->warn("the previous agent's drain: {}", m.error().describe());
      break;
    }
    auto j = nlohmann::json::parse(m->text, nullptr, /*allow_exceptions=*/false);
    std::string op = messageField(j, "op", std::string());
    if (op == "drained") {
      why = "the previous agent's drain ended without their close";
      if (auto dropped = messageField(j, "dropped", uint64_t{0}))
        logger()->warn("{} HTTP request(s) of the previous agent's drain were not counted",
                       dropped);
      logger()->info("the previous agent's drain is over: its connections are counted here");
      break;
    }
    if (op != "observed" || !j.contains("events") || !j["events"].is_array() ||
        !apply(j["events"])) {
      logger()->warn("malformed message from the previous agent's drain: not counting the rest");
      why = "a malformed message from the previous agent's drain";
      break;
    }
  }
  if (stop_.load()) why = "this agent stopped before the previous agent's drain ended";
  closeAll(why);
  sock_.reset();
  done_ = true;
}

bool ObservationReceiver::apply(const nlohmann::json& events) {
  try {
    for (const auto& e : events) {
      if (e.contains("record")) {
        auto rec = readRecord(e.at("record"));
        if (!rec) return false;
        uint64_t old_id = rec->id;
        auto it = known_.find(old_id);
        if (it == known_.end()) {
          rec->id = (uint64_t{1} << 63) | ++next_id_;
          // Opened before the handover: the predecessor counted its open.
          if (!e.value("opened", false)) rec->adopted = true;
          it = known_.emplace(old_id, Known{*rec}).first;
          observer_.opened(slot_, it->second.record);
        }
        uint64_t sent = e.value("sent", uint64_t{0}), received = e.value("received", uint64_t{0});
        if (sent || received) {
          auto& r = it->second.record;
          r.bytes_sent += sent;
          r.bytes_received += received;
          observer_.transferred(slot_, r, sent, received);
        }
      } else if (e.contains("request")) {
        auto it = known_.find(e.at("id").get<uint64_t>());
        if (it == known_.end()) continue;
        const auto& q = e.at("request");
        std::string method = q.at("method").get<std::string>();
        std::string authority = q.at("authority").get<std::string>();
        std::string path = q.at("path").get<std::string>();
        ztunnel::RequestRecord r;
        r.protocol = enumAt<ztunnel::AppProtocol>(q, "protocol", kProtocols);
        r.method = method;
        r.authority = authority;
        r.path = path;
        r.status = q.at("status").get<int>();
        r.grpc_status = q.at("grpc_status").get<int>();
        r.request_bytes = q.at("request_bytes").get<uint64_t>();
        r.response_bytes = q.at("response_bytes").get<uint64_t>();
        r.start_unix_ms = q.at("start_unix_ms").get<int64_t>();
        r.duration_us = q.at("duration_us").get<int64_t>();
        observer_.request(slot_, it->second.record, r);
      } else if (e.contains("closed")) {
        auto rec = readRecord(e.at("closed"));
        if (!rec) return false;
        auto it = known_.find(rec->id);
        if (it == known_.end()) continue;
        rec->id = it->second.record.id;
        rec->adopted = it->second.record.adopted;
        rec->state = ztunnel::ConnState::kClosed;
        observer_.closed(slot_, *rec);
        known_.erase(it);
      } else {
        return false;
      }
    }
  } catch (const std::exception&) {
    return false;
  }
  return true;
}

void ObservationReceiver::closeAll(const std::string& why) {
  if (known_.empty()) return;
  logger()->warn("{}: {} of its connection(s) counted closed here (proxy_shutdown)", why,
                 known_.size());
  for (auto& [id, k] : known_) {
    k.record.state = ztunnel::ConnState::kClosed;
    k.record.reason = CloseReason::kProxyShutdown;
    k.record.reason_detail = why;
    observer_.closed(slot_, k.record);
  }
  known_.clear();
}

}  // namespace sluice::agent::upgrade
