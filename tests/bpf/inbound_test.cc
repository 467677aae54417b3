#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>
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
};

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
  const size_t ip_len = v6 ? sizeof(ip6) + ext_len : sizeof(ip);
  std::vector<uint8_t> buf(sizeof(eth) + ip_len + sizeof(tcp));
  std::memcpy(buf.data(), &eth, sizeof(eth));
  if (v6) {
    std::memcpy(buf.data() + sizeof(eth), &ip6, sizeof(ip6));
    if (ext_len) std::memcpy(buf.data() + sizeof(eth) + sizeof(ip6), ext.data(), ext_len);
  } else {
    std::memcpy(buf.data() + sizeof(eth), &ip, sizeof(ip));
  }
  std::memcpy(buf.data() + sizeof(eth) + ip_len, &tcp, sizeof(tcp));
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
        {"syn without a 15006 listener is counted",
         {"10.77.1.9", "10.77.1.5", 8080, true, false},
         SLUICE_STAT_TC_NO_LISTENER},
    };
    for (const auto& c : cases) {
      CAPTURE(c.name);
      auto [verdict, delta] = run(loader, pod.fd(), c.pkt);
      CHECK(verdict == 0 /*TC_ACT_OK*/);
      CHECK(delta[c.expect] == 1);
      CHECK(delta[SLUICE_STAT_TC_ASSIGNED] == 0);
    }

    // IPv6: a SYN to the pod that no [pod-v6]:15006 listener takes is
    // dropped (fail closed: it would bypass mTLS and policy) and counted;
    // the proxy's ports, excluded ports and everything but a SYN pass.
    constexpr size_t kNoListener6 = agent::bpf::kStat6Base + SLUICE_STAT6_TC_NO_LISTENER;
    constexpr size_t kHidden6 = agent::bpf::kStat6Base + SLUICE_STAT6_TC_HIDDEN_DROPPED;
    struct Case6 {
      const char* name;
      Packet pkt;
      int verdict;
      size_t expect;  // the one counter that moves
    };
    const Case6 cases6[] = {
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
    for (const auto& c : cases6) {
      CAPTURE(c.name);
      auto [verdict, delta] = run(loader, pod.fd(), c.pkt);
      CHECK(verdict == c.verdict);
      for (size_t i = 0; i < delta.size(); ++i) {
        CAPTURE(i);
        CHECK(delta[i] == (i == c.expect ? 1u : 0u));
      }
    }

    // With the proxy's transparent listener present the SYN is steered to it.
    auto s = socketInNetns(pod.fd(), AF_INET, SOCK_STREAM, 0);
    REQUIRE(s.has_value());
    int one = 1;
    REQUIRE(setsockopt(s->get(), SOL_IP, IP_TRANSPARENT, &one, sizeof(one)) == 0);
    auto sa = makeSockaddr(*parseIp4("10.77.1.5"), SLUICE_INBOUND_PORT);
    REQUIRE(::bind(s->get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0);
    REQUIRE(::listen(s->get(), 16) == 0);
    auto [verdict, delta] = run(loader, pod.fd(), {"10.77.1.9", "10.77.1.5", 8080, true, false});
    CHECK(verdict == 0);
    // BPF_PROG_TEST_RUN does not run at tc ingress, so bpf_sk_assign refuses
    // (-EOPNOTSUPP) and the packet passes; the listener lookup itself must
    // have succeeded (no NO_LISTENER). Real assignment is covered end to end.
    CHECK(delta[SLUICE_STAT_TC_NO_LISTENER] == 0);
    CHECK(delta[SLUICE_STAT_TC_ASSIGNED] + delta[SLUICE_STAT_TC_PASSED] == 1);

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
    auto attached = bpf.loader->attachTc(pod.fd(), "eth0");
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
