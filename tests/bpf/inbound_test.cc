#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <thread>
#include <vector>

#include "agent/bpf/loader.h"
#include "agent/bpf/stat_names.h"
#include "sluice/common/addr.h"
#include "sluice/common/ip6.h"
#include "support/bpf_env.h"
#include "support/eventually.h"
#include "support/scratch_netns.h"

using namespace sluice;
using sluice::agent::bpf::Loader;

namespace {

struct Packet {
  const char* src;
  const char* dst;
  uint16_t dport;
  bool syn;
  bool ack;
  uint8_t proto = IPPROTO_TCP;
  bool hop_by_hop = false;  // IPv6: an 8-byte hop-by-hop header before the L4 one
  // IPv6: this many 8-byte destination-options headers, then a fragment
  // header when fragment, before the L4 one.
  int dest_opts = 0;
  bool fragment = false;
  // IPv4: the frag_off field, host order (kMoreFragments, kDontFragment,
  // offset in 8-byte units).
  uint16_t frag_off = 0;
};
constexpr uint16_t kMoreFragments = 0x2000;
constexpr uint16_t kDontFragment = 0x4000;

// The headers are built as objects and copied in: past the 14-byte Ethernet
// header the IP header is not 4-byte aligned, so it cannot be written in place.
// An Ethernet/IPv6 packet when p.src is an IPv6 address, else Ethernet/IPv4.
std::vector<uint8_t> build(const Packet& p) {
  const bool v6 = std::strchr(p.src, ':') != nullptr;
  ethhdr eth{};
  eth.h_proto = htons(v6 ? ETH_P_IPV6 : ETH_P_IP);
  iphdr ip{};
  ip.version = 4;
  ip.ihl = 5;
  ip.ttl = 64;
  ip.protocol = p.proto;
  ip.frag_off = htons(p.frag_off);
  ip.tot_len = htons(sizeof(iphdr) + sizeof(tcphdr));
  ipv6hdr ip6{};
  ip6.version = 6;
  ip6.hop_limit = 64;
  // The extension headers, each 8 bytes, chained: hop-by-hop and
  // destination options carry a PadN option of 4 bytes (length 0: 8 bytes);
  // a fragment header here is the first fragment (offset 0, more to come).
  std::array<uint8_t, 8 * 8> ext{};
  size_t ext_len = 0;
  uint8_t* next = &ip6.nexthdr;  // the last header's next-header byte
  auto chain = [&](uint8_t type, const std::array<uint8_t, 8>& h) {
    REQUIRE(ext_len + h.size() <= ext.size());
    *next = type;
    next = &ext[ext_len];
    std::copy(h.begin(), h.end(), ext.begin() + static_cast<ptrdiff_t>(ext_len));
    ext_len += h.size();
  };
  if (p.hop_by_hop) chain(0, {0, 0, 1, 4, 0, 0, 0, 0});
  for (int i = 0; i < p.dest_opts; ++i) chain(60, {0, 0, 1, 4, 0, 0, 0, 0});
  if (p.fragment) chain(44, {0, 0, 0, 1 /* M */, 0, 0, 0, 7 /* id */});
  *next = p.proto;
  ip6.payload_len = htons(static_cast<uint16_t>(ext_len + sizeof(tcphdr)));
  if (v6) {
    ip6.saddr = *parseIp6(p.src);
    ip6.daddr = *parseIp6(p.dst);
  } else {
    ip.saddr = *parseIp4(p.src);
    ip.daddr = *parseIp4(p.dst);
  }
  tcphdr tcp{};
  tcp.source = htons(40000);
  tcp.dest = htons(p.dport);
  tcp.doff = 5;
  tcp.syn = p.syn;
  tcp.ack = p.ack;
  tcp.window = htons(65535);
  // Appended (not copied into a sized buffer: GCC's -Warray-bounds then
  // misreads the inlined copies).
  std::vector<uint8_t> buf;
  auto append = [&buf](const void* from, size_t len) {
    const auto* b = static_cast<const uint8_t*>(from);
    buf.insert(buf.end(), b, b + len);
  };
  append(&eth, sizeof(eth));
  if (v6) {
    append(&ip6, sizeof(ip6));
    append(ext.data(), ext_len);
  } else {
    append(&ip, sizeof(ip));
  }
  append(&tcp, sizeof(tcp));
  return buf;
}

// Runs the tc program once on pkt inside netns; returns (verdict, stats delta).
std::pair<int, std::vector<uint64_t>> run(Loader& loader, int netns, const Packet& p) {
  auto before = loader.stats();
  auto pkt = build(p);
  int verdict = -1;
  int err = 0;
  auto r = runInNetns(netns, [&] {
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = pkt.data(),
                .data_size_in = static_cast<__u32>(pkt.size()), .repeat = 1);
    err = bpf_prog_test_run_opts(loader.tcProgramFd(), &opts);
    verdict = static_cast<int>(opts.retval);
  });
  REQUIRE(r.has_value());
  REQUIRE_MESSAGE(err == 0, "BPF_PROG_TEST_RUN failed: " << strerror(-err));
  auto after = loader.stats();
  std::vector<uint64_t> delta(after.size());
  for (size_t i = 0; i < after.size(); ++i) delta[i] = after[i] - before[i];
  return {verdict, delta};
}

// The one's-complement sum of 16-bit big-endian words (RFC 1071), unfolded.
uint32_t sum16(const uint8_t* data, size_t len, uint32_t sum = 0) {
  for (size_t i = 0; i + 1 < len; i += 2) sum += (uint32_t{data[i]} << 8) | data[i + 1];
  if (len % 2) sum += uint32_t{data[len - 1]} << 8;
  return sum;
}

// The Internet checksum of an unfolded sum16(), in network order.
uint16_t checksum(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return htons(static_cast<uint16_t>(~sum));
}

// A 40-byte TCP SYN header (an MSS option, then NOPs) from src:sport to
// dst:dport (addresses in network order), its checksum set.
std::vector<uint8_t> tcpSyn(uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport) {
  tcphdr tcp{};
  tcp.source = htons(sport);
  tcp.dest = htons(dport);
  tcp.seq = htonl(1000);
  tcp.doff = 10;
  tcp.syn = 1;
  tcp.window = htons(65535);
  std::vector<uint8_t> seg(40, 1 /* NOP */);
  std::memcpy(seg.data(), &tcp, sizeof(tcp));
  const uint8_t mss[4] = {2, 4, 0x05, 0xb4};  // MSS 1460
  std::memcpy(seg.data() + sizeof(tcp), mss, sizeof(mss));
  uint8_t pseudo[12] = {};
  std::memcpy(pseudo, &src, 4);
  std::memcpy(pseudo + 4, &dst, 4);
  pseudo[9] = IPPROTO_TCP;
  pseudo[11] = static_cast<uint8_t>(seg.size());
  uint16_t check = checksum(sum16(seg.data(), seg.size(), sum16(pseudo, sizeof(pseudo))));
  std::memcpy(seg.data() + offsetof(tcphdr, check), &check, sizeof(check));
  return seg;
}

// Sends seg as IPv4 packets through a raw socket (the kernel fills in the
// checksum and total length): whole when fragment_at is 0, else as two
// fragments, the first with seg's first fragment_at bytes (a multiple of 8).
void sendRaw(int raw, uint32_t src, uint32_t dst, const std::vector<uint8_t>& seg,
             size_t fragment_at = 0) {
  auto send = [&](size_t from, size_t len, bool more) {
    iphdr ip{};
    ip.version = 4;
    ip.ihl = 5;
    ip.ttl = 64;
    ip.protocol = IPPROTO_TCP;
    ip.id = htons(0x5151);
    ip.frag_off = htons(static_cast<uint16_t>((more ? kMoreFragments : 0) | from / 8));
    ip.saddr = src;
    ip.daddr = dst;
    std::vector<uint8_t> pkt(sizeof(ip) + len);
    std::memcpy(pkt.data(), &ip, sizeof(ip));
    std::memcpy(pkt.data() + sizeof(ip), seg.data() + from, len);
    sockaddr_in to = makeSockaddr(dst, 0);
    REQUIRE(::sendto(raw, pkt.data(), pkt.size(), 0, reinterpret_cast<sockaddr*>(&to),
                     sizeof(to)) == static_cast<ssize_t>(pkt.size()));
  };
  if (fragment_at == 0) return send(0, seg.size(), false);
  REQUIRE(fragment_at % 8 == 0);
  send(0, fragment_at, true);
  send(fragment_at, seg.size() - fragment_at, false);
}

// Reads what a raw IPPROTO_TCP socket holds; true when a SYN-ACK from port
// `from` to port `to` is among it.
bool synAckIn(int rx, uint16_t from, uint16_t to) {
  bool seen = false;
  uint8_t buf[1500];
  ssize_t n;
  while ((n = ::recv(rx, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
    iphdr ip{};
    tcphdr tcp{};
    if (static_cast<size_t>(n) < sizeof(ip)) continue;
    std::memcpy(&ip, buf, sizeof(ip));
    if (static_cast<size_t>(n) < ip.ihl * 4u + sizeof(tcp)) continue;
    std::memcpy(&tcp, buf + ip.ihl * 4, sizeof(tcp));
    if (tcp.syn && tcp.ack && ntohs(tcp.source) == from && ntohs(tcp.dest) == to) seen = true;
  }
  return seen;
}

// A pod (eth0, 10.78.0.5/24) and a peer (peer0, 10.78.0.9/24) on one veth,
// the tc program on the pod's eth0, an app listening on 10.78.0.5:8080 and a
// raw socket in the peer to send crafted IPv4 packets with (sendRaw).
struct VethPod {
  test::ScratchNetns pod, peer;
  test::LoadedCapture bpf;
  UniqueFd app, raw;
  VethPod() {
    pod.sh("ip link add eth0 type veth peer name peer0 && ip link set peer0 netns " + peer.path() +
           " && ip link set eth0 up && ip addr add 10.78.0.5/24 dev eth0");
    peer.sh("ip link set peer0 up && ip addr add 10.78.0.9/24 dev peer0");
    auto attached = bpf.loader->attachInbound(pod.fd(), "eth0");
    REQUIRE_MESSAGE(attached.has_value(), (attached ? "" : attached.error().describe()));
    app = test::listenIn(pod.fd(), "10.78.0.5", 8080);
    auto r = socketInNetns(peer.fd(), AF_INET, SOCK_RAW, IPPROTO_RAW);
    REQUIRE(r.has_value());
    raw = std::move(*r);
  }
};

}  // namespace

TEST_SUITE("inbound.bpf") {
  TEST_CASE("tc ingress verdicts for built packets") {
    test::ScratchNetns pod;
    pod.sh("ip addr add 10.77.1.5/32 dev lo");
    std::string pin = "/sys/fs/bpf/sluice-test-tc-" + std::to_string(::getpid());
    auto loaded = Loader::create({pin, test::cgroup2(), {9999}});
    REQUIRE_MESSAGE(loaded.has_value(), (loaded ? "" : loaded.error().describe()));
    struct Cleanup {
      std::string pin;
      std::unique_ptr<Loader>& l;
      ~Cleanup() {
        l.reset();
        (void)Loader::removePinned(pin);
      }
    } cleanup{pin, *loaded};
    Loader& loader = **loaded;

    struct Case {
      const char* name;
      Packet pkt;
      sluice_stat expect;
      int verdict = 0;  // TC_ACT_OK
    };
    const Case cases[] = {
        {"udp passes",
         {"10.77.1.9", "10.77.1.5", 8080, false, false, IPPROTO_UDP},
         SLUICE_STAT_TC_PASSED},
        {"syn-ack passes", {"10.77.1.9", "10.77.1.5", 8080, true, true}, SLUICE_STAT_TC_PASSED},
        {"plain ack passes", {"10.77.1.9", "10.77.1.5", 8080, false, true}, SLUICE_STAT_TC_PASSED},
        {"syn to hbone port passes",
         {"10.77.1.9", "10.77.1.5", 15008, true, false},
         SLUICE_STAT_TC_PASSED},
        {"syn to excluded port passes",
         {"10.77.1.9", "10.77.1.5", 9999, true, false},
         SLUICE_STAT_TC_PASSED},
        {"syn without a 15006 listener is dropped (fail closed) and counted",
         {"10.77.1.9", "10.77.1.5", 8080, true, false},
         SLUICE_STAT_TC_NO_LISTENER,
         2 /*TC_ACT_SHOT*/},
    };
    for (const auto& c : cases) {
      CAPTURE(c.name);
      auto [verdict, delta] = run(loader, pod.fd(), c.pkt);
      CHECK(verdict == c.verdict);
      CHECK(delta[c.expect] == 1);
      CHECK(delta[SLUICE_STAT_TC_ASSIGNED] == 0);
    }

    // IPv4 TCP fragments: the stack would reassemble them and hand a SYN to
    // the app around the mesh, so every one is dropped and counted (the
    // program cannot see a non-first fragment's ports or flags, nor know that
    // a first one is all of the TCP header). Other fragments pass.
    constexpr size_t kFrag4 = agent::bpf::kStat4Base + SLUICE_STAT4_TC_FRAG_DROPPED;
    // A packet, the verdict, and the one counter that moves (every other stays).
    struct VCase {
      const char* name;
      Packet pkt;
      int verdict;
      size_t expect;
    };
    const auto runCases = [&](const auto& cases) {
      for (const VCase& c : cases) {
        CAPTURE(c.name);
        auto [verdict, delta] = run(loader, pod.fd(), c.pkt);
        CHECK(verdict == c.verdict);
        for (size_t i = 0; i < delta.size(); ++i) {
          CAPTURE(i);
          CHECK(delta[i] == (i == c.expect ? 1u : 0u));
        }
      }
    };
    const VCase cases4[] = {
        {"first fragment of a tcp syn is dropped and counted",
         {"10.77.1.9", "10.77.1.5", 8080, true, false, IPPROTO_TCP, false, 0, false,
          kMoreFragments},
         2 /*SHOT*/,
         kFrag4},
        {"non-first (last) fragment of a tcp segment is dropped and counted",
         {"10.77.1.9", "10.77.1.5", 8080, false, false, IPPROTO_TCP, false, 0, false, 3},
         2,
         kFrag4},
        {"middle fragment of a tcp segment is dropped and counted",
         {"10.77.1.9", "10.77.1.5", 8080, false, false, IPPROTO_TCP, false, 0, false,
          kMoreFragments | 3},
         2,
         kFrag4},
        {"first fragment of a tcp ack is dropped too",
         {"10.77.1.9", "10.77.1.5", 8080, false, true, IPPROTO_TCP, false, 0, false,
          kMoreFragments},
         2,
         kFrag4},
        {"tcp fragment to an excluded port is dropped too (its port is not known)",
         {"10.77.1.9", "10.77.1.5", 9999, true, false, IPPROTO_TCP, false, 0, false,
          kMoreFragments},
         2,
         kFrag4},
        {"an unfragmented syn with DF is unchanged (to the hbone port: passed)",
         {"10.77.1.9", "10.77.1.5", 15008, true, false, IPPROTO_TCP, false, 0, false,
          kDontFragment},
         0,
         SLUICE_STAT_TC_PASSED},
        {"an unfragmented ack is unchanged (passed)",
         {"10.77.1.9", "10.77.1.5", 8080, false, true},
         0,
         SLUICE_STAT_TC_PASSED},
        {"udp fragments pass",
         {"10.77.1.9", "10.77.1.5", 8080, false, false, IPPROTO_UDP, false, 0, false,
          kMoreFragments},
         0,
         SLUICE_STAT_TC_PASSED},
    };
    runCases(cases4);

    // IPv6: a SYN to the pod that no [pod-v6]:15006 listener takes is
    // dropped (fail closed: it would bypass mTLS and policy) and counted;
    // the proxy's ports, excluded ports and everything but a SYN pass.
    constexpr size_t kNoListener6 = agent::bpf::kStat6Base + SLUICE_STAT6_TC_NO_LISTENER;
    constexpr size_t kHidden6 = agent::bpf::kStat6Base + SLUICE_STAT6_TC_HIDDEN_DROPPED;
    const VCase cases6[] = {
        {"ipv6 syn without a listener is dropped and counted",
         {"fd00:77::9", "fd00:77::5", 8080, true, false},
         2 /*SHOT*/,
         kNoListener6},
        {"ipv6 syn to hbone port passes",
         {"fd00:77::9", "fd00:77::5", 15008, true, false},
         0,
         SLUICE_STAT_TC_PASSED},
        {"ipv6 syn to 15006 passes",
         {"fd00:77::9", "fd00:77::5", 15006, true, false},
         0,
         SLUICE_STAT_TC_PASSED},
        {"ipv6 syn to excluded port passes",
         {"fd00:77::9", "fd00:77::5", 9999, true, false},
         0,
         SLUICE_STAT_TC_PASSED},
        {"ipv6 syn-ack passes",
         {"fd00:77::9", "fd00:77::5", 8080, true, true},
         0,
         SLUICE_STAT_TC_PASSED},
        {"ipv6 ack passes",
         {"fd00:77::9", "fd00:77::5", 8080, false, true},
         0,
         SLUICE_STAT_TC_PASSED},
        {"ipv6 udp passes",
         {"fd00:77::9", "fd00:77::5", 8080, true, false, IPPROTO_UDP},
         0,
         SLUICE_STAT_TC_PASSED},
        {"ipv6 syn behind a hop-by-hop header is dropped too",
         {"fd00:77::9", "fd00:77::5", 8080, true, false, IPPROTO_TCP, true},
         2,
         kNoListener6},
        // TCP the program cannot see (the stack reassembles fragments and
        // walks any number of extension headers): dropped, counted, never
        // passed to the app around the mesh.
        {"ipv6 tcp behind a fragment header is dropped",
         {"fd00:77::9", "fd00:77::5", 8080, true, false, IPPROTO_TCP, false, 0, true},
         2,
         kHidden6},
        {"ipv6 tcp fragment to an excluded port is dropped too (its port is not known)",
         {"fd00:77::9", "fd00:77::5", 9999, true, false, IPPROTO_TCP, false, 0, true},
         2,
         kHidden6},
        {"ipv6 fragment header before another extension header is dropped",
         {"fd00:77::9", "fd00:77::5", 8080, true, false, IPPROTO_TCP, true, 0, true},
         2,
         kHidden6},
        {"ipv6 syn behind 4 extension headers is walked (no listener: dropped as such)",
         {"fd00:77::9", "fd00:77::5", 8080, true, false, IPPROTO_TCP, true, 3},
         2,
         kNoListener6},
        {"ipv6 tcp behind 5 extension headers is dropped",
         {"fd00:77::9", "fd00:77::5", 8080, true, false, IPPROTO_TCP, true, 4},
         2,
         kHidden6},
        {"ipv6 ack behind 5 extension headers is dropped too",
         {"fd00:77::9", "fd00:77::5", 8080, false, true, IPPROTO_TCP, true, 4},
         2,
         kHidden6},
        {"ipv6 udp behind a fragment header passes",
         {"fd00:77::9", "fd00:77::5", 8080, false, false, IPPROTO_UDP, false, 0, true},
         0,
         SLUICE_STAT_TC_PASSED},
        {"ipv6 udp behind 5 extension headers is dropped (it might have been tcp)",
         {"fd00:77::9", "fd00:77::5", 8080, false, false, IPPROTO_UDP, true, 4},
         2,
         kHidden6},
    };
    runCases(cases6);

    // With the proxy's transparent listener present the SYN is steered to it.
    auto s = socketInNetns(pod.fd(), AF_INET, SOCK_STREAM, 0);
    REQUIRE(s.has_value());
    int one = 1;
    REQUIRE(setsockopt(s->get(), SOL_IP, IP_TRANSPARENT, &one, sizeof(one)) == 0);
    auto sa = makeSockaddr(*parseIp4("10.77.1.5"), SLUICE_INBOUND_PORT);
    REQUIRE(::bind(s->get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0);
    REQUIRE(::listen(s->get(), 16) == 0);
    auto [verdict, delta] = run(loader, pod.fd(), {"10.77.1.9", "10.77.1.5", 8080, true, false});
    // BPF_PROG_TEST_RUN does not run at tc ingress, so bpf_sk_assign refuses
    // (-EOPNOTSUPP) and the SYN is dropped, never passed to the app; the
    // listener lookup itself must have succeeded (no NO_LISTENER). Real
    // assignment: "inbound.bpf ipv4" below.
    const size_t failed4 = agent::bpf::kStat4Base + SLUICE_STAT4_TC_ASSIGN_FAILED;
    CHECK(delta[SLUICE_STAT_TC_NO_LISTENER] == 0);
    CHECK(delta[SLUICE_STAT_TC_PASSED] == 0);
    CHECK(delta[SLUICE_STAT_TC_ASSIGNED] + delta[failed4] == 1);
    CHECK(verdict == (delta[SLUICE_STAT_TC_ASSIGNED] ? 0 : 2));

    // IPv6: [pod-v6]:15006 (IPV6_TRANSPARENT) is found; outside tc ingress
    // bpf_sk_assign refuses, and an IPv6 SYN that cannot be assigned is
    // dropped (counted as such), never passed to the app.
    pod.sh("ip -6 addr add fd00:77::5/128 dev lo nodad");
    auto l6 = test::listen6In(pod.fd(), "fd00:77::5", SLUICE_INBOUND_PORT, 0, true);
    auto [verdict6, delta6] =
        run(loader, pod.fd(), {"fd00:77::9", "fd00:77::5", 8080, true, false});
    CHECK(delta6[kNoListener6] == 0);
    const size_t assigned6 = agent::bpf::kStat6Base + SLUICE_STAT6_TC_ASSIGNED;
    const size_t failed6 = agent::bpf::kStat6Base + SLUICE_STAT6_TC_ASSIGN_FAILED;
    CHECK(delta6[assigned6] + delta6[failed6] == 1);
    CHECK(verdict6 == (delta6[assigned6] ? 0 : 2));
  }
}

TEST_SUITE("inbound.bpf ipv6") {
  // Real sockets across a veth: the tc program at the pod interface's ingress
  // assigns an IPv6 SYN to [pod-v6]:15006, or drops it when nobody listens.
  TEST_CASE("an IPv6 SYN to the pod is assigned to [pod-v6]:15006, else dropped and counted") {
    test::ScratchNetns pod;
    test::ScratchNetns peer;
    pod.sh("ip link add eth0 type veth peer name peer0 && ip link set peer0 netns " + peer.path() +
           " && ip link set eth0 up && ip -6 addr add fd00:78::5/64 dev eth0 nodad");
    peer.sh("ip link set peer0 up && ip -6 addr add fd00:78::9/64 dev peer0 nodad");
    test::LoadedCapture bpf;
    auto attached = bpf.loader->attachInbound(pod.fd(), "eth0");
    REQUIRE_MESSAGE(attached.has_value(), (attached ? "" : attached.error().describe()));
    auto app = test::listen6In(pod.fd(), "fd00:78::5", 8080);
    int flags = fcntl(app.get(), F_GETFL);
    REQUIRE(fcntl(app.get(), F_SETFL, flags | O_NONBLOCK) == 0);
    auto stat = [&](size_t i) { return bpf.loader->stats().at(i); };
    const size_t assigned6 = agent::bpf::kStat6Base + SLUICE_STAT6_TC_ASSIGNED;
    const size_t dropped6 = agent::bpf::kStat6Base + SLUICE_STAT6_TC_NO_LISTENER;

    SUBCASE("assigned: the proxy accepts it, with the original destination as its local end") {
      auto proxy = test::listen6In(pod.fd(), "fd00:78::5", SLUICE_INBOUND_PORT, 0, true);
      auto client = test::connect6In(peer.fd(), "fd00:78::5", 8080);
      UniqueFd a(::accept(proxy.get(), nullptr, nullptr));
      REQUIRE(a.valid());
      CHECK(test::formatEndpoint6(test::local6Of(a.get())) == "[fd00:78::5]:8080");
      CHECK(test::formatEndpoint6(test::peer6Of(a.get())) ==
            test::formatEndpoint6(test::local6Of(client.get())));
      CHECK(::accept(app.get(), nullptr, nullptr) < 0);  // the app never saw it
      CHECK(stat(assigned6) == 1);
      CHECK(stat(SLUICE_STAT_TC_ASSIGNED) == 1);
      CHECK(stat(dropped6) == 0);
    }
    SUBCASE("no listener: dropped (the app never sees it) and counted") {
      auto s = socketInNetns(peer.fd(), AF_INET6, SOCK_STREAM, 0);
      REQUIRE(s.has_value());
      int fl = fcntl(s->get(), F_GETFL);
      REQUIRE(fcntl(s->get(), F_SETFL, fl | O_NONBLOCK) == 0);
      auto sa = test::makeSockaddr6("fd00:78::5", 8080);
      CHECK(::connect(s->get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0);
      CHECK(errno == EINPROGRESS);
      CHECK(testing::eventually([&] { return stat(dropped6) >= 1; }));
      CHECK(::accept(app.get(), nullptr, nullptr) < 0);
      CHECK(stat(assigned6) == 0);
    }
    SUBCASE("an excluded port passes to the app") {
      auto excluded = test::listen6In(pod.fd(), "fd00:78::5", 9999);
      auto client = test::connect6In(peer.fd(), "fd00:78::5", 9999);
      UniqueFd a(::accept(excluded.get(), nullptr, nullptr));
      CHECK(a.valid());
      CHECK(stat(dropped6) == 0);
    }
  }
}

TEST_SUITE("inbound.bpf ipv4") {
  // Real sockets across a veth, as "inbound.bpf ipv6" above.
  struct Wired {
    Wired() {
      pod.sh("ip link add eth0 type veth peer name peer0 && ip link set peer0 netns " +
             peer.path() + " && ip link set eth0 up && ip addr add 10.79.0.5/24 dev eth0");
      peer.sh("ip link set peer0 up && ip addr add 10.79.0.9/24 dev peer0");
    }
    void attach(test::LoadedCapture& bpf) {
      auto attached = bpf.loader->attachInbound(pod.fd(), "eth0");
      REQUIRE_MESSAGE(attached.has_value(), (attached ? "" : attached.error().describe()));
    }
    test::ScratchNetns pod, peer;
  };
  UniqueFd nonBlocking(UniqueFd fd) {
    int flags = fcntl(fd.get(), F_GETFL);
    REQUIRE(fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK) == 0);
    return fd;
  }
  // A connect from the peer that does not wait.
  UniqueFd startConnect(Wired & w) {
    auto s = socketInNetns(w.peer.fd(), AF_INET, SOCK_STREAM, 0);
    REQUIRE(s.has_value());
    UniqueFd fd = nonBlocking(std::move(*s));
    auto sa = makeSockaddr(*parseIp4("10.79.0.5"), 8080);
    int rc = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa));
    REQUIRE((rc == 0 || errno == EINPROGRESS));
    return fd;
  }

  TEST_CASE("no 15006 listener (no agent runs): an IPv4 SYN is dropped, never the app's") {
    Wired w;
    test::LoadedCapture bpf;
    w.attach(bpf);
    auto app = nonBlocking(test::listenIn(w.pod.fd(), "10.79.0.5", 8080));
    auto client = startConnect(w);
    CHECK(testing::eventually(
        [&] { return bpf.loader->stats().at(SLUICE_STAT_TC_NO_LISTENER) >= 1; }));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    CHECK(::accept(app.get(), nullptr, nullptr) < 0);
    // The agent's listener comes back: the SYN's retransmission is its.
    auto proxy = nonBlocking(test::listenIn(w.pod.fd(), "10.79.0.5", SLUICE_INBOUND_PORT, 0, true));
    UniqueFd a;
    CHECK(testing::eventually(
        [&] {
          a = UniqueFd(::accept(proxy.get(), nullptr, nullptr));
          return a.valid();
        },
        std::chrono::seconds(5)));
    CHECK(ntohs(test::localOf(a.get()).sin_port) == 8080);
    CHECK(::accept(app.get(), nullptr, nullptr) < 0);
  }
}

TEST_SUITE("inbound.bpf ipv4 fragments") {
  // An upgrade from a build before sluice_stats4_v1: the next loader creates
  // and pins it beside the pins it re-uses, and the tc program counts in it.
  TEST_CASE("a pin set without sluice_stats4_v1 (an earlier build's) gets it, counting") {
    test::ScratchNetns pod;
    test::LoadedCapture bpf;
    const std::string stats4 = bpf.pin + "/sluice_stats4_v1";
    REQUIRE(bpf.loader->enrolled().update(42, sluice_enrolled{1, 0}).has_value());
    bpf.loader.reset();  // the agent exits; the pins stay
    REQUIRE(::unlink(stats4.c_str()) == 0);
    auto next = Loader::create({bpf.pin, test::cgroup2(), {}});
    REQUIRE_MESSAGE(next.has_value(), (next ? "" : next.error().describe()));
    bpf.loader = std::move(*next);
    CHECK(bpf.loader->enrolled().lookup(42).has_value());  // the older pins re-used
    CHECK(::access(stats4.c_str(), F_OK) == 0);
    const size_t frag4 = agent::bpf::kStat4Base + SLUICE_STAT4_TC_FRAG_DROPPED;
    auto [verdict, delta] = run(*bpf.loader, pod.fd(),
                                {"10.77.1.9", "10.77.1.5", 8080, true, false, IPPROTO_TCP, false, 0,
                                 false, kMoreFragments});
    CHECK(verdict == 2);
    CHECK(delta.size() == agent::bpf::kStats.size());
    CHECK(delta[frag4] == 1);
  }

  // Real packets across a veth: a SYN sent as IPv4 fragments would be
  // reassembled by the pod's stack and answered by the app around the mesh;
  // the tc program drops the fragments, so the app never answers.
  TEST_CASE("a fragmented IPv4 SYN never reaches the app - dropped and counted") {
    VethPod v;
    auto& [pod, peer, bpf, app, raw] = v;
    auto rx = socketInNetns(peer.fd(), AF_INET, SOCK_RAW, IPPROTO_TCP);
    REQUIRE(rx.has_value());
    const uint32_t src = *parseIp4("10.78.0.9");
    const uint32_t dst = *parseIp4("10.78.0.5");
    auto stat = [&](size_t i) { return bpf.loader->stats().at(i); };
    const size_t frag4 = agent::bpf::kStat4Base + SLUICE_STAT4_TC_FRAG_DROPPED;

    // The same SYN whole: assigned to the proxy's listener, which answers
    // (what the fragmented one would get without the drop).
    auto proxy = test::listenIn(pod.fd(), "10.78.0.5", SLUICE_INBOUND_PORT, 0, true);
    sendRaw(raw.get(), src, dst, tcpSyn(src, dst, 41001, 8080));
    CHECK(testing::eventually([&] { return synAckIn(rx->get(), 8080, 41001); }));
    CHECK(stat(frag4) == 0);

    // Fragmented: the first fragment holds 24 bytes of the TCP header.
    sendRaw(raw.get(), src, dst, tcpSyn(src, dst, 41002, 8080), 24);
    CHECK(testing::eventually([&] { return stat(frag4) == 2; }));
    CHECK_FALSE(testing::eventually([&] { return synAckIn(rx->get(), 8080, 41002); },
                                    std::chrono::milliseconds(500)));
    CHECK(stat(SLUICE_STAT_TC_ASSIGNED) == 1);  // the whole SYN's only
  }

  TEST_CASE("an interface without Ethernet headers is refused, not steered blind") {
    VethPod v;
    auto& [pod, peer, bpf, app, raw] = v;
    auto lo = bpf.loader->attachInbound(pod.fd(), "lo");
    REQUIRE_FALSE(lo.has_value());
    CHECK(lo.error().describe().find("interface lo is not an Ethernet device") !=
          std::string::npos);
    CHECK(bpf.loader->attachInbound(pod.fd(), "eth0").has_value());  // again: still fine
  }

  // A second VLAN tag: the stack takes the first off before tc, so tc sees a
  // VLAN frame, not IPv4; after tc it strips the VLAN 0 tag too and hands
  // the SYN to TCP. Sent as an Ethernet frame from a packet socket on the
  // peer's end (as a pod with CAP_NET_RAW on the same bridge could).
  TEST_CASE("a SYN behind two VLAN 0 tags never reaches the app - dropped and counted") {
    VethPod v;
    auto& [pod, peer, bpf, app, raw] = v;
    pod.sh("ip link set eth0 address 02:00:00:00:00:05");
    auto rx = socketInNetns(peer.fd(), AF_INET, SOCK_RAW, IPPROTO_TCP);
    REQUIRE(rx.has_value());
    auto l2 = socketInNetns(peer.fd(), AF_PACKET, SOCK_RAW, 0);
    REQUIRE(l2.has_value());
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, "peer0", IFNAMSIZ - 1);
    REQUIRE(::ioctl(l2->get(), SIOCGIFINDEX, &ifr) == 0);
    sockaddr_ll to{};
    to.sll_family = AF_PACKET;
    to.sll_ifindex = ifr.ifr_ifindex;
    to.sll_halen = ETH_ALEN;
    const uint32_t src = *parseIp4("10.78.0.9");
    const uint32_t dst = *parseIp4("10.78.0.5");
    auto stat = [&](size_t i) { return bpf.loader->stats().at(i); };
    const size_t vlan = agent::bpf::kStat4Base + SLUICE_STAT4_TC_VLAN_DROPPED;
    // dst 02:..:05, src 02:..:09, then the tags (TCI 0: VLAN 0) before IPv4.
    auto frame = [&](uint16_t sport, int tags) {
      std::vector<uint8_t> f = {2, 0, 0, 0, 0, 5, 2, 0, 0, 0, 0, 9};
      for (int i = 0; i < tags; ++i) f.insert(f.end(), {0x81, 0x00, 0x00, 0x00});
      f.insert(f.end(), {0x08, 0x00});
      auto seg = tcpSyn(src, dst, sport, 8080);
      iphdr ip{};
      ip.version = 4;
      ip.ihl = 5;
      ip.ttl = 64;
      ip.protocol = IPPROTO_TCP;
      ip.tot_len = htons(static_cast<uint16_t>(sizeof(ip) + seg.size()));
      ip.saddr = src;
      ip.daddr = dst;
      const auto* b = reinterpret_cast<const uint8_t*>(&ip);
      ip.check = checksum(sum16(b, sizeof(ip)));
      f.insert(f.end(), b, b + sizeof(ip));
      f.insert(f.end(), seg.begin(), seg.end());
      return f;
    };
    auto send = [&](const std::vector<uint8_t>& f) {
      std::memcpy(to.sll_addr, f.data(), ETH_ALEN);
      REQUIRE(::sendto(l2->get(), f.data(), f.size(), 0, reinterpret_cast<const sockaddr*>(&to),
                       sizeof(to)) == static_cast<ssize_t>(f.size()));
    };

    // One VLAN 0 tag, which the stack takes off before tc: steered to the
    // proxy's listener, which answers (the frame is well made).
    auto proxy = test::listenIn(pod.fd(), "10.78.0.5", SLUICE_INBOUND_PORT, 0, true);
    send(frame(41101, 1));
    CHECK(testing::eventually([&] { return synAckIn(rx->get(), 8080, 41101); }));
    CHECK(stat(SLUICE_STAT_TC_ASSIGNED) == 1);
    // Two: dropped at tc, never answered by the app (or the proxy).
    send(frame(41102, 2));
    CHECK(testing::eventually([&] { return stat(vlan) == 1; }));
    CHECK_FALSE(testing::eventually([&] { return synAckIn(rx->get(), 8080, 41102); },
                                    std::chrono::milliseconds(500)));
    CHECK(stat(SLUICE_STAT_TC_ASSIGNED) == 1);
  }

  // A SYN flood from addresses that never answer fills the 15006 listener's
  // SYN queue (its backlog: 16), and the kernel answers the SYNs after it
  // with cookies, which leave no socket. A client's ACK then finds none, and
  // the stack would give it the app's listener, which sent no cookie and
  // resets it: tc checks the cookie and assigns the ACK to the listener.
  TEST_CASE("under a SYN flood a client still reaches the proxy, through a SYN cookie") {
    VethPod v;
    auto& [pod, peer, bpf, app, raw] = v;
    REQUIRE(fcntl(app.get(), F_SETFL, fcntl(app.get(), F_GETFL) | O_NONBLOCK) == 0);
    auto proxy = test::listenIn(pod.fd(), "10.78.0.5", SLUICE_INBOUND_PORT, 0, true);
    const uint32_t dst = *parseIp4("10.78.0.5");
    // 10.78.0.100-163: on the link, never answering ARP: the SYN-ACKs go
    // nowhere and the half-open connections stay queued.
    for (uint32_t i = 0; i < 64; ++i) {
      const uint32_t src = htonl(ntohl(*parseIp4("10.78.0.100")) + i);
      sendRaw(raw.get(), src, dst, tcpSyn(src, dst, static_cast<uint16_t>(42000 + i), 8080));
    }
    const size_t cookies = agent::bpf::kStat4Base + SLUICE_STAT4_TC_COOKIE_ASSIGNED;
    CHECK(bpf.loader->stats().at(cookies) == 0);

    auto client = socketInNetns(peer.fd(), AF_INET, SOCK_STREAM, 0);
    REQUIRE(client.has_value());
    auto to = makeSockaddr(dst, 8080);
    REQUIRE_MESSAGE(::connect(client->get(), reinterpret_cast<sockaddr*>(&to), sizeof(to)) == 0,
                    "connect: " << std::string(strerror(errno)));
    REQUIRE(::send(client->get(), "x", 1, MSG_NOSIGNAL) == 1);
    UniqueFd a;
    CHECK(testing::eventually([&] {
      a = UniqueFd(::accept4(proxy.get(), nullptr, nullptr, SOCK_NONBLOCK));
      return a.valid();
    }));
    REQUIRE(a.valid());
    CHECK(ntohs(test::localOf(a.get()).sin_port) == 8080);  // the original destination
    CHECK(bpf.loader->stats().at(cookies) >= 1);            // it came in through a cookie
    char b = 0;
    CHECK(testing::eventually([&] { return ::recv(a.get(), &b, 1, 0) == 1; }));
    CHECK(b == 'x');
    CHECK(::accept(app.get(), nullptr, nullptr) < 0);  // the app never saw it
  }
}
