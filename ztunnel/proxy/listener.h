// A pod's listening socket on one worker (SO_REUSEPORT: each worker has its
// own, and a connection stays on the worker that accepted it). One
// multishot accept stays armed; when accepting fails for lack of
// descriptors or memory it backs off (10 ms doubling to 1 s) instead of
// spinning on the backlog. Worker thread only.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string_view>

#include "sluice/common/log_limiter.h"
#include "sluice/common/unique_fd.h"
#include "ztunnel/proxy/context.h"
#include "ztunnel/proxy/pod.h"
#include "ztunnel/uring/ops.h"

namespace sluice::ztunnel::proxy {

// Each role has an IPv4 listener and, for a pod with an IPv6 address, an
// IPv6 twin ([::1]:15001, [pod-v6]:15006, [pod-v6]:15008).
enum class ListenerKind : uint8_t { kOutbound, kInbound, kHbone, kOutbound6, kInbound6, kHbone6 };
// "outbound", "inbound", "hbone", "outbound6", "inbound6", "hbone6": also
// the kind an upgrade's handover carries (an older agent sends the first three).
const char* toString(ListenerKind k);
std::optional<ListenerKind> listenerKindOf(std::string_view name);  // toString's inverse
// The role (kOutbound, kInbound, kHbone) whatever the family.
ListenerKind roleOf(ListenerKind k);
inline bool isIpv6(ListenerKind k) { return k >= ListenerKind::kOutbound6; }

class Listener {
 public:
  using Clock = std::chrono::steady_clock;
  class Handler {
   public:
    virtual void accepted(Listener& l, UniqueFd fd) = 0;
    // Accepting failed for lack of descriptors: free one if possible
    // (returns whether something was freed).
    virtual bool outOfDescriptors(Listener& l) = 0;
    // The listener waits to re-arm: call retry() from the fine tick.
    virtual void backingOff(Listener& l) = 0;

   protected:
    ~Handler() = default;
  };

  // Sets TCP_NODELAY on the socket (an accepted connection inherits it:
  // no setsockopt per connection) and reads its address once.
  Listener(WorkerContext& ctx, Handler& handler, UniqueFd fd, std::shared_ptr<PodState> pod,
           ListenerKind kind);
  void arm();
  // Re-arms when the backoff is over; returns whether it still waits.
  bool retry(Clock::time_point now);
  // Stops accepting; done() once the kernel gave the request back.
  void close();
  // Stops accepting without shutting the socket down (another process
  // accepts on it after an upgrade); a connection the kernel had already
  // accepted for this one, or that is still queued once the accept has
  // ended (see onAccept), is still handed to the handler; done() after
  // that. close() after it leaves the socket alone.
  void stopAccepting();
  int fd() const { return fd_.get(); }
  // From the worker's tick: the count of accept failures logged too seldom.
  void flushLog(Clock::time_point now) { log_.flush(now); }
  bool done() const { return closing_ && !accept_.busy(); }

  const std::shared_ptr<PodState>& pod() const { return pod_; }
  ListenerKind kind() const { return kind_; }
  // The listener's own address: the local address of every connection it
  // accepts, except on the transparent inbound listener (there the local
  // address is the original destination: ask the accepted socket).
  const sockaddr_storage& local() const { return local_; }
  socklen_t localLen() const { return local_len_; }

 private:
  void onAccept(const io_uring_cqe& cqe);
  WorkerContext& ctx_;
  Handler& handler_;
  UniqueFd fd_;
  std::shared_ptr<PodState> pod_;
  ListenerKind kind_;
  sockaddr_storage local_{};
  socklen_t local_len_ = 0;
  bool closing_ = false;
  bool shared_ = false;  // stopAccepting(): the socket is the successor's now
  bool swept_ = false;   // stopAccepting(): the queue is being taken (acceptNoWait)
  Clock::time_point retry_at_{};
  std::chrono::milliseconds backoff_{0};
  log::Limiter log_;
  uring::Op<&Listener::onAccept> accept_{this};
};

}  // namespace sluice::ztunnel::proxy
