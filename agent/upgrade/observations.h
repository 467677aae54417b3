// An upgrade's telemetry: what the old agent's connections do after the
// handover (the HBONE streams it drains, which cannot move) is counted by
// the successor, whose metrics port serves from then on. Without it, the
// bytes, requests and closes of a drained stream would be in no scrape.
//
// The old agent's ObservationForwarder sits between the engine and the
// agent's observers. Until hold() it only passes every call on (one atomic
// load more per call). From hold() (the release, once the metrics port is
// closed) it also keeps what each connection does, coalesced per connection,
// and from forward() sends it every kFlushInterval over the handover
// connection, after "released" and the handed-over connections:
//
//   old -> new  {"op":"observed","events":[E,...]}   (each message < 64 KiB)
//   old -> new  {"op":"drained","dropped":N}          the drain is over; then close
//
// where an event E is one of
//   {"record":R,"opened":B,"sent":N,"received":N}  the connection R (ConnectionRecord as
//                                                  recordJson), opened during the drain
//                                                  when B, and bytes moved since the last
//   {"id":ID,"request":Q}                          one HTTP exchange on connection ID
//   {"closed":R}                                   its end, with the final record
//
// The successor's ObservationReceiver replays them into its own observers
// under one worker slot of their own (the engine's workers + 1): a
// connection opened before the handover is opened there as `adopted` (the
// predecessor counted its open), so each open, close and byte is counted
// once. Its ids are remapped into a space of the receiver's own, so that a
// successor that hands over in turn while it still receives forwards both
// without a clash.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/common/unique_fd.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::upgrade {

// A ConnectionRecord on the handover wire, and back (what a connection
// message and an observation carry). readRecord refuses out-of-range enums
// and missing fields.
void writeRecord(const ztunnel::ConnectionRecord& r, nlohmann::json& out);
Result<ztunnel::ConnectionRecord> readRecord(const nlohmann::json& in);

class ObservationForwarder final : public ztunnel::ConnectionObserver {
 public:
  static constexpr std::chrono::milliseconds kFlushInterval{250};
  // HTTP exchanges kept between two flushes; more are dropped (and counted).
  static constexpr size_t kMaxPendingRequests = 20000;

  explicit ObservationForwarder(ztunnel::ConnectionObserver& local) : local_(local) {}
  ~ObservationForwarder() override;  // finish()
  ObservationForwarder(const ObservationForwarder&) = delete;
  ObservationForwarder& operator=(const ObservationForwarder&) = delete;

  // From now on, keep what every connection does for the successor.
  void hold();
  // Send it to `sock` (the handover connection) from now on. An invalid fd:
  // the successor did not ask; stop keeping.
  void forward(UniqueFd sock);
  // The drain is over: what is left, then "drained", and the socket closes.
  // Each send waits at most 5 s for a successor that does not read. Idempotent.
  void finish();

  void opened(unsigned worker, const ztunnel::ConnectionRecord& record) override;
  void transferred(unsigned worker, const ztunnel::ConnectionRecord& record, uint64_t sent,
                   uint64_t received) override;
  void request(unsigned worker, const ztunnel::ConnectionRecord& connection,
               const ztunnel::RequestRecord& request) override;
  void closed(unsigned worker, const ztunnel::ConnectionRecord& record) override;

 private:
  struct Request {
    ztunnel::AppProtocol protocol;
    std::string method, authority, path;
    int status, grpc_status;
    uint64_t request_bytes, response_bytes;
    int64_t start_unix_ms, duration_us;
  };
  struct Pending {
    ztunnel::ConnectionRecord record;  // the latest seen (the final one once closed)
    bool opened = false, closed = false;
    uint64_t sent = 0, received = 0;
    std::vector<Request> requests;
  };
  // When keeping: update(the entry of `record`'s connection, created with
  // it), under mu_.
  template <typename Update>
  void keep(const ztunnel::ConnectionRecord& record, Update&& update);
  void run();
  // Sends `batch` as messages; false once the socket failed.
  bool send(std::unordered_map<uint64_t, Pending>& batch);

  ztunnel::ConnectionObserver& local_;
  std::atomic<bool> keeping_{false};
  std::mutex mu_;
  std::condition_variable wake_;
  std::unordered_map<uint64_t, Pending> pending_;  // by record id
  size_t pending_requests_ = 0;
  uint64_t dropped_ = 0;  // requests over kMaxPendingRequests
  bool finishing_ = false;
  UniqueFd sock_;
  std::thread sender_;
};

class ObservationReceiver {
 public:
  // Replays what arrives on `sock` into `observer` as worker `slot`, on a
  // thread of its own, until "drained", the socket's end or an error.
  ObservationReceiver(UniqueFd sock, ztunnel::ConnectionObserver& observer, unsigned slot);
  // Stops (within a poll interval); connections still open are closed as
  // the predecessor's end left them (proxy_shutdown).
  ~ObservationReceiver();
  ObservationReceiver(const ObservationReceiver&) = delete;
  ObservationReceiver& operator=(const ObservationReceiver&) = delete;

  // The predecessor's drain is over (or its socket ended): nothing more comes.
  bool done() const { return done_.load(); }

 private:
  struct Known {
    ztunnel::ConnectionRecord record;  // with the remapped id
  };
  void run();
  // One message's events; false: malformed (the rest is not trusted).
  bool apply(const nlohmann::json& events);
  void closeAll(const std::string& why);

  UniqueFd sock_;
  ztunnel::ConnectionObserver& observer_;
  unsigned slot_;
  std::unordered_map<uint64_t, Known> known_;  // by the predecessor's id
  uint64_t next_id_ = 0;
  std::atomic<bool> stop_{false}, done_{false};
  std::thread thread_;
};

}  // namespace sluice::agent::upgrade
