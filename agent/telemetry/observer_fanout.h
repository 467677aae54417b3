// Several ConnectionObservers behind the engine's one hook (the Istio
// metrics, the live windows, tap): each call goes to each, in order, on the
// calling worker thread.
#pragma once

#include <vector>

#include "sluice/ztunnel/engine.h"

namespace sluice::agent::telemetry {

class ObserverFanout final : public ztunnel::ConnectionObserver {
 public:
  // Not owned; they outlive the engine.
  explicit ObserverFanout(std::vector<ztunnel::ConnectionObserver*> observers)
      : observers_(std::move(observers)) {}
  void opened(unsigned worker, const ztunnel::ConnectionRecord& record) override {
    for (auto* o : observers_) o->opened(worker, record);
  }
  void transferred(unsigned worker, const ztunnel::ConnectionRecord& record, uint64_t sent,
                   uint64_t received) override {
    for (auto* o : observers_) o->transferred(worker, record, sent, received);
  }
  void request(unsigned worker, const ztunnel::ConnectionRecord& connection,
               const ztunnel::RequestRecord& request) override {
    for (auto* o : observers_) o->request(worker, connection, request);
  }
  void closed(unsigned worker, const ztunnel::ConnectionRecord& record) override {
    for (auto* o : observers_) o->closed(worker, record);
  }

 private:
  std::vector<ztunnel::ConnectionObserver*> observers_;
};

}  // namespace sluice::agent::telemetry
