// The agent end of the CNI socket. A poll loop on one thread accepts
// connections; each request is handled on a short-lived worker thread (at
// most kMaxInFlight at once) so a slow ADD — which may wait for the control
// plane — never blocks DEL of another pod. Every connection has a read
// deadline and a size limit; garbage gets an error reply, never a crash.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "sluice/common/cni_protocol.h"
#include "sluice/common/result.h"
#include "sluice/common/unique_fd.h"

namespace sluice::agent::cni {

using sluice::cni::CniReply;
using sluice::cni::CniRequest;

class Handler {
 public:
  virtual ~Handler() = default;
  // Called on a worker thread; may block (bounded by the handler itself).
  virtual CniReply handle(const CniRequest& request) = 0;
};

class Server {
 public:
  static constexpr int kMaxInFlight = 64;
  static constexpr int kReadDeadlineMs = 5000;

  static Result<std::unique_ptr<Server>> create(const std::string& socket_path, Handler& handler);
  ~Server();

 private:
  Server(Handler& handler) : handler_(handler) {}
  void loop();
  void serve(int fd);

  Handler& handler_;
  std::string path_;
  UniqueFd listen_fd_;
  UniqueFd wake_fd_;  // eventfd: tells the loop to stop
  std::jthread thread_;
  std::atomic<int> in_flight_{0};
};

}  // namespace sluice::agent::cni
