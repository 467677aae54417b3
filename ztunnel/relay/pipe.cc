#include "ztunnel/relay/pipe.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

namespace sluice::ztunnel::relay {

Pipe::Pipe(uring::Ring& ring, PipeOwner& owner, size_t buffer_bytes, size_t grow_to_bytes)
    : ring_(ring),
      owner_(owner),
      first_cap_(std::max<size_t>(buffer_bytes, 1024)),
      cap_(first_cap_),
      grow_to_(std::max(cap_, grow_to_bytes)),
      next_cap_(cap_) {}

void Pipe::start(int source_fd, int sink_fd) {
  src_ = source_fd;
  dst_ = sink_fd;
  started_ = true;
  pump();
}

std::string Pipe::pending() const {
  if (src_ < 0 || !buf_ || len_ <= off_) return {};
  return std::string(data() + off_, len_ - off_);
}

void Pipe::resume(int source_fd, int sink_fd, std::string pending, bool eof, bool sink_done) {
  cap_ = std::max(cap_, pending.size());
  if (!pending.empty()) {
    buf_.reset(new char[kRoom + cap_]);
    std::memcpy(data(), pending.data(), pending.size());
    len_ = pending.size();
    off_ = 0;
  }
  eof_ = eof;
  shut_done_ = sink_done;
  start(source_fd, sink_fd);
}

size_t Pipe::available() const {
  return src_ >= 0 ? len_ - off_ : (sending_.size() - sending_off_) + queue_.size();
}

void Pipe::push(const char* data, size_t n, bool send) {
  if (eof_) return;
  if (tap_ && !tap_->tapped(*this, data, n)) tap_ = nullptr;
  queue_.append(data, n);
  bytes_ += n;
  owner_.pipeMoved(*this, n);
  if (send) pump();
}

void Pipe::pushEnd() {
  if (!eof_) tapEnd();
  eof_ = true;
  pump();
}

size_t Pipe::pull(char* out, size_t n) {
  size_t k = std::min(n, len_ - off_);
  if (k == 0) return 0;
  std::memcpy(out, data() + off_, k);
  drop(k);
  return k;
}

std::string_view Pipe::peek() const {
  return len_ > off_ ? std::string_view(data() + off_, len_ - off_) : std::string_view();
}

char* Pipe::roomBefore(size_t n) {
  // Before the first byte: kRoom bytes allocated for this, else bytes taken.
  return n <= kRoom && len_ > off_ ? data() + off_ - n : nullptr;
}

void Pipe::drop(size_t n) {
  n = std::min(n, len_ - off_);
  off_ += n;
  taken_ += n;
  if (off_ == len_) {
    len_ = off_ = 0;
    pump();  // room again: read more
  }
}

// One step: write what is buffered, else propagate EOF, else read more. At
// most one receive and one send are in flight, so a slow sink stops reads
// from the source (backpressure) and the buffer bounds memory.
void Pipe::pump() {
  if (!started_ || stopped_) return;
  if (dst_ >= 0) {  // socket sink
    if (send_.busy() || shut_.busy() || shut_done_) return;
    if (src_ >= 0 && len_ > off_) {
      send_.send(ring_, dst_, data() + off_, len_ - off_);
      return;
    }
    if (src_ < 0) {
      if (sending_off_ >= sending_.size()) {
        sending_.clear();
        sending_off_ = 0;
        std::swap(sending_, queue_);
      }
      if (!sending_.empty()) {
        send_.send(ring_, dst_, sending_.data() + sending_off_, sending_.size() - sending_off_);
        return;
      }
    }
    if (eof_) {
      if (owner_.pipeSinkClosesNext(*this))
        shut_.soon(ring_);
      else
        shut_.shutdown(ring_, dst_, SHUT_WR);
      return;
    }
  }
  if (src_ >= 0 && !recv_.busy() && !park_.busy() && !eof_ && len_ == off_) {
    if (next_cap_ != cap_) {  // empty, nothing in flight: the buffer is ours to replace
      cap_ = next_cap_;
      buf_.reset();
    }
    if (!buf_) buf_.reset(new char[kRoom + cap_]);
    recv_.recv(ring_, src_, data(), cap_);
    idle_.posted();
  }
}

namespace {
// A source socket's pending error (-errno, and cleared), or 0. A reset
// after the peer's FIN (the socket in CLOSE_WAIT) is recorded as EPIPE:
// for a source that is the peer's reset all the same.
int takeSocketError(int fd) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return 0;
  return err == EPIPE ? -ECONNRESET : -err;
}
}  // namespace

void Pipe::tick() {
  // An idle source: its receive is cancelled, and its completion (onRecv)
  // parks the pipe.
  if (idle_.idleAtTick(started_ && !stopped_ && src_ >= 0 && !eof_ && len_ == off_ && recv_.busy()))
    ring_.cancel(&recv_);
  bool waiting = started_ && !stopped_ && src_ >= 0 && !eof_ && len_ > off_ && !recv_.busy();
  bool stalled = waiting && waited_at_check_ && taken_ == taken_at_check_;
  waited_at_check_ = waiting;
  taken_at_check_ = taken_;
  if (!stalled || watch_.busy()) return;
  if (!source_fin_) return watch_.pollError(ring_, src_);
  // The source's FIN is in, behind the bytes waiting: a poll would complete
  // again at once, so its error is read here instead (a reset after a
  // half-close), and reported from the ring like any failure.
  if (int err = takeSocketError(src_)) {
    later_error_ = err;
    watch_.soon(ring_);
  }
}

void Pipe::onPark(const io_uring_cqe& cqe) {
  if (frozen_ || stopped_) return settle();
  // Readable, ended or failed (the receive tells which), or the poll was
  // refused (a full ring): either way a receive goes out again.
  (void)cqe;
  pump();
}

void Pipe::onWatch(const io_uring_cqe& cqe) {
  if (frozen_) {
    // An error that came as the freeze began: the successor would take
    // the connection as clean.
    if (!frozen_error_ && cqe.res > 0 && (cqe.res & POLLERR)) frozen_error_ = takeSocketError(src_);
    if (!frozen_error_ && cqe.res == 0) frozen_error_ = later_error_;
    return settle();
  }
  if (stopped_) return settle();
  if (cqe.res == 0 && later_error_) return owner_.pipeFailed(*this, later_error_, false);
  if (cqe.res < 0) return;  // not armed (a full ring): the next tick tries again
  if (cqe.res & POLLERR) {
    if (int err = takeSocketError(src_)) return owner_.pipeFailed(*this, err, false);
  }
  // The poll also completes on POLLRDHUP (io_uring always asks for it: the
  // source's FIN) and POLLHUP (both directions shut), and on POLLERR from
  // an error queue without a socket error: states that stay, so it is not
  // armed again; the next ticks read the socket's error instead.
  source_fin_ = true;
}

void Pipe::tapEnd() {
  if (!tap_) return;
  tap_->tapEnded(*this);
  tap_ = nullptr;
}

void Pipe::settle() {
  if (!busy()) owner_.pipeIdle(*this);
}

void Pipe::onRecv(const io_uring_cqe& cqe) {
  if (frozen_) {
    // Bytes that arrived before the cancel are kept for the successor.
    if (cqe.res > 0) {
      len_ = static_cast<size_t>(cqe.res);
      off_ = 0;
      bytes_ += len_;
      owner_.pipeMoved(*this, len_);
    } else if (cqe.res == 0) {
      eof_ = true;
    } else if (!uring::Ring::cancelled(cqe.res) && !frozen_error_) {
      frozen_error_ = cqe.res;
    }
    return settle();
  }
  if (stopped_) return settle();
  if (idle_.parked(cqe.res)) {
    // Idle: no buffer until the source has something for us.
    buf_.reset();
    cap_ = next_cap_ = first_cap_;
    return park_.pollIn(ring_, src_);
  }
  if (cqe.res > 0) {
    len_ = static_cast<size_t>(cqe.res);
    off_ = 0;
    bytes_ += len_;
    next_cap_ = nextBufferSize(cap_, len_, grow_to_);
    if (tap_ && !tap_->tapped(*this, data(), len_)) tap_ = nullptr;
    owner_.pipeMoved(*this, len_);
  } else if (cqe.res == 0) {
    tapEnd();
    eof_ = true;
    buf_.reset();  // an idle half-closed connection keeps no buffer
  } else {
    owner_.pipeFailed(*this, cqe.res, false);
    return;
  }
  if (dst_ < 0)
    owner_.pipeReadable(*this);
  else
    pump();
}

void Pipe::onSend(const io_uring_cqe& cqe) {
  if (frozen_) {
    // A cancelled send wrote nothing; a completed one (maybe partly) counts.
    if (cqe.res > 0) {
      off_ += static_cast<size_t>(cqe.res);
      if (off_ >= len_) len_ = off_ = 0;
    } else if (!uring::Ring::cancelled(cqe.res) && !frozen_error_) {
      frozen_error_ = cqe.res == 0 ? -EPIPE : cqe.res;
    }
    return settle();
  }
  if (stopped_) return settle();
  if (cqe.res <= 0) {
    owner_.pipeFailed(*this, cqe.res == 0 ? -EPIPE : cqe.res, true);
    return;
  }
  auto n = static_cast<size_t>(cqe.res);
  taken_ += n;
  if (src_ >= 0) {
    off_ += n;
    if (off_ >= len_) len_ = off_ = 0;
  } else {
    sending_off_ += n;
  }
  owner_.pipeSent(*this, n);
  pump();
}

void Pipe::onShutdown(const io_uring_cqe&) {
  // shutdown(2) was called when the request was made (uring::Op::shutdown),
  // or skipped for the owner's close (pipeSinkClosesNext): done, even for a
  // frozen pipe, whose successor then does not do it again.
  shut_done_ = true;
  if (stopped_) return settle();
  owner_.pipeEnded(*this);
}

}  // namespace sluice::ztunnel::relay
