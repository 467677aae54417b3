// One direction of a relay: bytes from a source to a sink, with
// backpressure (at most one buffer ahead of the sink), half-close (the
// source's EOF becomes shutdown(SHUT_WR) or END_STREAM at the sink) and
// error reporting (a failed recv or send goes to the owner, which resets).
//
// Source: a socket (read through the ring) or pushed by the owner (HTTP/2
// DATA of an HBONE stream). Sink: a socket (written through the ring) or
// pulled by the owner (HTTP/2 DATA it produces). A plaintext connection is
// two socket->socket pipes; an HBONE stream is a socket->pulled pipe
// (app -> tunnel) and a pushed->socket pipe (tunnel -> app).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "ztunnel/uring/ops.h"

namespace sluice::ztunnel::relay {

class Pipe;

// The size of a receive buffer for the next receive, after one that
// brought `got` bytes into `size`: doubled (up to `most`) when it filled
// the buffer, else unchanged. (A partial read says nothing of the bulk
// being over: a receive takes what has arrived so far.)
constexpr size_t nextBufferSize(size_t size, size_t got, size_t most) {
  return got < size ? size : std::max(size, std::min(2 * size, most));
}

// Whether a receive has waited a whole tick with nothing coming (an idle
// source, whose buffer can go), for an owner that keeps one receive in
// flight and ticks about once a second: it cancels that receive
// (Ring::cancel) when idleAtTick() says so, and frees its buffer and polls
// instead when the completion is the cancel's (parked()). relay::Pipe and
// hbone::Tunnel.
class IdleReceive {
 public:
  void posted() { ++recvs_; }  // a receive went out
  // At a tick: true when `receiving` (a receive in flight, nothing held)
  // and it is the one posted before the previous tick (none since), so not
  // a fresh connection's first receive or one just posted. Asked again at
  // each idle tick until the cancel's completion comes.
  bool idleAtTick(bool receiving) {
    bool idle = receiving && recvs_ == recvs_at_tick_;
    recvs_at_tick_ = recvs_;
    parking_ = parking_ || idle;
    return idle;
  }
  // At the receive's completion: true when it is the cancel's (park now);
  // one that brought bytes first ends the parking.
  bool parked(int res) { return std::exchange(parking_, false) && uring::Ring::cancelled(res); }

 private:
  uint64_t recvs_ = 0, recvs_at_tick_ = 0;
  bool parking_ = false;
};

// Sees the bytes a pipe moves as they arrive, before they are passed on
// (HTTP inspection). It can neither change nor hold them. Returning false
// ends the tapping: the pipe stops calling. Worker thread only.
class Tap {
 public:
  virtual bool tapped(const Pipe& p, const char* data, size_t n) = 0;
  virtual void tapEnded(const Pipe& p) = 0;  // the source's EOF

 protected:
  ~Tap() = default;
};

// Worker thread only. Calls come from ring completions (never from inside a
// Pipe method the owner called, except pipeMoved from push()).
class PipeOwner {
 public:
  virtual void pipeMoved(Pipe& p, size_t n) = 0;  // n more bytes came from the source
  virtual void pipeReadable(Pipe&) {}             // pulled sink: bytes or EOF to pull
  virtual void pipeSent(Pipe&, size_t) {}         // socket sink: bytes written
  virtual void pipeEnded(Pipe& p) = 0;            // EOF reached the sink (shutdown done)
  virtual void pipeFailed(Pipe& p, int err, bool sending) = 0;  // -errno of recv or send
  virtual void pipeIdle(Pipe&) {}  // stopped, and its last request just completed
  // Whether the owner closes the sink's socket right after this pipe's EOF
  // reaches it (the socket's other direction is over): then that close
  // sends the FIN, and the pipe skips shutdown(2) (a system call per
  // connection) and reports pipeEnded at once.
  virtual bool pipeSinkClosesNext(const Pipe&) const { return false; }

 protected:
  ~PipeOwner() = default;
};

class Pipe {
 public:
  // source_fd < 0: the owner pushes; sink_fd < 0: the owner pulls.
  // A socket source reads into a buffer of buffer_bytes; each read that
  // fills it doubles it for the next one, up to grow_to_bytes
  // (nextBufferSize): a bulk transfer moves in fewer, larger reads and
  // sends (fewer system calls and wake-ups per byte), while a
  // request/response connection, whose reads never fill it, keeps the
  // small one. A source idle for a tick gives its buffer back (tick()).
  Pipe(uring::Ring& ring, PipeOwner& owner, size_t buffer_bytes, size_t grow_to_bytes = 0);
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;

  // Starts moving bytes (the fds stay owned by the caller and outlive the
  // pipe's requests: cancel them and wait for !busy() before closing).
  void start(int source_fd, int sink_fd);
  // Shows every chunk read from the source to `tap` from now on (null: none).
  void setTap(Tap* tap) { tap_ = tap; }
  // No new requests from now on (the connection is closing).
  void stop() { stopped_ = true; }
  // An upgrade (socket -> socket only): no new requests, but what a request
  // still in flight delivers is kept (a receive's bytes, a send's progress)
  // instead of dropped. The owner cancels the fds; once !busy(), pending(),
  // sourceEnded() and sinkDone() are the state to hand over, and
  // frozenError() says whether the freeze met an error (-errno; 0: clean).
  void freeze() { stopped_ = frozen_ = true; }
  std::string pending() const;
  bool sourceEnded() const { return eof_; }
  int frozenError() const { return frozen_error_; }
  // Starts a socket -> socket pipe that continues a frozen one: `pending`
  // is written first; `eof`: the source has ended (shut the sink down after
  // it, unless `sink_done` says that happened already).
  void resume(int source_fd, int sink_fd, std::string pending, bool eof, bool sink_done);

  // About once a second (the owner's tick):
  // - While bytes wait for the sink, no receive is posted on the source
  //   (backpressure), so nothing would notice its peer resetting: a client
  //   that gives up on a server which neither reads nor writes would leave
  //   the connection open for good. A pipe whose bytes waited at the
  //   previous call and whose sink has taken none since watches its source
  //   for an error (one poll, kept until the connection ends; once the
  //   source's FIN is in, a read of its error at each call); a reset reaches
  //   the owner as pipeFailed(-errno, sending false) from a ring completion.
  // - A socket source whose receive has been in flight since the previous
  //   call (the same one: a whole tick without a byte), with nothing
  //   buffered, is idle: its receive is cancelled, its buffer freed
  //   and a poll waits for the source instead; the next bytes (or its EOF
  //   or error) post a receive into a new buffer of the first size. An idle
  //   connection holds no relay buffer, whatever size a bulk moment grew it
  //   to, and the bytes move as before: a receive that completes before its
  //   cancel keeps its bytes.
  void tick();
  bool watching() const { return watch_.busy(); }

  // Pushed source: bytes to write (copied) and the end of them. `send`
  // false: more bytes follow at once, so they wait for flush() (or the
  // next push or pushEnd) and go out in one send with them.
  void push(const char* data, size_t n, bool send = true);
  void flush() { pump(); }
  void pushEnd();
  // Pulled sink: copies up to n bytes out. Returns 0 when nothing is there;
  // ended() then tells whether that is the end.
  size_t pull(char* out, size_t n);
  // Pulled sink without a copy: the bytes buffered (contiguous; they stay
  // put until dropped), then drop(n) once n of them are taken.
  std::string_view peek() const;
  void drop(size_t n);
  // Pulled sink: the n bytes (n <= kRoom) just before peek()'s, which the
  // pipe no longer needs: the owner may write there (an HTTP/2 frame header
  // in front of its payload, sent with it in one TLS record). Null when
  // nothing is buffered. Valid until the next drop().
  static constexpr size_t kRoom = 16;
  char* roomBefore(size_t n);
  size_t available() const;
  bool ended() const { return eof_ && available() == 0; }  // source done, all taken

  size_t capacity() const { return cap_; }  // the socket source's buffer now
  bool started() const { return started_; }
  bool sinkDone() const { return shut_done_; }  // socket sink: EOF propagated
  bool busy() const {
    return recv_.busy() || send_.busy() || shut_.busy() || watch_.busy() || park_.busy();
  }
  // The receive buffer's bytes this pipe holds now (0: none, an idle or
  // ended source).
  size_t bufferBytes() const { return buf_ ? cap_ : 0; }
  uint64_t bytes() const { return bytes_; }  // read from the source so far

 private:
  void pump();
  void onRecv(const io_uring_cqe& cqe);
  void onSend(const io_uring_cqe& cqe);
  void onShutdown(const io_uring_cqe& cqe);
  void onWatch(const io_uring_cqe& cqe);
  void onPark(const io_uring_cqe& cqe);
  void tapEnd();
  void settle();  // stopped: tells the owner once nothing is in flight

  uring::Ring& ring_;
  PipeOwner& owner_;
  size_t first_cap_;  // the buffer's size at first, and after an idle spell
  size_t cap_;
  size_t grow_to_;   // cap_ may double up to this (nextBufferSize)
  size_t next_cap_;  // for the next read, once the buffer is empty
  int src_ = -1, dst_ = -1;
  bool started_ = false, stopped_ = false, frozen_ = false;
  int frozen_error_ = 0;
  bool eof_ = false, shut_done_ = false;
  uint64_t bytes_ = 0;
  uint64_t taken_ = 0;  // bytes the sink took from the buffer (sent or dropped)
  // tick(): whether bytes waited, and taken_, at the last call; the
  // source's FIN (or hang-up) is in: a poll would complete again at once,
  // so the socket's error is read at each call instead, and one found is
  // reported through a deferred completion (later_error_, -errno).
  bool waited_at_check_ = false, source_fin_ = false;
  uint64_t taken_at_check_ = 0;
  int later_error_ = 0;
  IdleReceive idle_;  // tick(): an idle source's receive cancelled, its buffer freed
  Tap* tap_ = nullptr;
  // Socket source: one buffer, read into when empty, drained by the sink.
  std::unique_ptr<char[]> buf_;  // kRoom bytes, then the cap_ bytes of the buffer
  char* data() const { return buf_.get() + kRoom; }
  size_t len_ = 0, off_ = 0;
  // Pushed source: queued while a send of `sending_` is in flight.
  std::string queue_, sending_;
  size_t sending_off_ = 0;
  uring::Op<&Pipe::onRecv> recv_{this};
  uring::Op<&Pipe::onSend> send_{this};
  uring::Op<&Pipe::onShutdown> shut_{this};
  uring::Op<&Pipe::onWatch> watch_{this};  // an error poll on a stalled source
  uring::Op<&Pipe::onPark> park_{this};    // a poll on an idle source, no buffer
};

}  // namespace sluice::ztunnel::relay
