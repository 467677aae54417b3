// HBONE: HTTP/2 CONNECT over mutual TLS 1.3 between nodes, driven by a
// worker's io_uring loop. Layers, per tunnel (one TCP connection):
//
//   socket <-io_uring recv/send-> ciphertext <-SSL (memory BIOs)-> plaintext
//   <-nghttp2 (mem_recv / mem_send)-> streams <-io_uring-> app sockets
//
// No call here blocks: the socket is only touched through the ring, OpenSSL
// and nghttp2 only see memory. One HboneWorker per Worker, used only on the
// worker's thread, so nothing takes a lock (the TLS context cache aside).
//
// Client tunnels are pooled per (source pod, destination identity,
// destination IP) — the source pod, because the tunnel's socket lives in
// its netns and leaves with its IP, which is what the destination shows the
// app. Every app connection is one CONNECT stream.
#pragma once

#include <linux/time_types.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include <chrono>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "sluice/common/log_limiter.h"
#include "sluice/common/unique_fd.h"
#include "sluice/ztunnel/engine.h"
#include "ztunnel/uring/ring.h"

namespace sluice::ztunnel::proxy {

class Worker;
class EngineImpl;
struct PodState;
struct Record;
struct ServiceRoute;
struct Tunnel;
struct Stream;
class HboneWorker;

using Clock = std::chrono::steady_clock;

struct TunnelOp final : uring::Operation {
  Tunnel* t = nullptr;
  int kind = 0;
  void complete(const io_uring_cqe& cqe) override;
};
struct StreamOp final : uring::Operation {
  Stream* s = nullptr;
  int kind = 0;
  void complete(const io_uring_cqe& cqe) override;
};
enum TunnelOpKind : int { kTConnect, kTTimeout, kTRecv, kTSend, kTOpCount };
enum StreamOpKind : int { kSRecv, kSSend, kSShut, kSConnect, kSTimeout, kSOpCount };

struct Tunnel {
  // kAccepted: server side before TLS starts — no bytes yet, or no
  // certificate for the pod yet; nothing large is allocated until then.
  enum State { kConnecting, kAccepted, kHandshaking, kReady, kClosed };
  HboneWorker* hw = nullptr;
  uint64_t id = 0;
  bool server = false;
  std::shared_ptr<PodState> pod;  // client: the source pod; server: the destination pod
  std::shared_ptr<const WorkloadCredential> cred;  // what this side presents
  std::string expected_peer;                       // client: the destination's identity
  std::string peer_identity;                       // verified in the handshake
  sockaddr_in remote{};                            // the other end of the TCP connection
  std::string pool_key;                            // client only
  UniqueFd fd;
  SSL* ssl = nullptr;
  nghttp2_session* h2 = nullptr;
  State state = kConnecting;
  bool draining = false;        // no new streams (GOAWAY either way, rotated certificate)
  bool close_on_flush = false;  // graceful close once every byte is written
  bool peer_eof = false;
  bool had_stream = false;           // server: a CONNECT arrived (ends the handshake deadline)
  bool awaiting_credential = false;  // server: bytes arrived before the pod's certificate
  std::string early;                 // server: ciphertext received before TLS started
  // server: in HboneWorker::pending_ (no CONNECT yet), for the bound on those
  bool pending = false;
  std::list<Tunnel*>::iterator pending_at;
  // client: 15008 refused; redialled at redial_at, the delay doubling
  Clock::time_point created{}, redial_at{};
  std::chrono::milliseconds redial_backoff{0};
  TunnelOp ops[kTOpCount];
  int inflight = 0;
  __kernel_timespec connect_timeout{};
  std::unique_ptr<uint8_t[]> rbuf;  // small until the handshake is done
  size_t rbuf_size = 0;
  bool recv_inflight = false;
  std::string sbuf;  // ciphertext being sent; never touched while a send is in flight
  size_t soff = 0;
  bool send_inflight = false;
  std::map<int32_t, Stream*> streams;  // open HTTP/2 streams
  std::vector<Stream*> waiting;        // client: accepted, waiting for the handshake
  Clock::time_point deadline{};        // of the handshake (and, server, the first CONNECT)
  Clock::time_point last_rx{}, idle_since{};
  bool ping_outstanding = false;
  std::string reason;  // why it closed
  size_t load() const { return streams.size() + waiting.size(); }
};

struct Stream {
  HboneWorker* hw = nullptr;
  Tunnel* tunnel = nullptr;  // null once the tunnel is gone
  int32_t id = -1;
  std::shared_ptr<PodState> pod;  // whose connection limit it counts against
  std::shared_ptr<Record> rec;
  UniqueFd app;       // client side: the accepted app socket; server side: the socket to the app
  sockaddr_in dst{};  // server: the app address (this pod's IP + CONNECT port)
  StreamOp ops[kSOpCount];
  int inflight = 0;
  __kernel_timespec connect_timeout{};
  bool h2_open = false;             // nghttp2 knows the stream (so it may call back with it)
  bool established = false;         // 200 sent / received
  bool app_ready = false;           // the app socket is connected
  bool rst_after_response = false;  // server: refused, close the client's half too
  // app -> tunnel
  std::unique_ptr<char[]> up;
  size_t up_len = 0, up_off = 0;
  bool up_recv_inflight = false, up_eof = false, up_done = false;
  // tunnel -> app
  std::string sending, pending;
  size_t sending_off = 0;
  bool down_send_inflight = false, down_eof = false, down_shut_sent = false, down_shut_done = false;
  std::unique_ptr<ServiceRoute> route;  // client: connected to a Service VIP
  // server: the request
  std::string method, authority, forwarded;
  bool closing = false;
  std::string reason;
};

class HboneWorker {
 public:
  HboneWorker(Worker& worker, EngineImpl& engine, uring::Ring& ring);
  ~HboneWorker();

  // An app connection from `pod` (accepted on 15001) to a meshed workload on
  // another node. Takes the client socket; answers it with a reset on failure.
  void outbound(const std::shared_ptr<PodState>& pod, UniqueFd client, const sockaddr_in& peer,
                const sockaddr_in& dst, const MeshWorkload& target,
                std::unique_ptr<ServiceRoute> route);
  // A TCP connection accepted on pod's 15008 listener.
  void inbound(const std::shared_ptr<PodState>& pod, UniqueFd fd, const sockaddr_in& peer);

  void removePod(const std::string& uid);  // resets its tunnels and streams
  void shutdown();                         // resets everything (engine stop)
  bool idle() const { return tunnels_.empty() && streams_.empty() && cert_waiters_.empty(); }
  void tick();  // deadlines, keepalive, idle release; about once a second
  // Certificates that arrived, redials that are due. Returns whether
  // anything still waits (call again in a few ms).
  bool fineTick(Clock::time_point now);
  // Closes the oldest inbound tunnel still in its handshake (to free a file
  // descriptor); returns whether there was one.
  bool evictOldestPending(const char* why);

  // --- completions and nghttp2 callbacks ---
  void onTunnel(Tunnel& t, int kind, const io_uring_cqe& cqe);
  void onStream(Stream& s, int kind, const io_uring_cqe& cqe);
  int onBeginHeaders(Tunnel& t, const nghttp2_frame* f);
  int onHeader(Tunnel& t, const nghttp2_frame* f, std::string_view name, std::string_view value);
  int onFrameRecv(Tunnel& t, const nghttp2_frame* f);
  int onDataChunk(Tunnel& t, int32_t stream_id, const uint8_t* data, size_t len);
  int onStreamClose(Tunnel& t, int32_t stream_id, uint32_t error_code);
  ssize_t readData(Stream& s, uint8_t* buf, size_t length, uint32_t* flags);

 private:
  Tunnel* pooledTunnel(const std::shared_ptr<PodState>& pod, const MeshWorkload& target,
                       const sockaddr_in& dst,
                       const std::shared_ptr<const WorkloadCredential>& cred);
  Tunnel* newTunnel(bool server, const std::shared_ptr<PodState>& pod,
                    std::shared_ptr<const WorkloadCredential> cred);
  bool startTls(Tunnel& t);
  void handshakeDone(Tunnel& t);
  void progress(Tunnel& t);
  void flush(Tunnel& t);
  void submitRequest(Tunnel& t, Stream& s);
  void closeTunnel(Tunnel& t, const std::string& reason);
  void gracefulClose(Tunnel& t, const std::string& reason);
  void closeAfterFlush(Tunnel& t, const std::string& reason);
  void unpool(Tunnel& t);
  void authorizeConnect(Tunnel& t, Stream& s);
  void respond(Tunnel& t, Stream& s, int status, bool with_data);
  void pumpUp(Stream& s);
  void pumpDown(Stream& s);
  void closeStream(Stream& s, bool reset, const std::string& reason);
  void failStream(Stream& s, const std::string& reason);
  Stream* newStream(Tunnel* t, const std::shared_ptr<PodState>& pod, UniqueFd app);
  void reap();
  void armRecv(Tunnel& t);
  void acceptTls(Tunnel& t);  // server: start TLS once the pod's certificate is here
  void openStream(const std::shared_ptr<PodState>& pod, UniqueFd client, const sockaddr_in& peer,
                  const sockaddr_in& dst, const MeshWorkload& target,
                  std::unique_ptr<ServiceRoute> route,
                  const std::shared_ptr<const WorkloadCredential>& cred);
  bool dial(Tunnel& t);  // false: failed, the tunnel is closed
  void makeRoomForHandshake(const PodState& pod);
  void evictPending(Tunnel& t, const char* why);
  void dropPending(Tunnel& t);

  // An outbound connection waiting for its pod's first certificate.
  struct CertWaiter {
    std::shared_ptr<PodState> pod;
    UniqueFd client;
    sockaddr_in peer{}, dst{};
    MeshWorkload target;
    std::unique_ptr<ServiceRoute> route;
    Clock::time_point deadline;
  };
  std::vector<CertWaiter> cert_waiters_;
  std::vector<Tunnel*> cert_tunnels_;  // server tunnels with awaiting_credential
  std::vector<Tunnel*> redials_;       // client tunnels waiting to redial
  std::list<Tunnel*> pending_;         // server tunnels without a CONNECT yet, oldest first
  // One limiter per kind of line, so a flood of one kind hides no other.
  log::Limiter peer_log_, handshake_log_, bad_request_log_, refused_log_, limit_log_, timeout_log_,
      pending_log_, cert_log_, connect_log_;

  Worker& worker_;
  EngineImpl& engine_;
  uring::Ring& ring_;
  nghttp2_session_callbacks* callbacks_ = nullptr;
  nghttp2_option* options_ = nullptr;
  std::unordered_map<Tunnel*, std::unique_ptr<Tunnel>> tunnels_;
  std::unordered_map<Stream*, std::unique_ptr<Stream>> streams_;
  std::unordered_map<std::string, std::vector<Tunnel*>> pool_;
  std::vector<Tunnel*> dead_tunnels_;
  std::vector<Stream*> dead_streams_;
  bool reaping_ = false;
  uint8_t plain_[16384];  // SSL_read scratch
};

}  // namespace sluice::ztunnel::proxy
