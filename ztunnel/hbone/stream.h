// One HBONE stream: an app connection carried as one CONNECT stream of a
// tunnel. Two relay pipes around the app socket: app -> tunnel (a socket
// source pulled by the tunnel's DATA provider) and tunnel -> app (DATA
// chunks pushed into a socket sink). The stream owns its record and counts
// itself; it is abortable (the authorization hook can reset it later).
// Worker thread only.
#pragma once

#include <netinet/in.h>

#include <memory>
#include <string>

#include "sluice/common/unique_fd.h"
#include "ztunnel/hbone/tunnel.h"
#include "ztunnel/l7/inspector.h"
#include "ztunnel/proxy/attempt.h"
#include "ztunnel/proxy/context.h"
#include "ztunnel/proxy/records.h"
#include "ztunnel/relay/pipe.h"
#include "ztunnel/uring/ops.h"

namespace sluice::ztunnel::hbone {

class Stream;

// The client pool or the server side.
class StreamOwner {
 public:
  virtual void streamRequest(Stream&) {}  // server: the request headers are complete
  // Closed, nothing in flight, off its tunnel: free it (not from inside).
  virtual void streamFinished(Stream&) = 0;
  // One of this side's tunnels by Tunnel::id(); null once it is gone.
  virtual Tunnel* findTunnel(uint64_t id) = 0;

 protected:
  ~StreamOwner() = default;
};

class Stream final : public StreamEnd,
                     public relay::PipeOwner,
                     public proxy::Abortable,
                     public l7::RequestSink {
 public:
  // Counts itself active (and, server side, accepted) until it finishes.
  Stream(proxy::WorkerContext& ctx, StreamOwner& owner, Tunnel* tunnel,
         std::shared_ptr<proxy::PodState> pod, bool server);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // Registers the record (filled in by the caller) as open.
  void openRecord(std::shared_ptr<proxy::LiveRecord> live);
  // Server: its source's place among the pod's inbound connections, held
  // until the stream finishes.
  void holdShare(proxy::SourceShare share) { share_ = std::move(share); }
  proxy::LiveRecord* record() { return live_.get(); }

  // --- client ---
  // The app connection (its socket stays in the attempt until the stream
  // is done with it, so a Service attempt can move on to another endpoint).
  void setAttempt(std::unique_ptr<proxy::Attempt> attempt);
  proxy::Attempt* attempt() { return attempt_.get(); }
  bool isService() const { return attempt_ && attempt_->isService(); }
  // On a ready tunnel: the CONNECT goes out (false: it could not; failed).
  bool submit();
  void setTunnel(Tunnel* t) { tunnel_ = t; }  // the tunnel it waits for (or none)
  // Failed before or after its 200: before, with nothing sent, a Service
  // connection moves to another endpoint; anything else is reset.
  void fail(CloseReason reason, std::string detail = {});

  // --- server ---
  int32_t id() const { return id_; }
  void setId(int32_t id) {  // the request's stream, known to the tunnel
    id_ = id;
    h2_open_ = true;
  }
  // Connects to the app (sock made in the pod's netns), then answers 200.
  void connectApp(proxy::Upstream sock, const SockAddr& dst);
  // Answers `status` without a body, then RST_STREAM(NO_ERROR); closes.
  void refuse(int status, CloseReason reason, std::string detail = {});
  std::string method, authority, forwarded;  // the request
  std::string status;                        // client: the response status

  void close(bool reset, CloseReason reason, std::string detail = {}, bool retried = false);
  void abort(CloseReason reason, std::string detail = {}) override {
    close(true, reason, std::move(detail));
  }

  // About once a second: the app -> tunnel pipe's tick (relay::Pipe::tick):
  // stalled by the tunnel, it watches the app's socket for a reset; idle, it
  // gives its buffer back.
  void tick() {
    if (!closing_) up_.tick();
  }

  Tunnel* tunnel() const { return tunnel_; }
  const std::shared_ptr<proxy::PodState>& pod() const { return pod_; }
  bool closing() const { return closing_; }
  bool busy() const { return up_.busy() || down_.busy() || connect_.busy(); }
  bool finished() const { return finished_; }

  // StreamEnd
  void h2Header(std::string_view name, std::string_view value) override;
  void h2Headers() override;
  bool h2Data(const uint8_t* data, size_t len) override;
  void h2DataDone() override;
  void h2End() override;
  void h2Closed(uint32_t error_code) override;
  ssize_t h2Read(uint8_t* buf, size_t len, uint32_t* flags) override;
  std::string_view h2Pending() override { return up_.peek(); }
  char* h2Room(size_t n) override { return up_.roomBefore(n); }
  void h2Sent(size_t n) override { up_.drop(n); }
  void tunnelLost(const std::string& reason) override;
  void tunnelDetached() override;

  // PipeOwner
  void pipeMoved(relay::Pipe& p, size_t n) override;
  void pipeReadable(relay::Pipe& p) override;
  void pipeSent(relay::Pipe& p, size_t n) override;
  void pipeEnded(relay::Pipe& p) override;
  void pipeFailed(relay::Pipe& p, int err, bool sending) override;
  void pipeIdle(relay::Pipe& p) override;
  bool pipeSinkClosesNext(const relay::Pipe& p) const override;

  // l7::RequestSink
  void l7Request(const RequestRecord& r) override;

 private:
  int appFd() const;
  void start();  // both pipes
  void onConnected(int res);
  void maybeFinish();
  bool attached() const { return tunnel_ && h2_open_; }
  // Opens the tunnel's window for up to n of the bytes taken from it.
  void giveBack(size_t n);
  // Client, Service: copies what the app has sent so far (up to
  // proxy::kPeekMax) without taking it from the socket.
  void peekFirstBytes();

  proxy::WorkerContext& ctx_;
  StreamOwner& owner_;
  Tunnel* tunnel_;  // null once the tunnel is gone
  std::shared_ptr<proxy::PodState> pod_;
  bool server_;
  int32_t id_ = -1;
  bool h2_open_ = false;      // nghttp2 knows the stream (so it may call back with it)
  bool established_ = false;  // 200 sent / received
  bool started_ = false;      // the pipes run
  bool down_eof_ = false;     // the peer's END_STREAM
  bool up_done_ = false;      // our END_STREAM went out
  bool rst_sent_ = false;     // RST_STREAM submitted
  bool reset_ = false;        // the app's socket closes with RST, else orderly
  bool closing_ = false, finished_ = false;
  // DATA taken from the tunnel whose window is not open again yet: given
  // back as the app takes it, also after nghttp2 forgot the stream (to the
  // connection: the tunnel is found again by id, `forgotten_by_`), and all
  // of it when the stream closes. nghttp2 never gives a forgotten stream's
  // bytes back to the connection: without this, bytes still on their way
  // to the app, or dropped, would shrink the tunnel's window for good.
  size_t unconsumed_ = 0;
  uint64_t forgotten_by_ = 0;  // the tunnel's id once nghttp2 forgot the stream
  // DATA that came before the pipes run (server: before the app is
  // connected, from a client that sends with its CONNECT): pushed, after
  // the inspector is attached, when they start. At most the stream window.
  std::string early_;
  // Client, Service: the app's first bytes, copied at the CONNECT and sent
  // before the 200 while they stay in the socket (a retry finds them
  // there). Once the pipes run, up_ reads them again: the first
  // peeked_skip_ bytes it reads are dropped, not sent twice.
  std::string peeked_;
  size_t peeked_sent_ = 0;
  size_t peeked_skip_ = 0;
  // Some of them went out and the server has not said it took none (a
  // refusal, REFUSED_STREAM): the attempt is not retried elsewhere.
  bool peeked_out_ = false;
  // Client: the app's bytes that went out behind the CONNECT before its
  // answer. Counted (record, metrics) at the 200; a refused CONNECT
  // delivered none of them, so they never are.
  uint64_t unanswered_sent_ = 0;
  proxy::SourceShare share_;
  std::shared_ptr<proxy::LiveRecord> live_;
  CloseReason reason_ = CloseReason::kNone;
  std::string detail_;
  bool retried_ = false;
  std::unique_ptr<proxy::Attempt> attempt_;  // client
  UniqueFd app_;                             // server: the socket to the app
  SockAddr dst_;                             // server: the app address
  relay::Pipe up_;                           // app -> tunnel
  relay::Pipe down_;                         // tunnel -> app
  // HTTP inspection of the app's bytes (client side: up_ carries the
  // client's; server side: down_ does); null: bytes only.
  std::unique_ptr<l7::Inspector> l7_;
  uring::Connect<&Stream::onConnected> connect_{this};
};

}  // namespace sluice::ztunnel::hbone
