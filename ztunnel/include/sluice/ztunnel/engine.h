// The ztunnel engine: the node's shared io_uring proxy. The agent hosts it
// in-process; its tests drive it directly (there is no standalone binary).
//
// Threads: EngineConfig::workers (default: half the CPUs), each with its own
// io_uring ring and its own connections; moving bytes takes no lock, but
// opening and closing a connection takes the connection registry's mutex
// (for connections()). addPod / removePod / snapshots are called from
// control threads and are thread-safe. docs/architecture.md has the layers.
#pragma once

#include <netinet/in.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/common/addr.h"
#include "sluice/common/result.h"
#include "sluice/common/unique_fd.h"

namespace sluice::ztunnel {

struct EngineConfig {
  unsigned workers = 0;                             // 0 = defaultWorkers()
  std::chrono::milliseconds connect_timeout{5000};  // upstream connect deadline
  unsigned max_connections_per_pod = 4096;          // accepted beyond this are closed (counted)
  // Descriptors kept free under the process's RLIMIT_NOFILE (at most a
  // quarter of it): a connection accepted (15001, 15006, 15008) or a CONNECT
  // whose socket falls within them is refused, so that a flood across pods
  // leaves the agent descriptors for tunnels, upstream sockets, listeners
  // and its CNI and admin servers.
  unsigned descriptor_reserve = 4096;
  // Per direction per connection, allocated while active: the size it
  // starts at. A direction whose reads fill its buffer (a bulk transfer)
  // doubles it, up to buffer_max_bytes (fewer, larger reads and sends per
  // byte; relay::nextBufferSize), until the connection ends.
  size_t buffer_bytes = 128 * 1024;
  size_t buffer_max_bytes = 256 * 1024;
  bool access_log = true;  // one line per closed connection
  // Before a worker sleeps for its next completion it polls this long (0:
  // never), skipping polls while they find nothing (uring::Ring::setBusyPoll)
  // and only while the worker hardly waits for a CPU (proxy/cpu_wait.h): a
  // request/response peer answers within that time and the worker skips
  // two sleep/wake cycles per request. The agent sets 50 (--busy-poll-us).
  std::chrono::microseconds busy_poll{0};

  // HBONE (mutual TLS between nodes); active when createEngine gets a
  // CredentialSource and a MeshDirectory.
  std::string trust_domain = "cluster.local";
  std::string trust_anchor_pem;                              // peers' chains must end here
  std::chrono::milliseconds hbone_handshake_timeout{10000};  // TCP+TLS+first CONNECT
  std::chrono::milliseconds hbone_idle_timeout{60000};       // pooled tunnel without streams
  std::chrono::milliseconds hbone_keepalive{30000};          // PING after this much silence
  uint32_t hbone_max_streams = 100;                          // per tunnel, both directions
  uint32_t hbone_stream_window = 1u << 20;                   // HTTP/2 flow control, per stream
  uint32_t hbone_connection_window = 16u << 20;              // and per tunnel
  // Inbound tunnels still in their handshake (TCP accepted, no CONNECT yet)
  // are bounded per node and per pod; beyond a bound the oldest is closed.
  // Each worker enforces its share (bound / workers).
  unsigned hbone_max_pending_handshakes = 1024;
  unsigned hbone_max_pending_handshakes_per_pod = 256;
  // Outbound tunnels still in their handshake (TCP connect + TLS, not ready)
  // are bounded per node and per source pod, each worker enforcing its
  // share: a connection that needs a new tunnel beyond a bound is reset
  // (hbone.outbound_handshake_refused); one that fits on a tunnel being
  // set up waits on it as before.
  unsigned hbone_max_outbound_handshakes = 1024;
  unsigned hbone_max_outbound_handshakes_per_pod = 256;
  // Pooled tunnels from one pod to one destination (identity and address),
  // each worker its share: when all are full (hbone_max_streams each), a new
  // connection is reset (hbone.peer_tunnel_refused), a Service connection
  // tries another endpoint first.
  unsigned hbone_max_tunnels_per_peer = 64;
  // A connection of a pod whose certificate has not arrived yet (just
  // enrolled, agent just restarted) waits this long for it, then is reset.
  std::chrono::milliseconds certificate_wait{5000};
  // A tunnel refused by the destination's 15008 (its node is still enrolling
  // it) is redialled with backoff within this window.
  std::chrono::milliseconds hbone_refused_retry{1000};

  // HTTP golden metrics: app connections are inspected (never delayed or
  // changed) for HTTP/1.x and HTTP/2 prior knowledge, and each request goes
  // to ConnectionObserver::request(). Off: every connection is bytes only.
  bool http_detection = true;
  // Destination ports never inspected: server-first protocols (SMTP,
  // MySQL, PostgreSQL, Redis, ...), as Linkerd's defaults. A workload adds
  // its own (MeshDirectory::opaquePort).
  std::vector<uint16_t> opaque_ports = {25, 587, 3306, 4444, 5432, 6379, 9300, 11211};
  // Detection gives up on a connection whose client has not sent a request
  // line within this time (its bytes flow regardless).
  std::chrono::milliseconds http_detect_timeout{10000};

  // Load balancing of connections to Service VIPs (needs a MeshDirectory).
  unsigned lb_max_attempts = 3;                  // endpoints tried per connection
  unsigned lb_eject_after = 3;                   // consecutive connect failures
  std::chrono::milliseconds lb_eject_for{5000};  // first ejection; doubles, up to 60 s
};

// An enrolled pod as the engine needs it. The engine dup()s netns_fd.
struct PodSpec {
  std::string uid;
  std::string name_namespace;  // "ns/name", for logs and records
  std::string service_account;
  std::string identity;  // SPIFFE URI (computed once by the agent)
  uint32_t ip4 = 0;      // network order; 0: none
  IpAddr ip6;            // empty: none
  uint64_t netns_cookie = 0;
  int netns_fd = -1;
};

// A workload certificate chain (leaf first, then its issuers) and its key.
struct WorkloadCredential {
  std::string identity;  // the SPIFFE URI in the leaf
  std::string chain_pem;
  std::string key_pem;
};

// Certificates of this node's workloads; a renewal returns a new object.
// Thread-safe and non-blocking (the agent's certificate manager).
class CredentialSource {
 public:
  virtual ~CredentialSource() = default;
  virtual std::shared_ptr<const WorkloadCredential> credential(const std::string& spiffe_uri) = 0;
};

// A meshed (enrolled) workload anywhere in the cluster, by pod IP.
struct MeshWorkload {
  std::string identity;  // SPIFFE URI
  std::string name;      // ns/name
  std::string node;
};

// A Service VIP:port as the proxy balances it: the ready endpoints (IP and
// target port, of the VIP's family), from the control plane's latest view.
struct ServiceTarget {
  std::string name;                 // namespace/name
  std::vector<SockAddr> endpoints;  // empty: none ready (a connection is reset)
};

// The control plane's view, by IP. Thread-safe and non-blocking.
class MeshDirectory {
 public:
  virtual ~MeshDirectory() = default;
  virtual std::optional<MeshWorkload> meshed(const IpAddr& ip) = 0;
  // The Service behind ip:port (network-order port) with at least one ready
  // endpoint, or null.
  virtual std::shared_ptr<const ServiceTarget> service(const IpAddr& ip, uint16_t port) = 0;
  // The headless Service ("namespace/name") that has ip:port (network-order
  // port) as a ready endpoint, if any: a connection to it is recorded under it.
  virtual std::optional<std::string> headlessService(const IpAddr& ip, uint16_t port) {
    (void)ip;
    (void)port;
    return std::nullopt;
  }
  // The Service an inbound connection to pod address ip:port (network-order
  // port) is recorded under: the destination is told a pod address, not
  // what the client dialled, so this is Istio ztunnel's guess (the first
  // Service by namespace/name with ip:port among its ready endpoints).
  virtual std::optional<std::string> endpointService(const IpAddr& ip, uint16_t port) {
    (void)ip;
    (void)port;
    return std::nullopt;
  }
  // What the destination ip:port (host-order port)
  // declares about HTTP inspection: true = opaque, relayed as bytes only (the
  // sluice.dev/opaque-ports annotation of the pod or of a Service in front of
  // it; a Service port's opaque appProtocol); false = inspected even on a
  // default opaque port (an HTTP appProtocol); nullopt = nothing declared
  // (EngineConfig::opaque_ports decides).
  virtual std::optional<bool> opaquePort(const IpAddr& ip, uint16_t port) {
    (void)ip;
    (void)port;
    return std::nullopt;
  }
  // Whether there is a view at all (once true, stays true). Without one,
  // every destination looks unmeshed: the engine refuses outbound
  // connections instead of sending them out in plaintext.
  virtual bool hasView() = 0;
};

// A Service port's appProtocol as the inspection decision: true (opaque) for
// tcp, tls, https, opaque, linkerd.io/opaque, linkerd.io/tcp, mysql, mongo,
// redis, kubernetes.io/wss; false (inspect) for http, http2, h2c, grpc,
// grpc-web, kubernetes.io/h2c, kubernetes.io/ws; nullopt for an empty or
// unknown value (as if unset). Case-insensitive.
std::optional<bool> appProtocolOpaque(std::string_view app_protocol);

// Finds the original destination of a connection accepted on a pod's 15001
// listener. peer/local are the accepted socket's getpeername()/getsockname().
// Implemented by the agent on top of the pinned sluice_orig_dst_v1 map; must be
// thread-safe and non-blocking (one map lookup + delete).
class OrigDstResolver {
 public:
  virtual ~OrigDstResolver() = default;
  virtual std::optional<sockaddr_in> originalDst(uint64_t netns_cookie, const sockaddr_in& peer,
                                                 const sockaddr_in& local) = 0;
  // The same for a connection accepted on a pod's [::1]:15001 listener (an
  // IPv6 destination captured by connect6), on top of sluice_orig_dst6_v1.
  virtual std::optional<sockaddr_in6> originalDst6(uint64_t netns_cookie, const sockaddr_in6& peer,
                                                   const sockaddr_in6& local) {
    (void)netns_cookie;
    (void)peer;
    (void)local;
    return std::nullopt;
  }
};

struct ListenerInfo {
  std::string pod_uid;
  std::string pod;      // ns/name
  std::string address;  // "127.0.0.1:15001", "10.244.1.5:15006", "[::1]:15001"
  std::string kind;     // "outbound" | "inbound" | "hbone"; IPv6: "outbound6", ...
};

// A pod's listening socket handed from one engine to another (an agent
// upgrade): the same socket, so connections in its queue are not lost.
struct ListenerFd {
  std::string pod_uid;
  std::string kind;  // "outbound" | "inbound" | "hbone" (+ "6" for IPv6), as ListenerInfo
  UniqueFd fd;
};

// --- connection records ---------------------------------------------------

enum class Direction : uint8_t { kOutbound, kInbound };
// passthrough: to the network; local_handoff: meshed pod on this node, one
// hop; hbone: mTLS tunnel to/from another node; inbound: plaintext from
// outside the mesh into an enrolled pod.
// kNone: refused before a path was chosen (a Service with no endpoint left).
enum class Path : uint8_t { kPassthrough, kLocalHandoff, kHbone, kInbound, kNone };
enum class ConnState : uint8_t { kOpen, kClosed };
enum class CloseReason : uint8_t {
  kNone,            // still open
  kEof,             // both sides ended in order
  kReset,           // a side reset
  kConnectTimeout,  // the destination did not answer in time
  kConnectError,    // the destination refused (detail: why)
  kRecvError,
  kSendError,
  kSocketError,        // no socket for the upstream
  kNoTunnel,           // no tunnel to the destination's node
  kTunnelClosed,       // the tunnel carrying the stream went away (detail: why)
  kStreamReset,        // RST_STREAM (detail: the HTTP/2 error)
  kStreamClosedEarly,  // the stream ended before both directions did
  kRefused,            // the destination's node refused the CONNECT (detail: status)
  kNotThisPod,         // a CONNECT for an address that is not the pod's
  kBadRequest,         // not a CONNECT
  kConnectionLimit,    // the pod's connection limit
  kDenied,             // refused by the authorization hook
  kPodRemoved,
  kProxyShutdown,
  kHandedOver,     // an upgrade: the successor agent relays it from now on (not an error)
  kNoCertificate,  // the client pod's certificate did not come in time (an outbound HBONE)
  kNoEndpoint,     // a Service with no ready endpoint (left) to connect to (detail: which)
};
const char* toString(Direction d);
const char* toString(Path p);
const char* toString(ConnState s);
const char* toString(CloseReason r);
// Whether a CONNECT refusal's status (kRefused's detail) is the
// destination's authorization refusing the client: 401 (ztunnel's), 403.
inline bool refusedByPolicy(std::string_view status) { return status == "401" || status == "403"; }

// One proxied app connection (a plaintext relay or one HBONE stream): what
// connections(), the access log, the admin API and the observer all see.
struct ConnectionRecord {
  uint64_t id = 0;
  Direction direction = Direction::kOutbound;
  Path path = Path::kPassthrough;
  std::string pod;                  // ns/name of the enrolled pod that owns the listener
  std::string source;               // ip:port of the client ("[v6]:port" for IPv6)
  std::string destination;          // ip:port (for a Service: the chosen endpoint)
  std::string destination_service;  // ns/name: a Service VIP, or an endpoint of a headless one
  // A same-node handoff dialled by address: the Service its destination
  // names it under (its endpoint and target port, MeshDirectory::
  // endpointService), as an inbound record's destination_service. "" otherwise.
  std::string inbound_service;
  std::string source_principal;       // SPIFFE ID of the client workload, when known
  std::string destination_principal;  // SPIFFE ID of the destination workload, when meshed
  bool mutual_tls = false;            // carried over an mTLS (HBONE) tunnel
  uint64_t bytes_sent = 0;            // client -> destination
  uint64_t bytes_received = 0;        // destination -> client
  int64_t start_unix_ms = 0;
  int64_t duration_ms = 0;
  ConnState state = ConnState::kOpen;
  CloseReason reason = CloseReason::kNone;
  std::string reason_detail;  // e.g. strerror of a connect error
  bool retried = false;       // a Service connection moved to another endpoint after this
  bool adopted = false;       // handed over by the previous agent (an upgrade): relayed as bytes
  // "connect_error: Connection refused (retried)"
  std::string reasonText() const;
  // The Service the connection is under: the one dialled, else the one its
  // handed-off destination is named under; "" for neither.
  const std::string& service() const {
    return destination_service.empty() ? inbound_service : destination_service;
  }
};

// A plaintext connection frozen for an upgrade (Engine::exportConnections):
// both sockets, the bytes read but not yet written in each direction and
// which side has ended, and the record it continues.
struct ConnectionFd {
  ConnectionRecord record;   // direction, path, pod, addresses, principals, bytes so far
  std::string pod_uid;       // the listener's pod
  std::string target_uid;    // same-node handoff: the destination pod ("" otherwise)
  std::string dest_pod_uid;  // what the authorizer was asked about (LiveRecord)
  std::string dest_pod;
  UniqueFd client, upstream;
  std::string to_upstream, to_client;  // read, not yet written
  bool client_eof = false;             // the client sent FIN (nothing more to read from it)
  bool upstream_eof = false;           // the upstream sent FIN
  bool upstream_shut = false;          // the client's FIN was passed on (shutdown(SHUT_WR) done)
  bool client_shut = false;            // the upstream's FIN was passed on
};

// --- counters ---------------------------------------------------------------

// Every counter of the engine, defined once: describe() gives its group,
// name and meaning, which the admin API, `sluicectl stats` and metrics use.
enum class Counter : uint8_t {
  kAccepted,  // app connections: 15001, 15006, and CONNECT streams on 15008
  kActive,
  kClosed,
  kConnectFailures,
  kLimitRejected,
  kNoOriginalDst,
  kDirectRefused,
  kAcceptErrors,
  kCertificateWaits,
  kNoCertificate,
  kNoView,
  kRingErrors,
  kDenied,
  kTunnelsOpened,
  kTunnelsAccepted,
  kPendingEvicted,
  kConnectRetries,
  kTunnelsActive,
  kHandshakeFailures,
  kHboneTimeouts,
  kBadRequests,
  kRefused,
  kOutboundHandshakeRefused,
  kPeerTunnelRefused,
  kLbPicks,
  kLbRetries,
  kLbNoEndpoint,
  kLbEjections,
  kSpliced,
  kSpliceFallbacks,
  kBusyPollHits,
  kBusyPollMisses,
  kCount
};
// kGauge: a level that goes down too ("open now"); kCounter only grows.
enum class CounterKind : uint8_t { kCounter, kGauge };
struct CounterInfo {
  const char* group;  // "proxy" | "hbone" | "lb"
  const char* name;   // within the group
  const char* help;
  CounterKind kind = CounterKind::kCounter;
};
const CounterInfo& describe(Counter c);

struct EngineStats {
  std::array<uint64_t, static_cast<size_t>(Counter::kCount)> values{};
  uint64_t operator[](Counter c) const { return values[static_cast<size_t>(c)]; }
};

// --- hooks --------------------------------------------------------------------

// An inbound connection asking to reach an enrolled pod of this node: on
// 15006 (plaintext from outside the mesh), on 15008 (a CONNECT over mTLS)
// or handed over from a pod of the same node.
struct InboundRequest {
  Path path = Path::kInbound;         // kInbound | kHbone | kLocalHandoff
  std::string_view pod_uid;           // the destination pod
  std::string_view pod;               // its ns/name
  std::string_view pod_principal;     // its SPIFFE ID
  SockAddr source;                    // the client (pod IP for meshed clients)
  SockAddr destination;               // the pod's IP and the app's port
  std::string_view source_principal;  // verified SPIFFE ID; empty: not authenticated
  bool mutual_tls = false;
  // An open connection asked again (reauthorize): its decision was logged
  // and audited when it opened, so only a deny is news.
  bool recheck = false;
};
enum class Verdict : uint8_t { kAllow, kDeny };

// The answer about one inbound connection. `why` says, on a deny, what
// refused it ("policy ns/name (DENY matched)", "no ALLOW matched"): the
// engine puts it in the close record (the access log line's reason) and its
// log. Left empty on an allow (no allocation on the data path).
struct Authorization {
  Verdict verdict = Verdict::kAllow;
  std::string why;
};

// Decides every inbound connection before a byte reaches the app, and again
// for open ones when Engine::reauthorize() is called. Called on worker
// threads: thread-safe and non-blocking (the agent's: a snapshot lookup).
// What a deny does is the engine's, per path: 15006 resets the client,
// 15008 answers the CONNECT 401, a same-node handoff resets the client,
// and an open connection now denied is reset.
class InboundAuthorizer {
 public:
  virtual ~InboundAuthorizer() = default;
  virtual Authorization authorize(const InboundRequest& request) = 0;
};

// The application protocol the engine detected on a connection.
enum class AppProtocol : uint8_t { kTcp, kHttp1, kHttp2, kGrpc };
const char* toString(AppProtocol p);  // "tcp" | "http/1.1" | "http/2" | "grpc"

// One HTTP request and its response, seen on a connection whose protocol was
// detected as HTTP (request_protocol "http" or "grpc" in Istio's metrics).
// The views point into the engine's parse state: valid during the call only.
// Never bodies, never header values other than these.
struct RequestRecord {
  AppProtocol protocol = AppProtocol::kHttp1;
  std::string_view method;
  std::string_view authority;   // :authority or Host
  std::string_view path;        // without the query string
  int status = 0;               // HTTP status; 0: no response (reset, connection closed)
  int grpc_status = -1;         // grpc-status; -1: absent (not gRPC, or no trailers)
  uint64_t request_bytes = 0;   // request body bytes
  uint64_t response_bytes = 0;  // response body bytes
  int64_t start_unix_ms = 0;    // first request byte
  int64_t duration_us = 0;      // first request byte -> last response byte
};

// Sees every proxied connection. Called on the worker thread that owns the
// connection (`worker` is its index, for per-worker aggregation without a
// lock); must not block. The record's byte counts are final in closed().
class ConnectionObserver {
 public:
  virtual ~ConnectionObserver() = default;
  virtual void opened(unsigned worker, const ConnectionRecord& record) = 0;
  // More bytes moved: client -> destination and back.
  virtual void transferred(unsigned worker, const ConnectionRecord& record, uint64_t sent,
                           uint64_t received) = 0;
  // One HTTP exchange completed (or ended without a response) on `connection`.
  virtual void request(unsigned worker, const ConnectionRecord& connection,
                       const RequestRecord& request) {
    (void)worker;
    (void)connection;
    (void)request;
  }
  virtual void closed(unsigned worker, const ConnectionRecord& record) = 0;
};

// Same-node splice (issue 11, --sockmap=on; the agent's bpf/splice.h): joins
// the two app sockets of a same-node handoff so the proxy steps out of the
// byte path. The proxy keeps relaying and tells, after every write, how many
// bytes of each direction it has written on; the kernel switches a direction
// when the app has sent exactly that many (nothing of it in flight). The
// proxy's own sockets stay open and carry FIN and RST as before.
// `accepted`: the proxy's socket of the client's hop (127.0.0.1:15001 in the
// client pod); `delivering`: its socket to the server app. Thread-safe.
class SplicedPair {
 public:
  virtual ~SplicedPair() = default;
  // Bytes written on so far: up (client -> server) or down.
  virtual void forwarded(bool up, uint64_t bytes) = 0;
  // Ends the splice (both directions): a send of either app after it goes
  // to the proxy's socket of its hop again. Returns the bytes each
  // direction carried straight from app to app. Once.
  struct Spliced {
    uint64_t up = 0, down = 0;
  };
  virtual Spliced end() = 0;
  // The bytes each direction has carried straight from app to app so far
  // (the splice stays): read at a query or scrape, never per byte.
  virtual Spliced counted() = 0;
};
class SpliceControl {
 public:
  virtual ~SpliceControl() = default;
  // kNotYet: a hop is not ready (the server app's socket not in the sockhash
  // yet): ask again after the next write. kNever: this connection cannot be
  // spliced (a hop on loopback TCP, or the kernel refused): it stays proxied.
  enum class Arm : uint8_t { kArmed, kNotYet, kNever };
  struct Armed {
    Arm state = Arm::kNever;
    std::unique_ptr<SplicedPair> pair;  // with kArmed
  };
  // Arms both directions; up/down: the bytes written on so far.
  virtual Armed arm(int accepted, int delivering, uint64_t up, uint64_t down) = 0;
};

// Inbound connections the tc program cannot steer (a SYN that reuses the
// tuple of a connection in TIME_WAIT) are steered by the kernel's listener
// lookup (the agent's sk_lookup program), to the listener named here.
class InboundSteering {
 public:
  virtual ~InboundSteering() = default;
  // fd listens for the pod at addr (<ip>:15006 or [<ip6>]:15006), created or
  // handed over by an upgrade; a failure fails the pod's addPod.
  virtual Result<void> inboundListener(const SockAddr& addr, int fd) = 0;
};

struct EngineHooks {
  InboundAuthorizer* authorizer = nullptr;  // null: allow everything
  ConnectionObserver* observer = nullptr;
  SpliceControl* splice = nullptr;      // null: no same-node splice
  InboundSteering* steering = nullptr;  // null: tc steers alone
};

class Engine {
 public:
  virtual ~Engine() = default;

  // Creates the listeners for pod inside its netns (127.0.0.1:15001 outbound,
  // <ip>:15006 inbound, transparent, and <ip>:15008 HBONE when mTLS is on;
  // with an ip6 also [::1]:15001, [<ip6>]:15006, [<ip6>]:15008). Idempotent per uid: a
  // second call with the same uid replaces nothing and succeeds. Fails (and leaves nothing behind)
  // if a listener cannot be created.
  virtual Result<void> addPod(const PodSpec& pod) = 0;
  // Closes the pod's listeners and resets its connections. Unknown uid: no-op.
  virtual void removePod(const std::string& uid) = 0;

  virtual std::vector<ListenerInfo> listeners() const = 0;
  // Open connections plus the most recently closed ones (bounded history).
  // With same-node splice on, it first has every worker count what its
  // spliced pairs carried so far (countSpliced).
  virtual std::vector<ConnectionRecord> connections() const = 0;
  // Adds what open spliced pairs carried app to app since the last call to
  // their records (live byte counts) and to the observer (metrics). Called
  // by connections() and before a metrics scrape; returns once every worker
  // has done so. No-op without same-node splice.
  virtual void countSpliced() const = 0;
  virtual EngineStats stats() const = 0;
  // Resets open connections at an operator's request (the admin API): the
  // one with this id (id != 0), or every one whose pod (either end of a
  // same-node handoff) is `pod` ("ns/name", non-empty). A spliced pair's
  // splice ends first; both sockets are reset; the record closes as reset
  // with the detail "by an operator (admin API)". Thread-safe; returns how
  // many it reset, once every worker has done so.
  virtual size_t resetConnections(uint64_t id, const std::string& pod) = 0;
  // Asks the authorizer again about every open inbound connection and
  // resets those it now denies (after a policy change). Thread-safe; returns
  // once every worker has done so.
  virtual void reauthorize() = 0;

  // --- upgrades (the agent's handover to its successor) ---
  // A duplicate of every listening socket, per pod and kind (the engine
  // keeps accepting on its own).
  virtual std::vector<ListenerFd> exportListeners() = 0;
  // Sockets exported by the predecessor: addPod of those pods takes them
  // instead of making new ones (a kind missing is made). Replaces what an
  // earlier call left unused; an empty vector drops it.
  virtual void adoptListeners(std::vector<ListenerFd> listeners) = 0;
  // Stops accepting on every listener without shutting the sockets down
  // (the successor accepts on them); what was already accepted is served.
  // Returns once every worker has stopped. removePod and stop() after it
  // leave the sockets working too.
  virtual void stopAccepting() = 0;
  // After stopAccepting: tells HBONE peers to open new streams elsewhere
  // (GOAWAY), waits until every connection and tunnel has ended or until
  // `deadline`, then closes what is still open (reason proxy_shutdown, the
  // deadline in the detail). Returns how many connections it closed.
  virtual size_t drain(std::chrono::milliseconds deadline) = 0;
  // After stopAccepting: freezes every relaying plaintext connection
  // (outbound passthrough, same-node handoff, inbound plaintext) without
  // resetting it — receives and sends cancelled, what was read but not
  // written kept — and hands it out; its record closes as handed_over. A
  // connection still connecting, an HBONE stream and one that cannot be
  // frozen cleanly stay here (drain). Bounded (a few seconds).
  virtual std::vector<ConnectionFd> exportConnections() = 0;
  // Relays connections exported by the predecessor (their pods added
  // first): the buffered bytes are written first, the half-closes kept; the
  // record says adopted and starts from the carried byte counts. HTTP
  // inspection does not carry over. Returns how many it took (a connection
  // of an unknown pod is closed).
  virtual size_t adoptConnections(std::vector<ConnectionFd> connections) = 0;

  // Stops all workers; idempotent; also done by the destructor.
  virtual void stop() = 0;
};

// The worker count when none is given: half the CPUs this process may run
// on (its affinity mask, so a cpuset limit counts), at least one. The node's
// apps share those CPUs with the proxy, and a worker that has to wait for a
// CPU wakes up for fewer completions at a time: on two cores loaded by the
// apps, one worker moved a new connection for 23% less agent CPU than two
// (docs/performance.md, "workers").
unsigned defaultWorkers();

// Whether a worker waiting for traffic is counted as waiting for I/O on this
// kernel: true before 6.15 (no IORING_ENTER_NO_IOWAIT), where an idle agent
// shows as iowait on its CPUs and as a full stall in its cgroup's
// io.pressure although it waits for the network. Probed once.
bool idleWaitCountsAsIowait();

// A directory turns on Service load balancing; credentials + directory turn
// on HBONE: remote meshed destinations go through mTLS tunnels, and each pod
// gets a 15008 listener.
Result<std::unique_ptr<Engine>> createEngine(const EngineConfig& config, OrigDstResolver& resolver,
                                             CredentialSource* credentials = nullptr,
                                             MeshDirectory* directory = nullptr,
                                             EngineHooks hooks = {});

}  // namespace sluice::ztunnel
