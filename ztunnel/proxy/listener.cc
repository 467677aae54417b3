#include "ztunnel/proxy/listener.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "sluice/common/log.h"

namespace sluice::ztunnel::proxy {

const char* toString(ListenerKind k) {
  switch (k) {
    case ListenerKind::kOutbound:
      return "outbound";
    case ListenerKind::kInbound:
      return "inbound";
    case ListenerKind::kHbone:
      return "hbone";
    case ListenerKind::kOutbound6:
      return "outbound6";
    case ListenerKind::kInbound6:
      return "inbound6";
    case ListenerKind::kHbone6:
      return "hbone6";
  }
  return "?";
}

std::optional<ListenerKind> listenerKindOf(std::string_view name) {
  for (auto k : {ListenerKind::kOutbound, ListenerKind::kInbound, ListenerKind::kHbone,
                 ListenerKind::kOutbound6, ListenerKind::kInbound6, ListenerKind::kHbone6})
    if (name == toString(k)) return k;
  return std::nullopt;
}

ListenerKind roleOf(ListenerKind k) {
  switch (k) {
    case ListenerKind::kOutbound6:
      return ListenerKind::kOutbound;
    case ListenerKind::kInbound6:
      return ListenerKind::kInbound;
    case ListenerKind::kHbone6:
      return ListenerKind::kHbone;
    default:
      return k;
  }
}

Listener::Listener(WorkerContext& ctx, Handler& handler, UniqueFd fd, std::shared_ptr<PodState> pod,
                   ListenerKind kind)
    : ctx_(ctx), handler_(handler), fd_(std::move(fd)), pod_(std::move(pod)), kind_(kind) {
  // inpod::listenIn sets it too; a listener handed over by an upgrade gets
  // it here whatever its predecessor did.
  int one = 1;
  setsockopt(fd_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  // No linger on the listener itself: it is shared with another agent
  // version during an upgrade or a rollback, whose accepted sockets would
  // inherit it (and an older agent never turns it off). An earlier build
  // of this one set it here: cleared. Each accepted app connection gets it
  // instead (Worker::accepted).
  linger none{0, 0};
  setsockopt(fd_.get(), SOL_SOCKET, SO_LINGER, &none, sizeof(none));
  local_len_ = sizeof(local_);
  if (getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&local_), &local_len_) != 0)
    local_len_ = 0;  // family AF_UNSPEC: no original destination is found
}

void Listener::arm() {
  if (closing_ || accept_.busy()) return;
  accept_.acceptMultishot(ctx_.ring, fd_.get());
}

bool Listener::retry(Clock::time_point now) {
  if (closing_ || accept_.busy() || retry_at_ == Clock::time_point{}) return false;
  if (now < retry_at_) return true;
  retry_at_ = {};
  arm();
  return false;
}

void Listener::stopAccepting() {
  if (closing_) return;
  closing_ = true;
  shared_ = true;
  if (accept_.busy()) ctx_.ring.cancelFd(fd_.get());
}

void Listener::close() {
  if (closing_) return;
  closing_ = true;
  // shutdown() on a listening socket fails the pending accept, which ends
  // the multishot request (a listener backing off has none).
  ::shutdown(fd_.get(), SHUT_RDWR);
}

void Listener::onAccept(const io_uring_cqe& cqe) {
  if (cqe.res >= 0) {
    backoff_ = std::chrono::milliseconds(0);
    UniqueFd fd(cqe.res);
    if (!closing_ || shared_) handler_.accepted(*this, std::move(fd));
  } else if (cqe.res != -ECANCELED && cqe.res != -EINVAL && !closing_) {
    ctx_.counters().add(Counter::kAcceptErrors);
    int err = -cqe.res;
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
      // Out of descriptors or memory: the connection stays in the backlog, so
      // an immediate re-arm fails again at once (a busy loop). Free what can
      // be freed (a pending handshake) and come back later.
      backoff_ =
          std::clamp(backoff_ * 2, std::chrono::milliseconds(10), std::chrono::milliseconds(1000));
      retry_at_ = Clock::now() + backoff_;
      bool freed = handler_.outOfDescriptors(*this);
      SLUICE_LOG_LIMITED(log_, log::get("ztunnel"), spdlog::level::warn,
                         "accept on {} listener of {} failed: {}; {}retrying in {} ms (raise the "
                         "agent's RLIMIT_NOFILE if this is legitimate load)",
                         toString(kind_), pod_->spec.name_namespace, std::strerror(err),
                         freed ? "closed the oldest pending handshake, " : "", backoff_.count());
    } else {
      SLUICE_LOG_LIMITED(log_, log::get("ztunnel"), spdlog::level::warn,
                         "accept on {} listener of {} failed: {}", toString(kind_),
                         pod_->spec.name_namespace, std::strerror(err));
    }
  }
  if (accept_.busy()) return;  // more to come
  if (shared_) {
    // The multishot accept waited as an exclusive waiter on the socket
    // (io_uring arms accept polls EPOLLEXCLUSIVE, like the successor's):
    // a connection's wakeup goes to one waiter only. When it went to this
    // one just before the cancel removed it, nothing accepted that
    // connection and the successor is never woken for it: it sits in the
    // queue until another connection arrives (a client connecting one at a
    // time waits for ever). So take what is queued now, without waiting;
    // once this waiter is gone, every new connection wakes the successor.
    if (cqe.res >= 0 || (cqe.res == -ECANCELED && !swept_)) {
      swept_ = true;
      accept_.acceptNoWait(ctx_.ring, fd_.get());
    }
    return;
  }
  if (closing_) return;  // done
  if (retry_at_ > Clock::now()) {
    handler_.backingOff(*this);
    return;
  }
  arm();
}

}  // namespace sluice::ztunnel::proxy
