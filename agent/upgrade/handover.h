// The handover from a running agent to its successor (an upgrade), over a
// unix socket in the state directory (<state-dir>/handover.sock). Only root
// may use it: each end checks the other's SO_PEERCRED. SOCK_SEQPACKET keeps
// message boundaries; each message is one JSON object, sockets ride along
// with SCM_RIGHTS:
//
//   new -> old  {"op":"hello","version":1,"connections":true}
//   old -> new  {"op":"listeners","items":[{"pod":UID,"kind":K},...],"more":B}
//               + one socket per item; batches until "more" is false
//               (or {"op":"refused","error":...})
//   new -> old  {"op":"adopted"}    the new engine accepts on them too
//   old -> new  {"op":"released","connections":N}   the old one stopped accepting
//   old -> new  N times: {"op":"connection",...record and state...,
//               "to_upstream":BYTES,"to_client":BYTES,"chunks":K} + the client
//               and upstream sockets, then K messages of raw bytes (the
//               buffered bytes, to_upstream's first)
//   old -> new  observations of what the old agent drains, until
//               {"op":"drained"} (upgrade/observations.h)
//
// "connections" in the hello asks for the frozen plaintext connections
// (an agent without it, or one answering without "connections", hands
// over listeners only); "observations" asks for what the old agent's
// connections do while it drains ("released" says "observations":true
// when they follow).
//
// Between "hello" and "released" the old agent's pod set is frozen (the
// handler's freeze()); a successor that goes away before "adopted" thaws it.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/common/unique_fd.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::upgrade {

class ObservationReceiver;

constexpr int kProtocolVersion = 1;

// The running agent's side: one thread, one successor at a time.
class HandoverServer {
 public:
  class Handler {
   public:
    // A successor asks to take over: freeze the pod set (no enrolment
    // changes until release() or thaw()) and give the listeners to hand over.
    virtual Result<std::vector<ztunnel::ListenerFd>> freeze() = 0;
    // The successor accepts on them: stop accepting (connections already
    // accepted keep running). The server answers "released" afterwards.
    virtual void release() = 0;
    // The successor went away before adopting them: undo freeze().
    virtual void thaw(const std::string& why) = 0;
    // After release(), if the successor takes them: the plaintext
    // connections to hand over (frozen; their records closed here).
    virtual std::vector<ztunnel::ConnectionFd> exportConnections() { return {}; }
    // After the connections: the socket to send the drain's observations
    // to (ObservationForwarder::forward), or none when the successor did
    // not ask for them.
    virtual void observationsTo(UniqueFd sock) { (void)sock; }

   protected:
    ~Handler() = default;
  };

  // Listens on `path` (a stale socket there is replaced). Peers whose uid
  // is not `allowed_uid` are refused.
  static Result<std::unique_ptr<HandoverServer>> create(const std::string& path, Handler& handler,
                                                        uid_t allowed_uid = 0);
  ~HandoverServer();  // stops the thread; removes the socket file unless it handed over
  HandoverServer(const HandoverServer&) = delete;
  HandoverServer& operator=(const HandoverServer&) = delete;

  // A successor took over (release() returned); the server listens no more.
  bool handedOver() const { return handed_over_.load(); }

 private:
  HandoverServer(Handler& handler, uid_t allowed_uid)
      : handler_(handler), allowed_uid_(allowed_uid) {}
  void loop();
  void serve(UniqueFd peer);
  Handler& handler_;
  uid_t allowed_uid_;
  std::string path_;
  UniqueFd listen_fd_, wake_fd_;
  std::atomic<bool> handed_over_{false};
  std::jthread thread_;
};

// The successor's side.
class HandoverClient {
 public:
  // Connects to the agent listening at `path` and takes its listeners (it
  // freezes its pod set meanwhile). Null: nobody to take over from (no
  // socket, or nothing listening on it) — a fresh start. Errors: a peer that
  // is not `allowed_uid`, a refusal, a broken exchange.
  static Result<std::unique_ptr<HandoverClient>> connect(
      const std::string& path, std::chrono::milliseconds timeout = std::chrono::seconds(10),
      uid_t allowed_uid = 0);

  std::vector<ztunnel::ListenerFd> takeListeners() { return std::move(listeners_); }
  // Tells the old agent that the listeners are adopted; returns once it has
  // stopped accepting and handed over its plaintext connections.
  Result<void> release();
  std::vector<ztunnel::ConnectionFd> takeConnections() { return std::move(connections_); }
  // After release(): what the old agent's connections do while it drains,
  // replayed into `observer` as worker `slot` (the handover connection
  // moves to it). Null when the old agent does not send them.
  std::unique_ptr<ObservationReceiver> receiveObservations(ztunnel::ConnectionObserver& observer,
                                                           unsigned slot);

 private:
  explicit HandoverClient(UniqueFd fd, std::chrono::milliseconds timeout)
      : fd_(std::move(fd)), timeout_(timeout) {}
  UniqueFd fd_;
  std::chrono::milliseconds timeout_;
  std::vector<ztunnel::ListenerFd> listeners_;
  std::vector<ztunnel::ConnectionFd> connections_;
  bool observations_ = false;
};

// One frozen connection as messages (its header, then its buffered bytes),
// and back; for both sides and their tests.
Result<void> sendConnection(int sock, const ztunnel::ConnectionFd& c);
Result<ztunnel::ConnectionFd> recvConnection(int sock, std::chrono::milliseconds timeout);

// --- the wire, for both sides and their tests ---------------------------

// One message and the descriptors that came with it.
struct Message {
  std::string text;
  std::vector<UniqueFd> fds;
};
// Sends `text` with `fds` (at most kMaxFdsPerMessage) as one message.
Result<void> sendMessage(int sock, const std::string& text, const std::vector<int>& fds = {});
// Receives one message within `timeout`; an orderly close is an error.
Result<Message> recvMessage(int sock, std::chrono::milliseconds timeout);
constexpr size_t kMaxFdsPerMessage = 64;
// The uid of the process at the other end of a unix socket.
Result<uid_t> peerUid(int sock);
// A field of a message, or `otherwise` when it is missing or of another
// type (never throws: a message is input from another process).
template <typename T>
T messageField(const nlohmann::json& j, const char* key, T otherwise) {
  if (!j.is_object()) return otherwise;
  auto it = j.find(key);
  if (it == j.end()) return otherwise;
  try {
    return it->template get<T>();
  } catch (const nlohmann::json::exception&) {
    return otherwise;
  }
}

}  // namespace sluice::agent::upgrade
