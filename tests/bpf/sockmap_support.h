// Shared by the sockmap BPF tests (sockmap_test.cc, splice_test.cc): real
// sockets in a scratch netns, byte streams checked by checksum, the proxy's
// relay played by a thread.
#pragma once

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <sstream>
#include <thread>
#include <vector>

#include "agent/bpf/loader.h"
#include "agent/bpf/stat_names.h"
#include "sluice/common/addr.h"
#include "support/bpf_env.h"
#include "support/scratch_netns.h"

namespace sluice::test {

using agent::bpf::BpfMap;
using agent::bpf::Loader;

inline constexpr uint64_t kMiB = 1024 * 1024;

// Tcp OutSegs of the netns: every TCP segment its sockets sent.
inline uint64_t outSegs(int netns) {
  uint64_t segs = 0;
  auto r = runInNetns(netns, [&] {
    std::ifstream snmp("/proc/thread-self/net/snmp");
    std::string header, values;
    while (std::getline(snmp, header) && std::getline(snmp, values)) {
      if (header.rfind("Tcp:", 0) != 0) continue;
      std::istringstream h(header), v(values);
      std::string name, value;
      while (h >> name && v >> value)
        if (name == "OutSegs") segs = std::stoull(value);
    }
  });
  REQUIRE(r.has_value());
  REQUIRE(segs > 0);
  return segs;
}

// A socket's sockhash key: its own end, then its peer.
inline sluice_pair_key keyOf(int fd, uint64_t netns_cookie) {
  auto local = localOf(fd);
  auto peer = peerOf(fd);
  return {netns_cookie,   local.sin_addr.s_addr, peer.sin_addr.s_addr,
          local.sin_port, peer.sin_port,         0};
}

// A captured app socket's key: its getpeername() answers the original
// destination (getpeername4) and its getsockname() its pod address
// (getsockname4); its real ends are 127.0.0.1:PORT and the proxy's
// 127.0.0.1:15001 (getsockname keeps the port).
inline sluice_pair_key appKey(int fd, uint64_t netns_cookie) {
  auto local = localOf(fd);
  return {netns_cookie,   htonl(INADDR_LOOPBACK),      htonl(INADDR_LOOPBACK),
          local.sin_port, htons(SLUICE_OUTBOUND_PORT), 0};
}

// A hung stream fails the test instead of hanging it (not a timing check).
inline void guard(int fd) {
  timeval tv{30, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

inline uint64_t fnv(uint64_t h, const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}
inline constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ULL;

struct Transfer {
  uint64_t sent = 0, received = 0;
  uint64_t sent_sum = kFnvBasis, received_sum = kFnvBasis;
  uint64_t partial_writes = 0;
  uint64_t empty_reads = 0;  // readable by poll(), EAGAIN by recv()
  bool eof = false;
  int read_error = 0;
};

// Writes `bytes` of a pseudo-random pattern from `from` (non-blocking, in
// sizes from 1 byte to 1 MiB + 7, so the kernel may take part of a write),
// then shuts its write side; reads everything at `to` until EOF, pausing
// 1 ms every `pause_every` bytes (a slow reader) when non-zero; the writer
// pauses 1 ms after every `write_pause_every` bytes when non-zero.
inline Transfer transfer(int from, int to, uint64_t bytes, uint64_t pause_every = 0,
                         uint64_t write_pause_every = 0) {
  Transfer t;
  std::thread writer([&] {
    int flags = fcntl(from, F_GETFL);
    fcntl(from, F_SETFL, flags | O_NONBLOCK);
    const size_t sizes[] = {1, 1000, 65536, kMiB + 7, 4096, 300000};
    std::vector<uint8_t> buf(kMiB + 7);
    uint64_t x = 88172645463325252ULL;
    size_t which = 0;
    uint64_t written_since = 0;
    while (t.sent < bytes) {
      size_t want = std::min<uint64_t>(sizes[which++ % std::size(sizes)], bytes - t.sent);
      for (size_t i = 0; i < want; ++i) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        buf[i] = static_cast<uint8_t>(x);
      }
      size_t off = 0;
      while (off < want) {
        ssize_t n = ::send(from, buf.data() + off, want - off, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
          pollfd p{from, POLLOUT, 0};
          ::poll(&p, 1, 30000);
          continue;
        }
        if (n <= 0) return;
        if (static_cast<size_t>(n) < want - off) ++t.partial_writes;
        off += n;
      }
      t.sent_sum = fnv(t.sent_sum, buf.data(), want);
      t.sent += want;
      written_since += want;
      if (write_pause_every && written_since >= write_pause_every) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        written_since = 0;
      }
    }
    fcntl(from, F_SETFL, flags);
    ::shutdown(from, SHUT_WR);
  });
  std::vector<uint8_t> buf(256 * 1024);
  uint64_t since_pause = 0;
  for (;;) {
    // Wait for readiness, then read without blocking, as the proxy (io_uring)
    // and event-driven apps do: on a sockhash socket a blocking recv() can
    // return EAGAIN after a wakeup that brought no data (tcp_bpf_recvmsg
    // waits once; docs/architecture.md).
    pollfd p{to, POLLIN, 0};
    ::poll(&p, 1, 30000);
    ssize_t n = ::recv(to, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n == 0) {
      t.eof = true;
      break;
    }
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        ++t.empty_reads;
        if (t.empty_reads > 1000000) {
          t.read_error = errno;
          break;
        }
        continue;
      }
      t.read_error = errno;
      break;
    }
    t.received_sum = fnv(t.received_sum, buf.data(), n);
    t.received += n;
    since_pause += n;
    if (pause_every && since_pause >= pause_every) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      since_pause = 0;
    }
  }
  writer.join();
  return t;
}

inline void checkComplete(const Transfer& t, uint64_t bytes) {
  CHECK(t.read_error == 0);
  CHECK(t.eof);
  CHECK(t.sent == bytes);
  CHECK(t.received == bytes);
  CHECK(t.received_sum == t.sent_sum);
}

// An enrolled pod netns with the proxy's 127.0.0.1:15001 listener.
struct Pod {
  ScratchNetns ns;
  uint64_t cookie = 0;
  UniqueFd proxy_listener;
  explicit Pod(Loader& loader) {
    ns.sh("ip addr add 10.77.0.5/32 dev lo && ip addr add 10.77.0.9/32 dev lo");
    auto c = netnsCookie(ns.fd());
    REQUIRE(c.has_value());
    cookie = *c;
    REQUIRE(
        loader.enrolled().update(cookie, sluice_enrolled{*parseIp4("10.77.0.5"), 0}).has_value());
    proxy_listener = listenIn(ns.fd(), "127.0.0.1", SLUICE_OUTBOUND_PORT, SLUICE_MARK_MINE);
  }
  // An app connection captured to the proxy: {app socket, proxy's accepted}.
  std::pair<UniqueFd, UniqueFd> outbound() {
    auto app = connectIn(ns.fd(), "10.77.0.9", 8080);
    UniqueFd accepted(::accept(proxy_listener.get(), nullptr, nullptr));
    REQUIRE(accepted);
    guard(app.get());
    guard(accepted.get());
    return {std::move(app), std::move(accepted)};
  }
};

// The proxy's relay for one direction, as the engine does it: waits for
// readiness, reads without blocking, writes everything on, and passes the
// end of the stream on (EOF -> shutdown of the write side). `written` is
// told the bytes written on so far, once before the first read and after
// every write; a set `stop` ends it (checked every 100 ms).
struct Relayed {
  uint64_t moved = 0;
  int error = 0;  // errno of a failed read or write; 0: EOF passed on, or stopped
};
inline Relayed relay(int from, int to, const std::function<void(uint64_t)>& written = {},
                     const std::atomic<bool>* stop = nullptr) {
  std::vector<uint8_t> buf(256 * 1024);
  Relayed r;
  if (written) written(0);
  auto stopped = [&] { return stop && stop->load(); };
  for (;;) {
    pollfd p{from, POLLIN, 0};
    ::poll(&p, 1, stop ? 100 : 30000);
    if (stopped()) return r;
    ssize_t n = ::recv(from, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      r.error = errno;
      return r;
    }
    for (ssize_t off = 0; off < n;) {
      ssize_t w = ::send(to, buf.data() + off, n - off, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
        pollfd q{to, POLLOUT, 0};
        ::poll(&q, 1, 100);
        if (stopped()) return r;
        continue;
      }
      if (w <= 0) {
        r.error = w < 0 ? errno : EPIPE;
        return r;
      }
      off += w;
      r.moved += w;
      if (written) written(r.moved);
    }
  }
  ::shutdown(to, SHUT_WR);
  return r;
}

// A non-blocking writer with the smallest send buffer whose reader has
// stopped: it writes 1 MiB chunks until the kernel pushes back (a short send
// or EAGAIN) or `bound` bytes; then the reader drains while the writer finishes its chunk and 16
// more, and shuts its write side.
struct StoppedReader {
  uint64_t queued = 0;               // written before the first push-back
  uint64_t partial = 0, eagain = 0;  // of the first push-back
  uint64_t sent = 0, sent_sum = kFnvBasis;
  uint64_t received = 0, received_sum = kFnvBasis;
  int write_error = 0, read_error = 0;
  bool writer_done = false;  // wrote all its chunks
};
inline StoppedReader stoppedReader(int from, int to, uint64_t bound) {
  StoppedReader r;
  int small = 1;  // the kernel rounds up to its minimum (SOCK_MIN_SNDBUF)
  REQUIRE(setsockopt(from, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) == 0);
  int flags = fcntl(from, F_GETFL);
  REQUIRE(fcntl(from, F_SETFL, flags | O_NONBLOCK) == 0);
  std::vector<uint8_t> buf(kMiB + 7);
  uint64_t x = 88172645463325252ULL;
  size_t pending = 0, off = 0;  // the current chunk and how much of it is written
  auto refill = [&] {
    for (auto& b : buf) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      b = static_cast<uint8_t>(x);
    }
    r.sent_sum = fnv(r.sent_sum, buf.data(), buf.size());
    pending = buf.size();
    off = 0;
  };
  // One step of the writer: false when the kernel pushed back (counted).
  auto step = [&](uint64_t* partial, uint64_t* eagain) -> bool {
    if (off == pending) refill();
    ssize_t n = ::send(from, buf.data() + off, pending - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN)
        ++*eagain;
      else
        r.write_error = errno;
      return false;
    }
    off += n;
    r.sent += n;
    if (off < pending) ++*partial;
    return off == pending;
  };
  while (r.sent < bound && step(&r.partial, &r.eagain)) {
  }
  REQUIRE(r.write_error == 0);
  r.queued = r.sent;
  std::atomic<bool> reading{true};
  std::thread writer([&] {
    uint64_t chunks = 0, partial = 0, eagain = 0;
    while ((chunks < 16 || off < pending) && !r.write_error && reading) {
      if (off == pending) ++chunks;
      if (!step(&partial, &eagain)) {
        pollfd p{from, POLLOUT, 0};
        ::poll(&p, 1, 1000);
      }
    }
    r.writer_done = chunks >= 16 && off == pending && !r.write_error;
    fcntl(from, F_SETFL, flags);
    ::shutdown(from, SHUT_WR);
  });
  std::vector<uint8_t> in(256 * 1024);
  for (int empty = 0; empty < 1000000;) {
    pollfd p{to, POLLIN, 0};
    ::poll(&p, 1, 30000);
    ssize_t n = ::recv(to, in.data(), in.size(), MSG_DONTWAIT);
    if (n == 0) break;
    if (n < 0) {
      if (errno != EAGAIN) {
        r.read_error = errno;
        break;
      }
      ++empty;
      continue;
    }
    r.received_sum = fnv(r.received_sum, in.data(), n);
    r.received += n;
  }
  reading = false;  // a reader that gave up stops the writer too
  writer.join();
  return r;
}

// What a stopped reader's writer may queue before the kernel pushes back:
// the redirect queues of both hops (SLUICE_SOCKMAP_QUEUE_LIMIT and one send
// each; a spliced pair first fills SLUICE_SPLICE_QUEUE_LIMIT), the loopback
// TCP buffers after them (tcp_rmem/tcp_wmem maxima, 6 + 4 MiB per hop) and
// the relay's buffer, with room to spare.
inline constexpr uint64_t kPushBackWithin = 64 * kMiB;

// What every stopped-reader case asserts: pushed back after more than the
// bound (the first redirected bytes queue up to it) and within
// kPushBackWithin, nothing failed, every byte arrived in order.
inline void checkPushedBack(const StoppedReader& r) {
  MESSAGE("stopped reader: " << r.queued / kMiB << " MiB queued before the push-back (" << r.partial
                             << " partial, " << r.eagain << " EAGAIN); " << r.sent
                             << " bytes in all");
  CHECK(r.partial + r.eagain > 0);
  CHECK(r.queued < kPushBackWithin);
  CHECK(r.queued > SLUICE_SOCKMAP_QUEUE_LIMIT);  // redirected first: the check above can fail
  CHECK(r.write_error == 0);
  CHECK(r.read_error == 0);
  CHECK(r.writer_done);
  CHECK(r.received == r.sent);
  CHECK(r.received_sum == r.sent_sum);
}

// A stream of a known pattern (byte i is patternByte(i)) from `from` to
// `to`, moved a step at a time: sendUpTo() writes, without blocking, what
// the kernel takes now; readAll() reads what arrives until nothing more
// comes for 100 ms, counting bytes out of order.
inline uint8_t patternByte(uint64_t i) { return static_cast<uint8_t>((i * 2654435761ULL) >> 13); }
struct PatternStream {
  int from, to;
  uint64_t sent = 0, received = 0, mismatched = 0;
  void sendUpTo(uint64_t upto) {
    std::vector<uint8_t> buf(64 * 1024);
    while (sent < upto) {
      size_t n = std::min<uint64_t>(buf.size(), upto - sent);
      for (size_t k = 0; k < n; ++k) buf[k] = patternByte(sent + k);
      ssize_t w = ::send(from, buf.data(), n, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w <= 0) break;
      sent += w;
    }
  }
  void readAll() {
    std::vector<uint8_t> in(256 * 1024);
    for (;;) {
      pollfd p{to, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) return;
      ssize_t n = ::recv(to, in.data(), in.size(), MSG_DONTWAIT);
      if (n <= 0) return;
      for (ssize_t k = 0; k < n; ++k) mismatched += in[k] != patternByte(received + k);
      received += n;
    }
  }
};

// The counters of sluice_stats4_v1 (enum sluice_stat4).
inline uint64_t stat4(const LoadedCapture& bpf, uint32_t stat) {
  return bpf.loader->stats()[agent::bpf::kStat4Base + stat];
}

inline BpfMap<sluice_pair_key, __u64> sockhash(const LoadedCapture& bpf) {
  auto m = BpfMap<sluice_pair_key, __u64>::openPinned(bpf.pin + "/sluice_sockhash_v1");
  REQUIRE_MESSAGE(m.has_value(), (m ? "" : m.error().describe()));
  return std::move(*m);
}

inline uint64_t sockhashEntries(const LoadedCapture& bpf) { return sockhash(bpf).entries().size(); }

inline uint64_t hopBehindEntries(const LoadedCapture& bpf) {
  auto m = BpfMap<sluice_pair_key, uint8_t>::openPinned(bpf.pin + "/sluice_hop_behind_v1");
  REQUIRE_MESSAGE(m.has_value(), (m ? "" : m.error().describe()));
  return m->entries().size();
}

}  // namespace sluice::test
