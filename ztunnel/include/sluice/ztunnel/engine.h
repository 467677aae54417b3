// The ztunnel engine: the node's shared io_uring proxy. The agent hosts it
// in-process; its tests drive it directly (there is no standalone binary).
//
// Threads: one worker per core (EngineConfig::workers), each with its own
// io_uring ring and its own connections; moving bytes takes no lock, but
// opening and closing a connection takes the connection registry's mutex
// (for connections()). addPod / removePod / snapshots are called from
// control threads and are thread-safe.
#pragma once

#include <netinet/in.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sluice/common/result.h"

namespace sluice::ztunnel {

struct EngineConfig {
  unsigned workers = 0;                             // 0 = one per online CPU
  std::chrono::milliseconds connect_timeout{5000};  // upstream connect deadline
  unsigned max_connections_per_pod = 4096;          // accepted beyond this are closed (counted)
  size_t buffer_bytes = 128 * 1024;  // per direction per connection, allocated while active
  bool access_log = true;            // one line per closed connection

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
  // A connection of a pod whose certificate has not arrived yet (just
  // enrolled, agent just restarted) waits this long for it, then is reset.
  std::chrono::milliseconds certificate_wait{5000};
  // A tunnel refused by the destination's 15008 (its node is still enrolling
  // it) is redialled with backoff within this window.
  std::chrono::milliseconds hbone_refused_retry{1000};

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
  uint32_t ip4 = 0;  // network order
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
// target port), from the control plane's latest view.
struct ServiceTarget {
  std::string name;                    // namespace/name
  std::vector<sockaddr_in> endpoints;  // never empty
};

// The control plane's view, by IP. Thread-safe and non-blocking.
class MeshDirectory {
 public:
  virtual ~MeshDirectory() = default;
  virtual std::optional<MeshWorkload> meshed(uint32_t ip4) = 0;  // network order
  // The Service behind ip4:port (network order) with at least one ready
  // endpoint, or null.
  virtual std::shared_ptr<const ServiceTarget> service(uint32_t ip4, uint16_t port) = 0;
  // Whether there is a view at all (once true, stays true). Without one,
  // every destination looks unmeshed: the engine refuses outbound
  // connections instead of sending them out in plaintext.
  virtual bool hasView() = 0;
};

// Finds the original destination of a connection accepted on a pod's 15001
// listener. peer/local are the accepted socket's getpeername()/getsockname().
// Implemented by the agent on top of the pinned sluice_orig_dst_v1 map; must be
// thread-safe and non-blocking (one map lookup + delete).
class OrigDstResolver {
 public:
  virtual ~OrigDstResolver() = default;
  virtual std::optional<sockaddr_in> originalDst(uint64_t netns_cookie, const sockaddr_in& peer,
                                                 const sockaddr_in& local) = 0;
};

struct ListenerInfo {
  std::string pod_uid;
  std::string pod;      // ns/name
  std::string address;  // "127.0.0.1:15001", "10.244.1.5:15006"
  std::string kind;     // "outbound" | "inbound" | "hbone"
};

struct ConnectionInfo {
  uint64_t id = 0;
  std::string direction;            // "outbound" | "inbound"
  std::string pod;                  // ns/name of the enrolled pod that owns the listener
  std::string source;               // ip:port of the client
  std::string destination;          // destination ip:port (for a Service: the chosen endpoint)
  std::string destination_service;  // ns/name when the client connected to a Service VIP
  std::string path;  // "passthrough" (to the network), "local_handoff" (meshed pod on this
                     // node, one hop), "hbone" (mTLS tunnel to/from another node),
                     // "inbound" (plaintext from outside the mesh into an enrolled pod)
  std::string source_principal;       // SPIFFE ID of the client workload, when known
  std::string destination_principal;  // SPIFFE ID of the destination workload, when meshed
  bool mutual_tls = false;            // carried over an mTLS (HBONE) tunnel
  uint64_t bytes_sent = 0;            // client -> destination
  uint64_t bytes_received = 0;        // destination -> client
  int64_t start_unix_ms = 0;
  int64_t duration_ms = 0;
  std::string state;   // "connecting" | "open" | "closed"
  std::string reason;  // close reason when closed ("eof", "reset", "connect_timeout", ...)
};

struct EngineStats {
  uint64_t accepted = 0;  // app connections: 15001, 15006, and CONNECT streams on 15008
  uint64_t active = 0;
  uint64_t closed = 0;
  uint64_t connect_failures = 0;
  uint64_t limit_rejected = 0;
  uint64_t no_original_dst = 0;
  uint64_t direct_refused = 0;        // connections addressed to a proxy port itself (15006/15008)
  uint64_t accept_errors = 0;         // accept failed (fd exhaustion: EMFILE/ENFILE), backed off
  uint64_t certificate_waits = 0;     // connections that waited for their pod's certificate
  uint64_t hbone_tunnels_opened = 0;  // outbound + inbound
  uint64_t hbone_tunnels_accepted = 0;  // inbound TCP connections on 15008
  uint64_t hbone_pending_evicted = 0;   // handshakes closed to stay within the pending bound
  uint64_t hbone_connect_retries = 0;   // tunnel dials retried after 15008 refused
  uint64_t hbone_tunnels_active = 0;
  uint64_t hbone_handshake_failures = 0;  // TLS refused: bad/absent cert, wrong peer, not TLS 1.3
  uint64_t hbone_timeouts = 0;            // handshake or first CONNECT not within the deadline
  uint64_t hbone_bad_requests = 0;        // not a valid CONNECT (protocol errors)
  uint64_t hbone_refused = 0;             // CONNECT answered 401 (target not this pod)
  uint64_t no_certificate = 0;            // the source workload had no certificate yet
  uint64_t no_view = 0;                   // outbound refused: no view of the mesh yet
  uint64_t lb_picks = 0;                  // endpoint choices for Service connections
  uint64_t lb_retries = 0;                // connects retried on another endpoint
  uint64_t lb_no_endpoint = 0;            // Service connections with no endpoint left
  uint64_t lb_ejections = 0;              // endpoints ejected after consecutive failures
};

class Engine {
 public:
  virtual ~Engine() = default;

  // Creates the listeners for pod inside its netns (127.0.0.1:15001 outbound,
  // <ip>:15006 inbound, transparent, and <ip>:15008 HBONE when mTLS is on). Idempotent per uid: a
  // second call with the same uid replaces nothing and succeeds. Fails (and leaves nothing behind)
  // if a listener cannot be created.
  virtual Result<void> addPod(const PodSpec& pod) = 0;
  // Closes the pod's listeners and resets its connections. Unknown uid: no-op.
  virtual void removePod(const std::string& uid) = 0;

  virtual std::vector<ListenerInfo> listeners() const = 0;
  // Open connections plus the most recently closed ones (bounded history).
  virtual std::vector<ConnectionInfo> connections() const = 0;
  virtual EngineStats stats() const = 0;

  // Stops all workers; idempotent; also done by the destructor.
  virtual void stop() = 0;
};

// A directory turns on Service load balancing; credentials + directory turn
// on HBONE: remote meshed destinations go through mTLS tunnels, and each pod
// gets a 15008 listener.
Result<std::unique_ptr<Engine>> createEngine(const EngineConfig& config, OrigDstResolver& resolver,
                                             CredentialSource* credentials = nullptr,
                                             MeshDirectory* directory = nullptr);

}  // namespace sluice::ztunnel
