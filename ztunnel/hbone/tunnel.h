// One HBONE tunnel: a TCP connection carrying HTTP/2 over mutual TLS 1.3,
// driven by the worker's ring. Per tunnel:
//
//   socket <-ring recv/send-> ciphertext <-SSL (the tunnel's own BIO)->
//   plaintext <-nghttp2 (mem_recv / mem_send)-> streams (StreamEnd)
//
// Bulk bytes are copied as little as the layers allow: TLS reads ciphertext
// straight from the receive buffer and writes it straight into the send
// buffer (no memory BIO in between), and a large DATA frame goes from the
// stream's relay buffer into SSL_write without nghttp2 copying it
// (NGHTTP2_DATA_FLAG_NO_COPY). Frames of up to kMaxFrameSize; the small
// frames of one round are written with one SSL_write.
//
// The tunnel owns its socket, SSL and HTTP/2 session (freed by RAII when the
// tunnel is) and its ring operations; it checks the peer's identity, keeps
// itself alive (PING) and bounded (handshake deadline, idle close), and
// reports to its owner (the client pool or the server side) through
// TunnelOwner. Streams see it through StreamEnd. Worker thread only.
#pragma once

#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include <array>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/common/log_limiter.h"
#include "sluice/common/unique_fd.h"
#include "sluice/ztunnel/engine.h"
#include "ztunnel/proxy/context.h"
#include "ztunnel/relay/pipe.h"
#include "ztunnel/tls/tls.h"
#include "ztunnel/uring/ops.h"

namespace sluice::ztunnel::hbone {

using Clock = std::chrono::steady_clock;
class Tunnel;

// One HTTP/2 stream as its tunnel sees it (implemented by Stream). Calls
// come from inside nghttp2 (so they may not call Tunnel::progress()
// themselves: the tunnel runs again after the callback) or from close().
class StreamEnd {
 public:
  virtual void h2Header(std::string_view name, std::string_view value) = 0;
  virtual void h2Headers() = 0;  // the request (server) or response (client) is complete
  // A DATA chunk; false: not taken (the tunnel gives the window back).
  // The chunks of one receive come one after another (a TLS record each);
  // h2DataDone() follows the last of them: pass them on together.
  virtual bool h2Data(const uint8_t* data, size_t len) = 0;
  virtual void h2DataDone() = 0;
  virtual void h2End() = 0;                        // the peer's END_STREAM
  virtual void h2Closed(uint32_t error_code) = 0;  // nghttp2 and the tunnel forgot the stream
  // DATA to send: bytes, 0 with NGHTTP2_DATA_FLAG_EOF, or NGHTTP2_ERR_DEFERRED;
  // or (at least kNoCopyMin bytes buffered) a length with
  // NGHTTP2_DATA_FLAG_NO_COPY: the tunnel then takes that many bytes from
  // h2Pending() and says h2Sent() once TLS has them.
  virtual ssize_t h2Read(uint8_t* buf, size_t len, uint32_t* flags) = 0;
  virtual std::string_view h2Pending() = 0;
  // n bytes just before h2Pending()'s that the tunnel may write (the DATA
  // frame's header, so that it goes with its payload in one TLS record),
  // or null.
  virtual char* h2Room(size_t n) = 0;
  virtual void h2Sent(size_t n) = 0;
  // The tunnel is closing under the stream (reason: why): it must end.
  virtual void tunnelLost(const std::string& reason) = 0;
  // The tunnel is closed and forgot the stream.
  virtual void tunnelDetached() = 0;

 protected:
  ~StreamEnd() = default;
};

// The client pool or the server side, per tunnel.
class TunnelOwner {
 public:
  // Client: the connect failed (-errno, -ETIMEDOUT): redial() or close().
  virtual void tunnelDialFailed(Tunnel&, int) {}
  // Server: the first bytes arrived; the pod's certificate, or null while
  // it has none (the owner calls startTls() once it comes).
  virtual std::shared_ptr<const WorkloadCredential> tunnelCredential(Tunnel&) { return nullptr; }
  // Server: a request begins on stream `id`; the end that takes it (or null: reset).
  virtual StreamEnd* tunnelRequest(Tunnel&, int32_t) { return nullptr; }
  virtual void tunnelReady(Tunnel&) {}       // HTTP/2 is up: requests may go out
  virtual void tunnelDraining(Tunnel&) {}    // no new streams here (GOAWAY, closing)
  virtual void tunnelClosing(Tunnel&) = 0;   // closes (once): forget it, fail what waits on it
  virtual void tunnelFinished(Tunnel&) = 0;  // closed and idle: free it (not from inside)

 protected:
  ~TunnelOwner() = default;
};

// What the tunnels of one side of a worker share.
struct TunnelEnv {
  TunnelEnv(proxy::WorkerContext& c, tls::Contexts& t) : ctx(c), tls(t) {}
  proxy::WorkerContext& ctx;
  tls::Contexts& tls;
  // One limiter per kind of line, so a flood of one kind hides no other.
  log::Limiter peer_log, handshake_log, timeout_log;
  std::array<uint8_t, 16384> plain{};  // SSL_read scratch
};

class Tunnel {
 public:
  // HTTP/2 DATA frames up to this size (SETTINGS_MAX_FRAME_SIZE, both
  // ways; 16 KiB is the protocol's default).
  static constexpr uint32_t kMaxFrameSize = 64 * 1024;
  // A TLS record's most plaintext: a DATA frame's payload is sized so that
  // with its 9-byte header it fills whole records.
  static constexpr uint32_t kRecordSize = 16 * 1024;
  static constexpr size_t kFrameHeader = 9;  // an HTTP/2 frame's header
  // The DATA payload to offer when at most `most` may go (the peer's
  // largest frame, the flow-control windows): at most kMaxFrameSize, and,
  // where that leaves one, a length whose frame (its 9-byte header
  // included) fills whole TLS records.
  static size_t frameLength(uint32_t most);
  // DATA at least this large goes from the stream's buffer straight to TLS.
  static constexpr size_t kNoCopyMin = 4096;

  // kAccepted: server side before TLS starts (no bytes yet, or no
  // certificate for the pod yet); nothing large is allocated until then.
  enum class State : uint8_t { kConnecting, kAccepted, kHandshaking, kReady, kClosed };

  Tunnel(TunnelEnv& env, TunnelOwner& owner, bool server, std::shared_ptr<proxy::PodState> pod,
         const SockAddr& remote);
  ~Tunnel();
  Tunnel(const Tunnel&) = delete;
  Tunnel& operator=(const Tunnel&) = delete;

  // Client: connects fd to remote (connect_timeout), then TLS presenting
  // cred; the peer must prove expected_peer.
  void dial(UniqueFd fd, std::shared_ptr<const WorkloadCredential> cred, std::string expected_peer);
  void redial(UniqueFd fd);  // after tunnelDialFailed
  // Server: an accepted connection; TLS starts with the first bytes.
  void accept(UniqueFd fd);
  void startTls(std::shared_ptr<const WorkloadCredential> cred);  // server, after a wait

  // Client: a CONNECT on a ready tunnel; the stream id, or < 0 (nghttp2 error).
  int32_t request(StreamEnd& s, const std::string& authority, const std::string& forwarded);
  // Server: the response; refuse: no body, then RST_STREAM(NO_ERROR) after it.
  void respond(int32_t id, int status, bool refuse);
  void resume(int32_t id);  // the stream has DATA to send again
  // n bytes of it were delivered: open the window (the connection's only,
  // once nghttp2 forgot the stream)
  void consume(int32_t id, size_t n);
  void reset(int32_t id, uint32_t error_code);
  // A protocol violation: GOAWAY(code) now, then close once it is written.
  void terminate(uint32_t error_code, const std::string& reason);
  void drain();  // no new streams (a renewed certificate)
  // An upgrade: the peer is told to open new streams elsewhere (GOAWAY; a
  // server sends the shutdown notice, so CONNECTs already on their way are
  // still served), the streams here finish, and the tunnel closes once they
  // have but not before kGoAwayGrace (the final GOAWAY then refuses nothing).
  void goAway();
  static constexpr std::chrono::seconds kGoAwayGrace{2};
  void gracefulClose(const std::string& reason);  // GOAWAY, then close
  void close(const std::string& reason);          // resets the streams
  // Resets the connection and frees its descriptor at once (a flood's
  // eviction: the bound on descriptors must hold between ring rounds).
  void abortNow(const std::string& reason);
  // Runs TLS and HTTP/2 as far as the bytes at hand allow, then writes.
  void progress();
  // progress() once the ring's current round of completions is dispatched:
  // what the streams produced in one round goes out in one SSL_write and
  // one send, not a TLS record and a send each.
  void progressSoon();
  // About once a second: deadlines, idle close, keepalive. queued: streams
  // waiting for this tunnel that it does not know yet.
  void tick(Clock::time_point now, size_t queued);

  uint64_t id() const { return id_; }
  bool server() const { return server_; }
  const std::shared_ptr<proxy::PodState>& pod() const { return pod_; }
  const SockAddr& remote() const { return remote_; }
  int fd() const { return fd_.get(); }
  const std::shared_ptr<const WorkloadCredential>& credential() const { return cred_; }
  const std::string& peerIdentity() const { return peer_identity_; }
  const std::string& reason() const { return reason_; }
  State state() const { return state_; }
  bool ready() const { return state_ == State::kReady; }
  bool closed() const { return state_ == State::kClosed; }
  bool draining() const { return draining_; }
  bool flushingClose() const { return close_on_flush_; }  // closes once written
  size_t streams() const { return streams_.size(); }
  Clock::time_point created() const { return created_; }
  bool busy() const {
    return recv_.busy() || send_.busy() || connect_.busy() || soon_.busy() || park_.busy();
  }
  size_t receiveBufferBytes() const { return rbuf_size_; }  // 0 while parked
  TunnelOwner& owner() { return owner_; }
  const char* side() const { return server_ ? "from" : "to"; }

 private:
  friend struct H2Glue;
  friend struct BioGlue;
  struct SslFree {
    void operator()(SSL* s) const { SSL_free(s); }
  };
  struct H2Free {
    void operator()(nghttp2_session* s) const { nghttp2_session_del(s); }
  };

  void step();
  void handshakeDone();
  void closeAfterFlush(const std::string& reason);
  void flush();
  bool writePlain();  // the frames gathered in pout_, through TLS; false: TLS failed
  void armRecv();
  void passDelivered();  // h2DataDone to the streams in delivered_
  void firstBytes();
  void finishIfIdle();
  void onConnect(int res);
  void onRecv(const io_uring_cqe& cqe);
  void onSend(const io_uring_cqe& cqe);
  void onSoon(const io_uring_cqe& cqe);
  void onPark(const io_uring_cqe& cqe);
  StreamEnd* streamOf(int32_t id) const;

  TunnelEnv& env_;
  TunnelOwner& owner_;
  uint64_t id_;
  bool server_;
  std::shared_ptr<proxy::PodState> pod_;  // client: the source pod; server: the destination
  std::shared_ptr<const WorkloadCredential> cred_;  // what this side presents
  std::string expected_peer_;                       // client: the destination's identity
  std::string peer_identity_;                       // verified in the handshake
  SockAddr remote_;
  UniqueFd fd_;
  std::unique_ptr<SSL, SslFree> ssl_;
  std::unique_ptr<nghttp2_session, H2Free> h2_;
  State state_;
  bool draining_ = false;        // no new streams
  bool going_away_ = false;      // goAway() before the handshake ended: say it once ready
  bool close_on_flush_ = false;  // graceful close once every byte is written
  bool closing_ = false;         // close() began
  bool finished_ = false;        // tunnelFinished() was said
  bool peer_eof_ = false;
  bool had_stream_ = false;  // server: a CONNECT arrived (ends the handshake deadline)
  bool ping_outstanding_ = false;
  bool in_progress_ = false, again_ = false;
  // Ciphertext TLS has not read yet: received before TLS started (server),
  // or left over from a receive whose buffer is needed again.
  std::string early_;
  size_t early_off_ = 0;
  const uint8_t* rin_ = nullptr;  // the receive TLS is reading (in rbuf_)
  size_t rin_len_ = 0;
  std::string reason_;  // why it closed
  Clock::time_point created_, deadline_, last_rx_, idle_since_;
  Clock::time_point linger_until_{};  // goAway(): a drained tunnel stays until then
  std::unique_ptr<uint8_t[]> rbuf_;   // small until the handshake is done
  size_t rbuf_size_ = 0;
  size_t last_recv_ = 0;    // bytes of the last read: the next one's size
  bool recv_idle_ = false;  // nothing read for a second: the next read is small again
  // tick(): a receive in flight for a whole tick is cancelled, and its
  // cancelled completion frees rbuf_ and polls the socket (park_) instead.
  relay::IdleReceive idle_;
  std::string sbuf_;  // ciphertext being sent; untouched while a send is in flight
  size_t soff_ = 0;
  std::string cout_;                       // ciphertext TLS wrote since (sent once sbuf_ is)
  std::string pout_;                       // small HTTP/2 frames for the next SSL_write
  std::map<int32_t, StreamEnd*> streams_;  // open HTTP/2 streams
  // Streams that took DATA in this round of SSL_read (h2DataDone after it).
  std::vector<int32_t> delivered_;
  std::vector<int32_t> refused_;  // RST_STREAM(NO_ERROR) once the response is out
  uring::Connect<&Tunnel::onConnect> connect_{this};
  uring::Op<&Tunnel::onRecv> recv_{this};
  uring::Op<&Tunnel::onSend> send_{this};
  uring::Op<&Tunnel::onSoon> soon_{this};
  uring::Op<&Tunnel::onPark> park_{this};  // an idle tunnel: a poll, no buffer
};

}  // namespace sluice::ztunnel::hbone
