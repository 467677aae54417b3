// HBONE's bulk path on the rig of hbone_rig.h: the TLS 1.3 cipher suite the
// tunnels agree on, and the HTTP/2 frame size both ends advertise and use.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <nghttp2/nghttp2.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>

#include "ztunnel/hbone/tunnel.h"
#include "ztunnel/hbone_peers.h"
#include "ztunnel/hbone_rig.h"
#include "ztunnel/tls/tls.h"

using namespace hbone_rig;

namespace {

std::string firstSuite(const char* suites) {
  std::string s = suites;
  return s.substr(0, s.find(':'));
}

std::string sha256(const unsigned char* p, size_t n) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(p, n, d);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : d) {
    out += hex[c >> 4];
    out += hex[c & 15];
  }
  return out;
}

// An HBONE server made of plain nghttp2 on Sluice's server SSL_CTX, on a
// thread, for one tunnel after the other (presenting creds[i] on the i-th):
// it advertises SETTINGS_MAX_FRAME_SIZE = Tunnel::kMaxFrameSize, answers the
// CONNECT with 200 and, after the client's END_STREAM, sends back
// "<bytes> <sha256>" of what the stream carried. It notes per tunnel the
// largest DATA frame, the TLS records it read, the client's SETTINGS_MAX_FRAME_SIZE, the cipher,
// whether TLS resumed a session and the client's verified identity.
class DigestServer {
 public:
  struct Seen {
    size_t largest_data_frame = 0;
    size_t records = 0;  // TLS records of application data read (one SSL_read each)
    uint64_t record_bytes = 0;
    uint32_t client_max_frame_size = 0;
    std::string cipher, client;
    bool resumed = false;
  };
  DigestServer(int listener, tls::Contexts& contexts,
               std::vector<std::shared_ptr<const WorkloadCredential>> creds)
      : seen(creds.size()), thread_([this, listener, &contexts, creds] {
          for (; cur_ < seen.size(); ++cur_) run(listener, contexts, creds[cur_]);
        }) {}
  ~DigestServer() { thread_.join(); }
  std::vector<Seen> seen;       // one per tunnel, filled in as they come
  std::atomic<size_t> cur_{0};  // the tunnel being served (seen.size(): all done)

 private:
  void run(int listener, tls::Contexts& contexts, std::shared_ptr<const WorkloadCredential> cred) {
    id_ = -1;
    got_.clear();
    done_ = false;
    pollfd p{listener, POLLIN, 0};
    if (::poll(&p, 1, 10000) <= 0) return;
    UniqueFd fd(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
    if (!fd) return;
    setTimeouts(fd.get(), 10s);
    int one = 1;  // as the agent's sockets: no Nagle wait for the WINDOW_UPDATEs
    setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    Ssl ssl = tlsOn(contexts, cred, fd.get(), true);
    if (!ssl) return;
    seen[cur_].cipher = SSL_CIPHER_get_name(SSL_get_current_cipher(ssl.get()));
    seen[cur_].resumed = SSL_session_reused(ssl.get()) == 1;
    seen[cur_].client = tls::peerIdentity(ssl.get());
    nghttp2_session_callbacks* cbs = nullptr;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, frameRecv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, dataChunk);
    nghttp2_session* s = nullptr;
    nghttp2_session_server_new(&s, cbs, this);
    nghttp2_session_callbacks_del(cbs);
    std::unique_ptr<nghttp2_session, SessionFree> owned(s);
    // Sluice's own windows (EngineConfig), so that flow control does not cut the frames.
    nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, hbone::Tunnel::kMaxFrameSize},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1u << 20}};
    nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, settings, 2);
    nghttp2_session_set_local_window_size(s, NGHTTP2_FLAG_NONE, 0, 16 << 20);
    runSession(s, ssl.get(), [&](size_t n) {
      seen[cur_].records++;
      seen[cur_].record_bytes += n;
    });
  }
  static int frameRecv(nghttp2_session* s, const nghttp2_frame* f, void* ud) {
    auto* self = static_cast<DigestServer*>(ud);
    if (f->hd.type == NGHTTP2_SETTINGS && !(f->hd.flags & NGHTTP2_FLAG_ACK))
      self->seen[self->cur_].client_max_frame_size =
          nghttp2_session_get_remote_settings(s, NGHTTP2_SETTINGS_MAX_FRAME_SIZE);
    if (f->hd.type == NGHTTP2_DATA)
      self->seen[self->cur_].largest_data_frame =
          std::max(self->seen[self->cur_].largest_data_frame, f->hd.length);
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
      self->id_ = f->hd.stream_id;
      nghttp2_nv st{reinterpret_cast<uint8_t*>(const_cast<char*>(":status")),
                    reinterpret_cast<uint8_t*>(const_cast<char*>("200")), 7, 3,
                    NGHTTP2_NV_FLAG_NONE};
      nghttp2_data_provider prd{};
      prd.source.ptr = self;
      prd.read_callback = read;
      nghttp2_submit_response(s, self->id_, &st, 1, &prd);
    }
    if ((f->hd.type == NGHTTP2_DATA || f->hd.type == NGHTTP2_HEADERS) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM) && f->hd.stream_id == self->id_) {
      self->reply_ =
          std::to_string(self->got_.size()) + " " +
          sha256(reinterpret_cast<const unsigned char*>(self->got_.data()), self->got_.size());
      self->done_ = true;
      nghttp2_session_resume_data(s, self->id_);
    }
    return 0;
  }
  static int dataChunk(nghttp2_session*, uint8_t, int32_t, const uint8_t* data, size_t len,
                       void* ud) {
    static_cast<DigestServer*>(ud)->got_.append(reinterpret_cast<const char*>(data), len);
    return 0;
  }
  static ssize_t read(nghttp2_session*, int32_t, uint8_t* buf, size_t len, uint32_t* flags,
                      nghttp2_data_source* src, void*) {
    auto* self = static_cast<DigestServer*>(src->ptr);
    if (!self->done_) return NGHTTP2_ERR_DEFERRED;
    size_t n = std::min(len, self->reply_.size());
    std::memcpy(buf, self->reply_.data(), n);
    self->reply_.erase(0, n);
    if (self->reply_.empty()) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return static_cast<ssize_t>(n);
  }
  int32_t id_ = -1;
  std::string got_, reply_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace

TEST_SUITE("hbone bulk") {
  TEST_CASE("TLS 1.3 prefers AES-128-GCM with AES instructions and the server's order decides") {
    CHECK(firstSuite(tls::cipherSuites(true)) == "TLS_AES_128_GCM_SHA256");
    CHECK(firstSuite(tls::cipherSuites(false)) == "TLS_CHACHA20_POLY1305_SHA256");
    TestCa ca;
    auto contexts = tls::Contexts::create(ca.pem());
    REQUIRE(contexts.has_value());
    auto server_cred = ca.issue(kIdB), client_cred = ca.issue(kIdA);
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    UniqueFd a(sv[0]), b(sv[1]);
    setTimeouts(a.get(), 10s);
    setTimeouts(b.get(), 10s);
    std::string server_cipher;
    std::thread server([&] {
      if (Ssl ssl = tlsOn(**contexts, server_cred, b.get(), true))
        server_cipher = SSL_CIPHER_get_name(SSL_get_current_cipher(ssl.get()));
      ::shutdown(b.get(), SHUT_RDWR);
    });
    // A client that would rather have AES-256-GCM: the server's order wins.
    auto ctx = (*contexts)->get(client_cred, false);
    REQUIRE(ctx.has_value());
    Ssl ssl(SSL_new(*ctx));
    REQUIRE(SSL_set_ciphersuites(
                ssl.get(),
                "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256") == 1);
    SSL_set_fd(ssl.get(), a.get());
    CHECK(SSL_connect(ssl.get()) == 1);
    server.join();
    std::string expected = firstSuite(tls::cipherSuites(tls::aesHardware()));
    CHECK(SSL_CIPHER_get_name(SSL_get_current_cipher(ssl.get())) == expected);
    CHECK(server_cipher == expected);
  }

  TEST_CASE("a DATA frame with its 9-byte header fills whole TLS records where it can") {
    struct Case {
      uint32_t most;
      size_t frame;
    } cases[] = {
        {65536, 65527},     // kMaxFrameSize: four records
        {1u << 20, 65527},  // never above kMaxFrameSize
        {16384, 16375},     // a peer at the protocol's default: one record
        {20000, 16375},     // a window between one and two records
        {32768, 32759},     // two
        {16375, 16375},     // exactly one
        {16374, 16374},     // less than one record's worth: as it is
        {8, 8},
        {1, 1},
    };
    for (const auto& c : cases) {
      CAPTURE(c.most);
      CHECK(hbone::Tunnel::frameLength(c.most) == c.frame);
    }
  }

  TEST_CASE(
      "DATA frames larger than 16 KiB once both ends say SETTINGS_MAX_FRAME_SIZE and arrive "
      "intact") {
    Mesh m;
    m.server_paused = true;  // the DigestServer answers on pod B's 15008 instead
    DigestServer peer(m.hbone_listener.get(), *m.tls, {m.creds.credential(kIdB)});
    UniqueFd app = m.open(makeSockaddr(ip(kAddrB), 8080));
    auto data = pattern(4 << 20, 7);
    std::vector<unsigned char> got;
    Worker w([&] { sendThenDrain(app.get(), data.data(), data.size(), got); });
    REQUIRE(m.pumpUntil([&] { return w.done.load(); }, 20s));
    CHECK(std::string(got.begin(), got.end()) ==
          std::to_string(data.size()) + " " + sha256(data.data(), data.size()));
    REQUIRE(peer.seen.size() == 1);
    CHECK(peer.seen[0].client_max_frame_size == hbone::Tunnel::kMaxFrameSize);
    CHECK(peer.seen[0].largest_data_frame > 16384);
    CHECK(peer.seen[0].largest_data_frame <= hbone::Tunnel::kMaxFrameSize);
    // Each frame's header goes in one record with its payload, and frames
    // fill whole records: no record carries a lone header (that was one
    // record in five).
    CHECK(peer.seen[0].largest_data_frame ==
          hbone::Tunnel::frameLength(hbone::Tunnel::kMaxFrameSize));
    CHECK(peer.seen[0].records * 16384 <= peer.seen[0].record_bytes * 21 / 20 + 16 * 16384);
    CHECK(peer.seen[0].cipher == firstSuite(tls::cipherSuites(tls::aesHardware())));
    m.client->shutdown();  // the DigestServer's thread ends with the tunnel
    m.pumpUntil([&] { return m.client->idle(); }, 5s);
  }

  TEST_CASE("the DATA of one receive reaches the app in one send, not one per TLS record") {
    // A raw HBONE client opens a stream, then sends 8 DATA frames of 2000
    // bytes, each in a TLS record of its own, corked into one TCP segment:
    // the server reads them in one receive. The app counts the segments
    // that brought it data (TCP_INFO; on loopback one send below the MSS
    // is one segment): one send, where a send per record, or one for the
    // first record and one for the rest, makes more.
    Mesh m;
    constexpr size_t kFrames = 8;  // of 2000 bytes
    std::atomic<uint32_t> data_segs{0};
    std::atomic<bool> app_done{false};
    App app(ip(kAddrB), [&](int fd) {
      std::vector<unsigned char> buf(kFrames * 2000);
      size_t got = 0;
      while (got < buf.size()) {
        ssize_t k = ::recv(fd, buf.data() + got, buf.size() - got, 0);
        if (k <= 0) break;
        got += static_cast<size_t>(k);
      }
      // glibc's tcp_info ends before the kernel's later fields.
      struct {
        tcp_info base;
        uint64_t pacing_rate, max_pacing_rate, bytes_acked, bytes_received;
        uint32_t segs_out, segs_in, notsent_bytes, min_rtt, data_segs_in;
      } ti{};
      static_assert(sizeof(tcp_info) % 8 == 0, "the kernel's next field is 64-bit aligned");
      socklen_t len = sizeof(ti);
      if (got == buf.size() && ::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 &&
          len == sizeof(ti))
        data_segs = ti.data_segs_in;
      app_done = true;
    });
    RawClient h2;
    REQUIRE(rawPeer(m, [&](SSL* ssl) {
      h2.corkedData(ssl, formatEndpoint(makeSockaddr(ip(kAddrB), app.port)), kFrames, 2000,
                    [&] { return app_done.load(); });
    }));
    CHECK(h2.status == "200");
    REQUIRE(app_done);
    CHECK(data_segs.load() == 1u);
  }

  TEST_CASE("the HBONE server advertises SETTINGS_MAX_FRAME_SIZE and carries large frames intact") {
    Mesh m;
    App echo(ip(kAddrB), App::echo);
    UniqueFd app = m.open(makeSockaddr(ip(kAddrB), echo.port));
    auto data = pattern(3 << 20, 11);
    std::vector<unsigned char> got;
    Worker w([&] { sendThenDrain(app.get(), data.data(), data.size(), got); });
    REQUIRE(m.pumpUntil([&] { return w.done.load(); }, 20s));
    CHECK(got == data);  // both ways through Sluice's client and server, 64 KiB frames
    // What the server says, seen by a plain nghttp2 client.
    UniqueFd fd = connectTo(localOf(m.hbone_listener.get()));
    setTimeouts(fd.get(), 10s);
    uint32_t server_max = 0;
    Worker raw([&] {
      Ssl ssl = tlsOn(*m.tls, m.creds.credential(kIdA), fd.get(), false);
      if (!ssl) return;
      auto s = clientSession(
          &server_max,
          [](nghttp2_session* s, const nghttp2_frame* f, void* ud) {
            if (f->hd.type == NGHTTP2_SETTINGS && !(f->hd.flags & NGHTTP2_FLAG_ACK)) {
              *static_cast<uint32_t*>(ud) =
                  nghttp2_session_get_remote_settings(s, NGHTTP2_SETTINGS_MAX_FRAME_SIZE);
              nghttp2_session_terminate_session(s, NGHTTP2_NO_ERROR);
            }
            return 0;
          },
          nullptr);
      runSession(s.get(), ssl.get());
    });
    REQUIRE(m.pumpUntil([&] { return raw.done.load(); }, 10s));
    CHECK(server_max == hbone::Tunnel::kMaxFrameSize);
  }

  TEST_CASE("a new tunnel to a known peer resumes TLS and the peer's identity is still checked") {
    Mesh m;
    m.server_paused = true;  // the DigestServer answers on pod B's 15008 instead
    auto other = m.ca.issue("spiffe://cluster.local/ns/b/sa/other");
    DigestServer peer(m.hbone_listener.get(), *m.tls,
                      {m.creds.credential(kIdB), m.creds.credential(kIdB), other});
    const std::string text = "resume me";
    const std::string digest =
        std::to_string(text.size()) + " " +
        sha256(reinterpret_cast<const unsigned char*>(text.data()), text.size());
    auto exchange = [&] {
      UniqueFd app = m.open(makeSockaddr(ip(kAddrB), 8080));
      std::vector<unsigned char> got;
      Worker w([&] { sendThenDrain(app.get(), text.data(), text.size(), got); });
      REQUIRE(m.pumpUntil([&] { return w.done.load(); }, 10s));
      m.client->removePod(m.pod_a->spec.uid);  // the tunnel closes; its ticket stays
      REQUIRE(m.pumpUntil([&] { return m.cs->count(Counter::kTunnelsActive) == 0; }, 5s));
      return std::string(got.begin(), got.end());
    };
    CHECK(exchange() == digest);  // a full handshake; the server sends a ticket
    CHECK(exchange() == digest);  // resumed
    // The same address now presents another identity: the client offers its
    // ticket, the peer cannot take it (other keys) and the full handshake
    // shows an identity the client does not expect: refused.
    CHECK(exchange().empty());
    m.client->shutdown();
    m.pumpUntil([&] { return m.client->idle(); }, 5s);
    REQUIRE(m.pumpUntil([&] { return peer.cur_ == 3; }, 5s));
    CHECK_FALSE(peer.seen[0].resumed);
    CHECK(peer.seen[1].resumed);
    CHECK(peer.seen[1].client == kIdA);  // the client's identity travels in the session
    CHECK_FALSE(peer.seen[2].resumed);
    CHECK(m.cs->count(Counter::kHandshakeFailures) == 1);
  }
}
