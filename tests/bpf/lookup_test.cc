// The sk_lookup program of bpf/inbound.bpf.c (sluice_sk_lookup) with the tc
// program that notes its SYNs: a new SYN on the tuple of a connection in
// TIME_WAIT in the pod goes to the proxy's 15006 listener. And the tc
// program's own steering of what the stack's lookup would give the app's
// listener: the ACK of a SYN cookie. Real sockets across a veth, a real
// TIME_WAIT, real SYN cookies.
#include <bpf/bpf.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "agent/bpf/inbound_steering.h"
#include "agent/bpf/loader.h"
#include "agent/bpf/stat_names.h"
#include "sluice/common/addr.h"
#include "sluice/common/netns.h"
#include "support/bpf_env.h"
#include "support/eventually.h"
#include "support/scratch_netns.h"

using namespace sluice;

TEST_SUITE("inbound.bpf lookup") {
  // A connection to the app that the app closed first leaves the app's end
  // in TIME_WAIT under the client's tuple (through the mesh: the client's
  // address and the proxy's source port; or the proxy's end towards a
  // client, under the client's own tuple). A new SYN on that tuple is owned,
  // so tc passes it; the TIME_WAIT socket takes it and the stack looks for a
  // listener. Without the sk_lookup program that is the app's: the
  // connection would reach the app around the proxy (no policy, no mTLS).
  constexpr uint16_t kClientPort = 40123;

  // A client socket in the peer bound to from (kClientPort), connecting to
  // to:8080 without waiting.
  UniqueFd clientFromPort(test::ScratchNetns & peer, const char* from = "10.80.0.9",
                          const char* to = "10.80.0.5") {
    SockAddr local(*IpAddr::parse(from), kClientPort), remote(*IpAddr::parse(to), 8080);
    auto s = socketInNetns(peer.fd(), local.family(), SOCK_STREAM, 0);
    REQUIRE(s.has_value());
    int one = 1;
    REQUIRE(setsockopt(s->get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0);
    REQUIRE(::bind(s->get(), local.sa(), local.len()) == 0);
    int flags = fcntl(s->get(), F_GETFL);
    REQUIRE(fcntl(s->get(), F_SETFL, flags | O_NONBLOCK) == 0);
    int rc = ::connect(s->get(), remote.sa(), remote.len());
    REQUIRE((rc == 0 || errno == EINPROGRESS));
    return std::move(*s);
  }

  UniqueFd acceptWithin(int listener, std::chrono::milliseconds within) {
    UniqueFd a;
    (void)testing::eventually(
        [&] {
          a = UniqueFd(::accept(listener, nullptr, nullptr));
          return a.valid();
        },
        within);
    return a;
  }

  bool timeWaitOn8080(test::ScratchNetns & pod) {
    int rc = -1;
    (void)runInNetns(pod.fd(), [&] {
      rc = test::ScratchNetns::run("ss -Htan state time-wait '( sport = :8080 )' | grep -q .");
    });
    return rc == 0;
  }

  // An earlier connection from `from` (kClientPort) to the app (listening on
  // `to`:8080, non-blocking), which the app closes first: its end waits in
  // TIME_WAIT under the client's tuple.
  void leaveTimeWait(test::ScratchNetns & pod, test::ScratchNetns & peer, int app, const char* from,
                     const char* to) {
    int flags = fcntl(app, F_GETFL);
    REQUIRE(fcntl(app, F_SETFL, flags | O_NONBLOCK) == 0);
    auto client = clientFromPort(peer, from, to);
    UniqueFd served = acceptWithin(app, std::chrono::seconds(2));
    REQUIRE(served.valid());
    served.reset();
    char b;
    CHECK(testing::eventually([&] { return ::recv(client.get(), &b, 1, 0) == 0; }));
    client.reset();
    REQUIRE(testing::eventually([&] { return timeWaitOn8080(pod); }));
  }

  // The pod's eth0 (pod_ip) and the peer's peer0 (peer_ip) on one veth
  // (prefix: the subnet's length), and an app listening on pod_ip:8080. The app.
  UniqueFd wiredApp(test::ScratchNetns & pod, test::ScratchNetns & peer, const char* pod_ip,
                    const char* peer_ip, int prefix) {
    const bool v6 = std::string(pod_ip).find(':') != std::string::npos;
    const std::string add = v6 ? "ip -6 addr add " : "ip addr add ";
    const std::string nodad = v6 ? " nodad" : "";
    const std::string len = "/" + std::to_string(prefix);
    pod.sh("ip link add eth0 type veth peer name peer0 && ip link set peer0 netns " + peer.path() +
           " && ip link set eth0 up && " + add + pod_ip + len + " dev eth0" + nodad);
    peer.sh("ip link set peer0 up && " + add + peer_ip + len + " dev peer0" + nodad);
    return v6 ? test::listen6In(pod.fd(), pod_ip, 8080) : test::listenIn(pod.fd(), pod_ip, 8080);
  }

  // wiredApp, with an earlier connection of the peer's in TIME_WAIT
  // (leaveTimeWait). The app.
  UniqueFd appInTimeWait(test::ScratchNetns & pod, test::ScratchNetns & peer, const char* pod_ip,
                         const char* peer_ip, int prefix) {
    UniqueFd app = wiredApp(pod, peer, pod_ip, peer_ip, prefix);
    leaveTimeWait(pod, peer, app.get(), peer_ip, pod_ip);
    return app;
  }

  // The pod enrolled as the agent does it: tc and the sk_lookup link, then
  // the cookie. Its netns cookie.
  uint64_t enroll(test::LoadedCapture & bpf, test::ScratchNetns & pod) {
    auto cookie = netnsCookie(pod.fd());
    REQUIRE(cookie.has_value());
    REQUIRE(bpf.loader->attachInbound(pod.fd(), "eth0").has_value());
    REQUIRE(
        bpf.loader->enroll(*cookie, sluice_enrolled{*parseIp4("10.80.0.5"), 0}, "").has_value());
    return *cookie;
  }

  TEST_CASE("a SYN on a TIME_WAIT tuple goes to the proxy's 15006 listener, never the app") {
    test::ScratchNetns pod, peer;
    auto app = appInTimeWait(pod, peer, "10.80.0.5", "10.80.0.9", 24);

    test::LoadedCapture bpf;
    auto cookie = enroll(bpf, pod);
    CHECK(std::filesystem::exists(bpf.loader->lookupPin(cookie)));
    auto stat = [&](uint32_t s4) { return bpf.loader->stats().at(agent::bpf::kStat4Base + s4); };

    SUBCASE("the proxy takes it, with the original destination as its local end") {
      auto proxy = test::listenIn(pod.fd(), "10.80.0.5", SLUICE_INBOUND_PORT, 0, true);
      agent::bpf::MapInboundSteering steering(bpf.loader->inboundListenersFd());
      REQUIRE(
          steering.inboundListener(*SockAddr::parse("10.80.0.5:15006"), proxy.get()).has_value());
      auto client = clientFromPort(peer);
      UniqueFd a = acceptWithin(proxy.get(), std::chrono::seconds(3));
      REQUIRE(a.valid());
      CHECK(ntohs(test::localOf(a.get()).sin_port) == 8080);
      CHECK(ntohs(test::peerOf(a.get()).sin_port) == kClientPort);
      CHECK(::accept(app.get(), nullptr, nullptr) < 0);  // the app never saw it
      CHECK(stat(SLUICE_STAT4_LOOKUP_STEERED) == 1);
      CHECK_FALSE(timeWaitOn8080(pod));  // the kernel let the TIME_WAIT go
    }
    SUBCASE("the pod's own connections to its address stay the app's (the proxy delivers so)") {
      auto proxy = test::listenIn(pod.fd(), "10.80.0.5", SLUICE_INBOUND_PORT, 0, true);
      agent::bpf::MapInboundSteering steering(bpf.loader->inboundListenersFd());
      REQUIRE(
          steering.inboundListener(*SockAddr::parse("10.80.0.5:15006"), proxy.get()).has_value());
      auto local = test::connectIn(pod.fd(), "10.80.0.5", 8080);
      CHECK(acceptWithin(app.get(), std::chrono::seconds(2)).valid());
      CHECK(stat(SLUICE_STAT4_LOOKUP_STEERED) == 0);
      CHECK(timeWaitOn8080(pod));  // a fresh tuple: the TIME_WAIT is untouched
    }
    SUBCASE("no listener (no agent runs): dropped, never the app's") {
      auto client = clientFromPort(peer);
      CHECK(testing::eventually([&] { return stat(SLUICE_STAT4_LOOKUP_DROPPED) >= 1; }));
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // a SYN retransmission
      CHECK(::accept(app.get(), nullptr, nullptr) < 0);
    }
    SUBCASE("unenrolled: the link is gone, and the tuple's SYN is the app's again") {
      bpf.loader->detachInbound(pod.fd(), "eth0");
      bpf.loader->unenroll(cookie);
      CHECK_FALSE(std::filesystem::exists(bpf.loader->lookupPin(cookie)));
      auto client = clientFromPort(peer);
      CHECK(acceptWithin(app.get(), std::chrono::seconds(3)).valid());
    }
  }

  // An agent restart: the new agent attaches its tc program to the pod,
  // then swaps the program under the pod's sk_lookup link. Between the two,
  // the new tc notes the SYN and the old sk_lookup program looks it up: both
  // must use one slot (the pinned sluice_tw_syn_v1), or the SYN passes to
  // the app around the proxy.
  TEST_CASE("a restart: the new tc program beside the old sk_lookup program still steers") {
    test::ScratchNetns pod, peer;
    auto app = appInTimeWait(pod, peer, "10.80.0.5", "10.80.0.9", 24);
    test::LoadedCapture old_agent;
    auto cookie = enroll(old_agent, pod);
    // The old program under the link, to put back after the new agent's swap.
    UniqueFd link(bpf_obj_get(old_agent.loader->lookupPin(cookie).c_str()));
    REQUIRE(link.valid());
    bpf_link_info info{};
    __u32 info_len = sizeof(info);
    REQUIRE(bpf_obj_get_info_by_fd(link.get(), &info, &info_len) == 0);
    UniqueFd old_lookup(bpf_prog_get_fd_by_id(info.prog_id));
    REQUIRE(old_lookup.valid());
    auto proxy = test::listenIn(pod.fd(), "10.80.0.5", SLUICE_INBOUND_PORT, 0, true);
    REQUIRE(fcntl(proxy.get(), F_SETFL, fcntl(proxy.get(), F_GETFL) | O_NONBLOCK) == 0);
    agent::bpf::MapInboundSteering old_steering(old_agent.loader->inboundListenersFd());
    REQUIRE(
        old_steering.inboundListener(*SockAddr::parse("10.80.0.5:15006"), proxy.get()).has_value());

    auto new_agent = agent::bpf::Loader::create({old_agent.pin, test::cgroup2(), {9999}, false});
    REQUIRE_MESSAGE(new_agent.has_value(), (new_agent ? "" : new_agent.error().describe()));
    REQUIRE((*new_agent)->attachInbound(pod.fd(), "eth0").has_value());
    // The moment between the new agent's tc attach and its link swap.
    REQUIRE(bpf_link_update(link.get(), old_lookup.get(), nullptr) == 0);

    auto client = clientFromPort(peer);
    UniqueFd a = acceptWithin(proxy.get(), std::chrono::seconds(3));
    CHECK_MESSAGE(a.valid(), "the proxy never took the SYN on the TIME_WAIT tuple");
    CHECK(::accept(app.get(), nullptr, nullptr) < 0);  // the app never saw it
    new_agent->reset();
  }

  TEST_CASE("IPv6: a SYN on a TIME_WAIT tuple goes to [pod-v6]:15006, never the app") {
    test::ScratchNetns pod, peer;
    auto app = appInTimeWait(pod, peer, "fd00:80::5", "fd00:80::9", 64);
    test::LoadedCapture bpf;
    REQUIRE(bpf.loader->attachInbound(pod.fd(), "eth0").has_value());
    auto proxy = test::listen6In(pod.fd(), "fd00:80::5", SLUICE_INBOUND_PORT, 0, true);
    agent::bpf::MapInboundSteering steering(bpf.loader->inboundListenersFd());
    REQUIRE(
        steering.inboundListener(*SockAddr::parse("[fd00:80::5]:15006"), proxy.get()).has_value());
    auto client = clientFromPort(peer, "fd00:80::9", "fd00:80::5");
    UniqueFd a = acceptWithin(proxy.get(), std::chrono::seconds(3));
    REQUIRE(a.valid());
    CHECK(test::formatEndpoint6(test::local6Of(a.get())) == "[fd00:80::5]:8080");
    CHECK(ntohs(test::peer6Of(a.get()).sin6_port) == kClientPort);
    CHECK(::accept(app.get(), nullptr, nullptr) < 0);
    const size_t steered6 = agent::bpf::kStat6Base + SLUICE_STAT6_LOOKUP_STEERED;
    CHECK(bpf.loader->stats().at(steered6) == 1);
  }

  // SYN cookies (tcp_syncookies=2: every SYN is answered with one, as a 15006
  // listener whose SYN queue a flood filled does). A cookie leaves no socket
  // behind, so the client's ACK finds none and the stack looks for a
  // listener: the app's, which sent no cookie and resets it, so no client of
  // the pod got through while the flood lasted. tc checks the cookie and
  // assigns the ACK to the 15006 listener.
  // The client's end, connected (the handshake done), its first byte sent.
  UniqueFd cookieClient(test::ScratchNetns & peer, const char* to) {
    SockAddr remote(*SockAddr::parse(to));
    auto s = socketInNetns(peer.fd(), remote.family(), SOCK_STREAM, 0);
    REQUIRE(s.has_value());
    REQUIRE(::connect(s->get(), remote.sa(), remote.len()) == 0);
    REQUIRE(::send(s->get(), "x", 1, MSG_NOSIGNAL) == 1);
    return std::move(*s);
  }

  uint64_t cookiesSent(test::ScratchNetns & pod) {
    uint64_t n = 0;
    (void)runInNetns(pod.fd(), [&] {
      FILE* f = ::popen("nstat -asz TcpExtSyncookiesSent | awk '/SyncookiesSent/ {print $2}'", "r");
      if (f == nullptr) return;
      if (::fscanf(f, "%lu", &n) != 1) n = 0;
      ::pclose(f);
    });
    return n;
  }

  // One family: the pod at pod_ip (its app on :8080), the peer at peer_ip.
  void cookieReachesProxy(const char* pod_ip, const char* peer_ip, int prefix, const char* app_at,
                          const char* proxy_at, size_t cookie_stat) {
    test::ScratchNetns pod, peer;
    auto app = wiredApp(pod, peer, pod_ip, peer_ip, prefix);
    REQUIRE(fcntl(app.get(), F_SETFL, fcntl(app.get(), F_GETFL) | O_NONBLOCK) == 0);
    pod.sh("sysctl -qw net.ipv4.tcp_syncookies=0");  // first a handshake without one
    test::LoadedCapture bpf;
    (void)enroll(bpf, pod);
    const bool v6 = std::string(pod_ip).find(':') != std::string::npos;
    auto proxy = v6 ? test::listen6In(pod.fd(), pod_ip, SLUICE_INBOUND_PORT, 0, true)
                    : test::listenIn(pod.fd(), pod_ip, SLUICE_INBOUND_PORT, 0, true);
    agent::bpf::MapInboundSteering steering(bpf.loader->inboundListenersFd());
    REQUIRE(steering.inboundListener(*SockAddr::parse(proxy_at), proxy.get()).has_value());
    {
      // Its ACK carries no cookie (and finds its request socket): the stack's,
      // never assigned by tc.
      auto plain = cookieClient(peer, app_at);
      CHECK(acceptWithin(proxy.get(), std::chrono::seconds(3)).valid());
      CHECK(bpf.loader->stats().at(cookie_stat) == 0);
    }
    pod.sh("sysctl -qw net.ipv4.tcp_syncookies=2");
    const uint64_t sent_before = cookiesSent(pod);

    auto client = cookieClient(peer, app_at);
    UniqueFd a = acceptWithin(proxy.get(), std::chrono::seconds(3));
    REQUIRE_MESSAGE(a.valid(), "the proxy never took the connection its SYN cookie answered");
    CHECK(cookiesSent(pod) > sent_before);  // it was a cookie's handshake
    sockaddr_storage name{};
    socklen_t name_len = sizeof(name);
    REQUIRE(::getsockname(a.get(), reinterpret_cast<sockaddr*>(&name), &name_len) == 0);
    CHECK(SockAddr::fromRaw(reinterpret_cast<sockaddr*>(&name), name_len).str() ==
          app_at);  // the original destination
    char b = 0;
    CHECK(::recv(a.get(), &b, 1, 0) == 1);
    CHECK(b == 'x');
    CHECK(::send(a.get(), "y", 1, MSG_NOSIGNAL) == 1);
    CHECK(::recv(client.get(), &b, 1, 0) == 1);
    CHECK(b == 'y');
    CHECK(::accept(app.get(), nullptr, nullptr) < 0);  // the app never saw it
    // The ACK that completed the cookie; the first data segment carries the
    // same cookie, and is assigned too when tc sees it before the stack has
    // made the connection (a deferred softirq): the kernel drops that copy.
    CHECK(bpf.loader->stats().at(cookie_stat) >= 1);

    // The pod's own connections to its address (the proxy delivers so) stay
    // the app's, cookies or not: they never meet tc.
    auto own =
        v6 ? test::connect6In(pod.fd(), pod_ip, 8080) : test::connectIn(pod.fd(), pod_ip, 8080);
    CHECK(acceptWithin(app.get(), std::chrono::seconds(2)).valid());
  }

  TEST_CASE("a SYN cookie's ACK reaches the proxy's 15006 listener, not the app's") {
    cookieReachesProxy("10.80.0.5", "10.80.0.9", 24, "10.80.0.5:8080", "10.80.0.5:15006",
                       agent::bpf::kStat4Base + SLUICE_STAT4_TC_COOKIE_ASSIGNED);
  }

  TEST_CASE("IPv6: a SYN cookie's ACK reaches [pod-v6]:15006, not the app's listener") {
    cookieReachesProxy("fd00:80::5", "fd00:80::9", 64, "[fd00:80::5]:8080", "[fd00:80::5]:15006",
                       agent::bpf::kStat6Base + SLUICE_STAT6_TC_COOKIE_ASSIGNED);
  }
}
