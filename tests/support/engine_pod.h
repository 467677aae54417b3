// A pod netns with the real engine's listeners in it, for the root-only
// engine tests: a fake original-destination resolver, the pod (10.77.3.5 on
// a veth, and fd00:77:3::5 when dual stack), and an engine with two workers
// serving it.
#pragma once

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "sluice/common/addr.h"
#include "sluice/common/bpf_abi.h"
#include "sluice/common/netns.h"
#include "sluice/ztunnel/engine.h"
#include "support/eventually.h"
#include "support/scratch_netns.h"

using namespace sluice;  // NOLINT: test support, included by test files only
using namespace std::chrono_literals;

namespace {

// Maps every outbound connection to one configured destination; remembers
// the addresses it was last asked about.
class FakeResolver final : public ztunnel::OrigDstResolver {
 public:
  std::optional<sockaddr_in> originalDst(uint64_t, const sockaddr_in& peer,
                                         const sockaddr_in& local) override {
    {
      std::lock_guard lk(mu);
      asked_peer = peer;
      asked_local = local;
    }
    if (!dst) return std::nullopt;
    return *dst;
  }
  std::optional<sockaddr_in6> originalDst6(uint64_t, const sockaddr_in6&,
                                           const sockaddr_in6&) override {
    return dst6;
  }
  std::optional<sockaddr_in> dst;
  std::optional<sockaddr_in6> dst6;
  std::mutex mu;
  std::optional<SockAddr> asked_peer, asked_local;
};

inline const char* const kPodIp6 = "fd00:77:3::5";

struct Pod {
  test::ScratchNetns ns;
  uint64_t cookie = 0;
  bool dual = false;
  explicit Pod(bool dual_stack = false) : dual(dual_stack) {
    ns.sh(
        "ip link add eth0 type veth peer name peer0 && ip link set eth0 up && ip link set peer0 up "
        "&& "
        "ip addr add 10.77.3.5/24 dev eth0");
    if (dual) ns.sh(std::string("ip -6 addr add ") + kPodIp6 + "/64 dev eth0 nodad");
    cookie = *netnsCookie(ns.fd());
  }
  ztunnel::PodSpec spec() const {
    ztunnel::PodSpec s;
    s.uid = "pod-1";
    s.name_namespace = "test/pod";
    s.service_account = "default";
    s.identity = "spiffe://cluster.local/ns/test/sa/default";
    s.ip4 = *parseIp4("10.77.3.5");
    if (dual) s.ip6 = *IpAddr::parse(kPodIp6);
    s.netns_cookie = cookie;
    s.netns_fd = ns.fd();
    return s;
  }
  UniqueFd listen(uint16_t port, int backlog = 128) {
    auto s = socketInNetns(ns.fd(), AF_INET, SOCK_STREAM, 0);
    REQUIRE(s.has_value());
    int one = 1;
    setsockopt(s->get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    auto sa = makeSockaddr(*parseIp4("10.77.3.5"), port);
    REQUIRE(::bind(s->get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0);
    REQUIRE(::listen(s->get(), backlog) == 0);
    return std::move(*s);
  }
  // A server on the pod's IPv6 address.
  UniqueFd listen6(uint16_t port) {
    auto s = socketInNetns(ns.fd(), AF_INET6, SOCK_STREAM, 0);
    REQUIRE(s.has_value());
    SockAddr sa(*IpAddr::parse(kPodIp6), port);
    REQUIRE(::bind(s->get(), sa.sa(), sa.len()) == 0);
    REQUIRE(::listen(s->get(), 128) == 0);
    return std::move(*s);
  }
  // A client of the proxy's outbound listener (127.0.0.1:15001, or
  // [::1]:15001 with ipv6), as a redirected app would be.
  UniqueFd connectProxy(bool ipv6 = false) {
    auto s = socketInNetns(ns.fd(), ipv6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    REQUIRE(s.has_value());
    SockAddr sa(ipv6 ? IpAddr::v6(in6addr_loopback) : IpAddr::v4(htonl(INADDR_LOOPBACK)),
                SLUICE_OUTBOUND_PORT);
    REQUIRE_MESSAGE(::connect(s->get(), sa.sa(), sa.len()) == 0, strerror(errno));
    timeval tv{10, 0};
    setsockopt(s->get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return std::move(*s);
  }
};

struct Running {
  FakeResolver resolver;
  std::unique_ptr<ztunnel::Engine> engine;
  explicit Running(Pod& pod, ztunnel::EngineConfig cfg = {}, ztunnel::EngineHooks hooks = {}) {
    cfg.workers = 2;
    auto e = ztunnel::createEngine(cfg, resolver, nullptr, nullptr, hooks);
    REQUIRE_MESSAGE(e.has_value(), (e ? "" : e.error().describe()));
    engine = std::move(*e);
    auto r = engine->addPod(pod.spec());
    REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().describe()));
  }
};

using sluice::testing::eventually;

}  // namespace
