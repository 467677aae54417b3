#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include "agent/bpf/loader.h"
#include "agent/bpf/orig_dst_resolver.h"
#include "agent/bpf/stat_names.h"
#include "sluice/common/addr.h"
#include "support/bpf_env.h"
#include "support/scratch_netns.h"

using namespace sluice;
using sluice::agent::bpf::Loader;
using namespace sluice::test;
namespace agent = sluice::agent;

TEST_SUITE("capture.bpf") {
  TEST_CASE(
      "connect4 redirects enrolled pods to 15001 and the original destination is recoverable") {
    test::ScratchNetns pod;
    pod.sh("ip addr add 10.77.0.5/32 dev lo && ip addr add 10.77.0.9/32 dev lo");
    LoadedCapture bpf;
    auto cookie = netnsCookie(pod.fd());
    REQUIRE(cookie.has_value());
    sluice_enrolled e{*parseIp4("10.77.0.5"), 0};
    REQUIRE(bpf.loader->enrolled().update(*cookie, e).has_value());

    auto proxy = listenIn(pod.fd(), "127.0.0.1", SLUICE_OUTBOUND_PORT, SLUICE_MARK_MINE);
    auto server = listenIn(pod.fd(), "10.77.0.9", 8080);

    SUBCASE("a pod connection is captured") {
      auto client = connectIn(pod.fd(), "10.77.0.9", 8080);
      int accepted = ::accept(proxy.get(), nullptr, nullptr);
      REQUIRE(accepted >= 0);
      UniqueFd a(accepted);
      // The client believes it is connected to the original destination.
      CHECK(formatEndpoint(peerOf(client.get())) == "10.77.0.9:8080");
      // Pinned map lookup, as the proxy does it.
      auto peer = peerOf(a.get());
      auto local = localOf(a.get());
      sluice_pair_key k{*cookie,       peer.sin_addr.s_addr, local.sin_addr.s_addr,
                        peer.sin_port, local.sin_port,       0};
      auto d = bpf.loader->origDst().lookup(k);
      REQUIRE(d.has_value());
      CHECK(formatEndpoint(makeSockaddr(d->ip4, ntohs(d->port))) == "10.77.0.9:8080");
      // SO_ORIGINAL_DST from the cgroup/getsockopt program.
      sockaddr_in orig{};
      socklen_t len = sizeof(orig);
      REQUIRE(getsockopt(a.get(), SOL_IP, 80 /*SO_ORIGINAL_DST*/, &orig, &len) == 0);
      CHECK(formatEndpoint(orig) == "10.77.0.9:8080");
      auto stats = bpf.loader->stats();
      CHECK(stats[SLUICE_STAT_CONNECT_REDIRECTED] >= 1);
      CHECK(stats[SLUICE_STAT_SOCKOPS_REKEYED] >= 1);
    }
    SUBCASE("proxy sockets, loopback, own IP and excluded ports go direct") {
      auto marked = connectIn(pod.fd(), "10.77.0.9", 8080, SLUICE_MARK_MINE);
      CHECK(formatEndpoint(peerOf(marked.get())) == "10.77.0.9:8080");
      auto server2 = listenIn(pod.fd(), "10.77.0.9", 9999);
      auto excluded = connectIn(pod.fd(), "10.77.0.9", 9999);
      CHECK(formatEndpoint(peerOf(excluded.get())) == "10.77.0.9:9999");
      auto own = listenIn(pod.fd(), "10.77.0.5", 8081);
      auto to_own = connectIn(pod.fd(), "10.77.0.5", 8081);
      CHECK(formatEndpoint(peerOf(to_own.get())) == "10.77.0.5:8081");
      auto lo = listenIn(pod.fd(), "127.0.0.1", 8082);
      auto to_lo = connectIn(pod.fd(), "127.0.0.1", 8082);
      CHECK(formatEndpoint(peerOf(to_lo.get())) == "127.0.0.1:8082");
    }
    SUBCASE("a netns that is not enrolled is never redirected") {
      test::ScratchNetns other;
      other.sh("ip addr add 10.77.0.9/32 dev lo");
      auto srv = listenIn(other.fd(), "10.77.0.9", 8080);
      auto c = connectIn(other.fd(), "10.77.0.9", 8080);
      CHECK(formatEndpoint(peerOf(c.get())) == "10.77.0.9:8080");
    }
    SUBCASE("unenrolling stops capture") {
      bpf.loader->enrolled().erase(*cookie);
      auto c = connectIn(pod.fd(), "10.77.0.9", 8080);
      CHECK(formatEndpoint(peerOf(c.get())) == "10.77.0.9:8080");
    }
  }

  TEST_CASE("getpeername4/6 give a captured client its original destination, and nobody else") {
    test::ScratchNetns pod;
    pod.sh("ip addr add 10.77.0.5/32 dev lo && ip addr add 10.77.0.9/32 dev lo");
    LoadedCapture bpf;
    auto cookie = netnsCookie(pod.fd());
    REQUIRE(cookie.has_value());
    REQUIRE(bpf.loader->enrolled()
                .update(*cookie, sluice_enrolled{*parseIp4("10.77.0.5"), 0})
                .has_value());
    auto proxy = listenIn(pod.fd(), "127.0.0.1", SLUICE_OUTBOUND_PORT, SLUICE_MARK_MINE);
    auto server = listenIn(pod.fd(), "10.77.0.9", 8080);
    auto lo = listenIn(pod.fd(), "127.0.0.1", 8082);

    struct Case {
      const char* name;
      int family;       // of the client socket
      const char* dst;  // what the client connects to (v4-mapped for AF_INET6)
      uint16_t port;
      uint32_t mark;     // SO_MARK of the client
      const char* peer;  // what its getpeername() says
    };
    const Case cases[] = {
        {"captured IPv4", AF_INET, "10.77.0.9", 8080, 0, "10.77.0.9:8080"},
        {"captured v4-mapped IPv6", AF_INET6, "::ffff:10.77.0.9", 8080, 0,
         "[::ffff:10.77.0.9]:8080"},
        {"the proxy's own socket", AF_INET, "10.77.0.9", 8080, SLUICE_MARK_MINE, "10.77.0.9:8080"},
        {"loopback", AF_INET, "127.0.0.1", 8082, 0, "127.0.0.1:8082"},
        {"loopback over IPv6", AF_INET6, "::ffff:127.0.0.1", 8082, 0, "[::ffff:127.0.0.1]:8082"},
    };
    auto peerText = [](int fd) {
      sockaddr_storage ss{};
      socklen_t len = sizeof(ss);
      REQUIRE(getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0);
      char ip[INET6_ADDRSTRLEN] = {};
      if (ss.ss_family == AF_INET) return formatEndpoint(*reinterpret_cast<sockaddr_in*>(&ss));
      auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
      inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
      return fmt::format("[{}]:{}", ip, ntohs(s6->sin6_port));
    };
    auto connectFamily = [&](const Case& c) {
      auto s = socketInNetns(pod.fd(), c.family, SOCK_STREAM, 0);
      REQUIRE(s.has_value());
      if (c.mark) REQUIRE(setsockopt(s->get(), SOL_SOCKET, SO_MARK, &c.mark, sizeof(c.mark)) == 0);
      int rc;
      if (c.family == AF_INET) {
        auto sa = makeSockaddr(*parseIp4(c.dst), c.port);
        rc = ::connect(s->get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa));
      } else {
        sockaddr_in6 sa{};
        sa.sin6_family = AF_INET6;
        sa.sin6_port = htons(c.port);
        REQUIRE(inet_pton(AF_INET6, c.dst, &sa.sin6_addr) == 1);
        rc = ::connect(s->get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa));
      }
      REQUIRE_MESSAGE(rc == 0, "connect failed: " << strerror(errno));
      return std::move(*s);
    };
    SUBCASE("each kind of client socket") {
      for (const auto& c : cases) {
        CAPTURE(c.name);
        auto client = connectFamily(c);
        CHECK(peerText(client.get()) == c.peer);
        // getsockname4/6: a captured client names its pod address (its
        // own form of it), as without the mesh; others are left alone.
        sockaddr_storage ss{};
        socklen_t len = sizeof(ss);
        REQUIRE(getsockname(client.get(), reinterpret_cast<sockaddr*>(&ss), &len) == 0);
        char ip[INET6_ADDRSTRLEN] = {};
        if (ss.ss_family == AF_INET)
          inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, ip, sizeof(ip));
        else
          inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, ip, sizeof(ip));
        std::string name = c.name;
        if (name == "captured IPv4")
          CHECK(std::string(ip) == "10.77.0.5");
        else if (name == "captured v4-mapped IPv6")
          CHECK(std::string(ip) == "::ffff:10.77.0.5");
        else if (name.starts_with("loopback"))
          CHECK(std::string(ip).find("127.0.0.1") != std::string::npos);
      }
    }

    SUBCASE("the proxy's accepted socket still sees the client's real address") {
      auto client = connectIn(pod.fd(), "10.77.0.9", 8080);
      UniqueFd a(::accept(proxy.get(), nullptr, nullptr));
      REQUIRE(a);
      auto local = localOf(client.get());  // the pod address, the hop's port
      CHECK(formatEndpoint(local) == "10.77.0.5:" + std::to_string(ntohs(local.sin_port)));
      CHECK(formatEndpoint(peerOf(a.get())) ==
            "127.0.0.1:" + std::to_string(ntohs(local.sin_port)));
    }
    SUBCASE("a socket that reconnects after a failed captured attempt is not lied about") {
      proxy.reset();  // nothing listens on 15001: the captured attempt is refused
      auto s = socketInNetns(pod.fd(), AF_INET, SOCK_STREAM, 0);
      REQUIRE(s.has_value());
      auto first = makeSockaddr(*parseIp4("10.77.0.9"), 8080);
      REQUIRE(::connect(s->get(), reinterpret_cast<sockaddr*>(&first), sizeof(first)) != 0);
      CHECK(errno == ECONNREFUSED);
      auto second = makeSockaddr(*parseIp4("127.0.0.1"), 8082);
      REQUIRE(::connect(s->get(), reinterpret_cast<sockaddr*>(&second), sizeof(second)) == 0);
      CHECK(formatEndpoint(peerOf(s->get())) == "127.0.0.1:8082");
    }
    SUBCASE("sockets captured before an agent restart keep their answer") {
      auto client = connectIn(pod.fd(), "10.77.0.9", 8080);
      bpf.loader.reset();  // the agent exits; pinned maps and links remain
      auto again = Loader::create({bpf.pin, test::cgroup2(), {9999}});
      REQUIRE_MESSAGE(again.has_value(), (again ? "" : again.error().describe()));
      bpf.loader = std::move(*again);
      CHECK(formatEndpoint(peerOf(client.get())) == "10.77.0.9:8080");
      auto later = connectIn(pod.fd(), "10.77.0.9", 8080);
      CHECK(formatEndpoint(peerOf(later.get())) == "10.77.0.9:8080");
    }
  }

  TEST_CASE("records of sockets that close without the proxy taking them are removed") {
    test::ScratchNetns pod;
    pod.sh("ip addr add 10.77.0.5/32 dev lo && ip addr add 10.77.0.9/32 dev lo");
    LoadedCapture bpf;
    auto cookie = netnsCookie(pod.fd());
    REQUIRE(cookie.has_value());
    REQUIRE(bpf.loader->enrolled()
                .update(*cookie, sluice_enrolled{*parseIp4("10.77.0.5"), 0})
                .has_value());
    auto entries = [&](const std::string& name) {
      for (const auto& f : bpf.loader->mapFill())
        if (f.name == name) return f.entries;
      FAIL("no fill level for " << name);
      return uint64_t{0};
    };
    SUBCASE("refused: nothing listens on 15001 (no agent) - no cookie record stays") {
      for (int i = 0; i < 20; ++i) {
        auto s = socketInNetns(pod.fd(), AF_INET, SOCK_STREAM, 0);
        REQUIRE(s.has_value());
        auto sa = makeSockaddr(*parseIp4("10.77.0.9"), 8080);
        CHECK(::connect(s->get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0);
        CHECK(errno == ECONNREFUSED);
      }
      CHECK(entries("sluice_cookie_dst_v1") == 0);
      CHECK(entries("sluice_orig_dst_v1") == 0);
    }
    SUBCASE("reset in the accept queue (the agent died) - no 4-tuple record stays") {
      std::vector<UniqueFd> clients;
      {
        auto proxy = listenIn(pod.fd(), "127.0.0.1", SLUICE_OUTBOUND_PORT, SLUICE_MARK_MINE);
        for (int i = 0; i < 10; ++i) clients.push_back(connectIn(pod.fd(), "10.77.0.9", 8080));
        CHECK(entries("sluice_orig_dst_v1") == 10);
      }  // the listener closes with 10 connections never accepted: each is reset
      for (auto& c : clients) {
        char b;
        CHECK(::recv(c.get(), &b, 1, 0) < 0);  // ECONNRESET: the socket is closed
      }
      CHECK(entries("sluice_orig_dst_v1") == 0);
      CHECK(entries("sluice_cookie_dst_v1") == 0);
    }
    SUBCASE("a client that closes first keeps its record for the proxy to take") {
      auto proxy = listenIn(pod.fd(), "127.0.0.1", SLUICE_OUTBOUND_PORT, SLUICE_MARK_MINE);
      {
        auto c = connectIn(pod.fd(), "10.77.0.9", 8080);
        CHECK(::send(c.get(), "x", 1, 0) == 1);
      }  // closed before the proxy accepted
      UniqueFd a(::accept(proxy.get(), nullptr, nullptr));
      REQUIRE(a.get() >= 0);
      sockaddr_in orig{};
      socklen_t len = sizeof(orig);
      REQUIRE(getsockopt(a.get(), SOL_IP, 80 /*SO_ORIGINAL_DST*/, &orig, &len) == 0);
      CHECK(formatEndpoint(orig) == "10.77.0.9:8080");
    }
  }

  TEST_CASE("typed map wrapper: take() deletes and a size mismatch is refused with advice") {
    LoadedCapture bpf;
    sluice_pair_key k{7, 1, 2, 3, 4, 0};
    REQUIRE(bpf.loader->origDst().update(k, sluice_orig_dst{9, 10, 0}).has_value());
    auto v = bpf.loader->origDst().take(k);
    REQUIRE(v.has_value());
    CHECK(v->ip4 == 9);
    CHECK_FALSE(bpf.loader->origDst().lookup(k).has_value());
    auto wrong = agent::bpf::BpfMap<__u32, __u32>::openPinned(bpf.pin + "/sluice_orig_dst_v1");
    REQUIRE_FALSE(wrong.has_value());
    CHECK(wrong.error().describe().find("incompatible build") != std::string::npos);
    CHECK_FALSE(agent::bpf::BpfMap<__u32, __u32>::openPinned(bpf.pin + "/no_such_map").has_value());
  }

  TEST_CASE("map fill levels: entries counted against max_entries for every hash map") {
    LoadedCapture bpf;
    auto fillOf = [&](const std::string& name) {
      for (const auto& f : bpf.loader->mapFill())
        if (f.name == name) return f;
      FAIL("no fill level for " << name);
      return agent::bpf::MapFill{};
    };
    CHECK(bpf.loader->mapFill().size() == 7);  // with the IPv6 twins
    CHECK(fillOf("sluice_orig_dst_v1").entries == 0);
    CHECK(fillOf("sluice_orig_dst_v1").max_entries == SLUICE_MAX_PENDING);
    CHECK(fillOf("sluice_cookie_dst_v1").max_entries == SLUICE_MAX_PENDING);
    CHECK(fillOf("sluice_enrolled_v1").max_entries == SLUICE_MAX_ENROLLED);
    CHECK(fillOf("sluice_excluded_ports_v1").entries == 1);  // port 9999
    for (__u32 i = 0; i < 3; ++i) {
      sluice_pair_key k{i, 1, 2, 3, 4, 0};
      REQUIRE(bpf.loader->origDst().update(k, sluice_orig_dst{9, 10, 0}).has_value());
    }
    CHECK(fillOf("sluice_orig_dst_v1").entries == 3);
    CHECK_FALSE(agent::bpf::mapFill(-1, "none").has_value());
  }

  TEST_CASE("a loader that fails halfway leaves no descriptor behind") {
    auto openFds = [] {
      size_t n = 0;
      for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd"))
        ++n;
      return n;
    };
    std::string pin = pinDir();
    // Not a cgroup at all: fails after both objects are loaded and the maps adopted.
    std::string missing = pin + "-no-such-cgroup";
    // A directory that is not a cgroup: the cgroup fd is open when attaching fails.
    std::string plain = "/tmp/sluice-test-not-a-cgroup-" + std::to_string(::getpid());
    std::filesystem::create_directories(plain);
    for (const auto& cgroup : {missing, plain}) {
      CAPTURE(cgroup);
      // Once first: libbpf may keep a descriptor open for good on first use.
      CHECK_FALSE(Loader::create({pin, cgroup, {}}).has_value());
      size_t before = openFds();
      auto failed = Loader::create({pin, cgroup, {}});
      REQUIRE_FALSE(failed.has_value());
      CHECK(failed.error().describe().find(cgroup) != std::string::npos);
      CHECK(openFds() == before);
    }
    std::filesystem::remove(plain);
    (void)Loader::removePinned(pin);
  }

  TEST_CASE("a pinned link on another cgroup moves to the one asked for (--cgroup changed)") {
    std::string child = cgroup2() + "/sluice-test-cg-" + std::to_string(::getpid());
    std::filesystem::create_directories(child);
    std::string pin = pinDir();
    {
      auto first = Loader::create({pin, child, {}});
      REQUIRE_MESSAGE(first.has_value(), (first ? "" : first.error().describe()));
    }  // the agent exits; its links stay, pinned, on `child`
    auto second = Loader::create({pin, cgroup2(), {}});
    REQUIRE_MESSAGE(second.has_value(), (second ? "" : second.error().describe()));
    struct stat root {};
    REQUIRE(::stat(cgroup2().c_str(), &root) == 0);
    REQUIRE_FALSE((*second)->links().empty());
    for (const auto& link : (*second)->links()) {
      CAPTURE(link.program);
      CHECK_FALSE(link.reused);
      UniqueFd fd(bpf_link_get_fd_by_id(link.link_id));
      REQUIRE(fd);
      bpf_link_info info{};
      uint32_t len = sizeof(info);
      REQUIRE(bpf_obj_get_info_by_fd(fd.get(), &info, &len) == 0);
      CHECK(info.cgroup.cgroup_id == static_cast<uint64_t>(root.st_ino));
    }
    // Nothing of ours is left on the old cgroup.
    UniqueFd cg(::open(child.c_str(), O_RDONLY | O_DIRECTORY));
    uint32_t count = 0;
    REQUIRE(bpf_prog_query(cg.get(), BPF_CGROUP_INET4_CONNECT, 0, nullptr, nullptr, &count) == 0);
    CHECK(count == 0);
    second->reset();
    (void)Loader::removePinned(pin);
    ::rmdir(child.c_str());
  }

  TEST_CASE("removing pins: only on bpffs, and only Sluice's") {
    // A mistyped --bpf-pin-dir: refused, nothing removed.
    std::string plain = "/tmp/sluice-test-not-bpffs-" + std::to_string(::getpid());
    std::filesystem::create_directories(plain);
    std::ofstream(plain + "/sluice_enrolled_v1") << "an operator's file\n";
    auto r = Loader::removePinned(plain);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().describe().find("is not on the BPF filesystem") != std::string::npos);
    CHECK(std::filesystem::exists(plain + "/sluice_enrolled_v1"));
    std::filesystem::remove_all(plain);
    // On bpffs, what is not ours stays, and so does the directory.
    std::string pin = pinDir();
    {
      auto loaded = Loader::create({pin, cgroup2(), {}});
      REQUIRE_MESSAGE(loaded.has_value(), (loaded ? "" : loaded.error().describe()));
    }
    REQUIRE(::mkdir((pin + "/other").c_str(), 0700) == 0);
    r = Loader::removePinned(pin);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().describe().find("left what is not Sluice's (other)") != std::string::npos);
    CHECK(std::filesystem::exists(pin + "/other"));
    CHECK_FALSE(std::filesystem::exists(pin + "/sluice_enrolled_v1"));
    CHECK_FALSE(std::filesystem::exists(agent::bpf::linkPin(pin, "sluice_connect4")));
    ::rmdir((pin + "/other").c_str());
    CHECK(Loader::removePinned(pin).has_value());
    CHECK_FALSE(std::filesystem::exists(pin));
  }

  TEST_CASE("a second loader re-adopts pinned maps and links in place") {
    test::ScratchNetns pod;
    LoadedCapture first;
    auto cookie = netnsCookie(pod.fd());
    REQUIRE(first.loader->enrolled().update(*cookie, sluice_enrolled{1, 0}).has_value());
    auto first_links = first.loader->links();
    first.loader.reset();  // agent exits; pins remain
    auto second = Loader::create({first.pin, test::cgroup2(), {}});
    REQUIRE_MESSAGE(second.has_value(), (second ? "" : second.error().describe()));
    CHECK((*second)->enrolled().lookup(*cookie).has_value());
    REQUIRE((*second)->links().size() == first_links.size());
    for (size_t i = 0; i < first_links.size(); ++i) {
      CHECK((*second)->links()[i].reused);
      CHECK((*second)->links()[i].link_id == first_links[i].link_id);
    }
    first.loader = std::move(*second);
  }
}

// IPv6 capture (issue 15): real IPv6 destinations of a pod with an IPv6
// address go to its [::1]:15001, with records in the *6_v1 maps.
TEST_SUITE("capture.bpf ipv6") {
  struct Pod6 {
    test::ScratchNetns ns;
    LoadedCapture bpf;
    uint64_t cookie = 0;
    UniqueFd proxy;
    explicit Pod6(const std::string& ip6 = "fd00:77::5") {
      ns.sh(
          "ip addr add 10.77.0.5/32 dev lo && ip addr add 10.77.0.9/32 dev lo && "
          "ip -6 addr add fd00:77::5/128 dev lo nodad && ip -6 addr add fd00:77::9/128 dev lo "
          "nodad");
      auto c = netnsCookie(ns.fd());
      REQUIRE(c.has_value());
      cookie = *c;
      auto r = bpf.loader->enroll(cookie, sluice_enrolled{*parseIp4("10.77.0.5"), 0}, ip6);
      REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().describe()));
      proxy = listen6In(ns.fd(), "::1", SLUICE_OUTBOUND_PORT, SLUICE_MARK_MINE);
      int flags = fcntl(proxy.get(), F_GETFL);
      REQUIRE(fcntl(proxy.get(), F_SETFL, flags | O_NONBLOCK) == 0);
    }
    // The next connection of [::1]:15001's queue; none when nothing was
    // captured (a captured connect() has completed its handshake, so it is
    // queued already: the wait only covers a slow softirq).
    UniqueFd accepted(bool expect = false) {
      if (expect) {
        pollfd p{proxy.get(), POLLIN, 0};
        ::poll(&p, 1, 5000);
      }
      return UniqueFd(::accept(proxy.get(), nullptr, nullptr));
    }
    uint64_t entries(const std::string& name) {
      for (const auto& f : bpf.loader->mapFill())
        if (f.name == name) return f.entries;
      FAIL("no fill level for " << name);
      return 0;
    }
    uint64_t stat(size_t i) { return bpf.loader->stats().at(i); }
  };

  TEST_CASE("connect6: which IPv6 connects are captured, and what the proxy and the client see") {
    Pod6 pod;
    auto server = listen6In(pod.ns.fd(), "fd00:77::9", 8080);
    auto excluded = listen6In(pod.ns.fd(), "fd00:77::9", 9999);
    auto own = listen6In(pod.ns.fd(), "fd00:77::5", 8081);
    auto lo = listen6In(pod.ns.fd(), "::1", 8082);
    struct Case {
      const char* name;
      const char* dst;
      uint16_t port;
      uint32_t mark;
      bool captured;
    };
    const Case cases[] = {
        {"a real IPv6 destination is captured", "fd00:77::9", 8080, 0, true},
        {"the pod's own IPv6 address goes direct", "fd00:77::5", 8081, 0, false},
        {"::1 goes direct", "::1", 8082, 0, false},
        {"an excluded port goes direct", "fd00:77::9", 9999, 0, false},
        {"the proxy's own socket goes direct", "fd00:77::9", 8080, SLUICE_MARK_MINE, false},
    };
    agent::bpf::MapOrigDstResolver resolver(pod.bpf.loader->origDst(), pod.bpf.loader->origDst6());
    for (const auto& c : cases) {
      CAPTURE(c.name);
      auto redirected = pod.stat(SLUICE_STAT_CONNECT_REDIRECTED);
      auto redirected6 = pod.stat(agent::bpf::kStat6Base + SLUICE_STAT6_CONNECT_REDIRECTED);
      auto skipped = pod.stat(SLUICE_STAT_CONNECT_SKIPPED);
      auto client = connect6In(pod.ns.fd(), c.dst, c.port, c.mark);
      std::string want = fmt::format("[{}]:{}", c.dst, c.port);
      // Captured or not, the client's getpeername() is where it connected to.
      CHECK(formatEndpoint6(peer6Of(client.get())) == want);
      auto a = pod.accepted(c.captured);
      CHECK(a.valid() == c.captured);
      CHECK(pod.stat(SLUICE_STAT_CONNECT_REDIRECTED) - redirected == (c.captured ? 1 : 0));
      CHECK(pod.stat(agent::bpf::kStat6Base + SLUICE_STAT6_CONNECT_REDIRECTED) - redirected6 ==
            (c.captured ? 1 : 0));
      CHECK(pod.stat(SLUICE_STAT_CONNECT_SKIPPED) - skipped == (c.captured ? 0 : 1));
      if (!c.captured) continue;
      // getsockname6: the pod's IPv6 address (the real end is [::1]:PORT).
      auto self = local6Of(client.get());
      CHECK(formatEndpoint6(self) == fmt::format("[fd00:77::5]:{}", ntohs(self.sin6_port)));
      // IP6T_SO_ORIGINAL_DST on the accepted socket (cgroup/getsockopt).
      sockaddr_in6 orig{};
      socklen_t len = sizeof(orig);
      REQUIRE(getsockopt(a.get(), SOL_IPV6, 80 /*IP6T_SO_ORIGINAL_DST*/, &orig, &len) == 0);
      CHECK(len == sizeof(sockaddr_in6));
      CHECK(orig.sin6_family == AF_INET6);
      CHECK(formatEndpoint6(orig) == want);
      // The proxy's one lookup-and-delete: the record is gone after it.
      auto peer = peer6Of(a.get());
      auto local = local6Of(a.get());
      auto d = resolver.originalDst6(pod.cookie, peer, local);
      REQUIRE(d.has_value());
      CHECK(formatEndpoint6(*d) == want);
      CHECK_FALSE(resolver.originalDst6(pod.cookie, peer, local).has_value());
      CHECK(pod.entries("sluice_orig_dst6_v1") == 0);
      CHECK(pod.entries("sluice_cookie_dst6_v1") == 0);
    }
  }

  TEST_CASE("connect6: pods without an IPv6 address, netns not enrolled, IPv4 records untouched") {
    SUBCASE("an enrolled pod with no IPv6 address is not captured over IPv6") {
      Pod6 pod("");
      auto server = listen6In(pod.ns.fd(), "fd00:77::9", 8080);
      auto client = connect6In(pod.ns.fd(), "fd00:77::9", 8080);
      CHECK_FALSE(pod.accepted().valid());
      CHECK(pod.entries("sluice_enrolled6_v1") == 0);
    }
    SUBCASE("a netns that is not enrolled is never redirected") {
      Pod6 pod;
      test::ScratchNetns other;
      other.sh("ip -6 addr add fd00:77::9/128 dev lo nodad");
      auto srv = listen6In(other.fd(), "fd00:77::9", 8080);
      auto c = connect6In(other.fd(), "fd00:77::9", 8080);
      // Connected at all: redirected, it would have met no [::1]:15001 there.
      CHECK(formatEndpoint6(peer6Of(c.get())) == "[fd00:77::9]:8080");
    }
    SUBCASE("v4-mapped destinations keep the IPv4 path and records") {
      Pod6 pod;
      auto proxy4 = listenIn(pod.ns.fd(), "127.0.0.1", SLUICE_OUTBOUND_PORT, SLUICE_MARK_MINE);
      auto server = listenIn(pod.ns.fd(), "10.77.0.9", 8080);
      auto client = connect6In(pod.ns.fd(), "::ffff:10.77.0.9", 8080);
      CHECK(formatEndpoint6(peer6Of(client.get())) == "[::ffff:10.77.0.9]:8080");
      // getsockname6: the pod's IPv4 address in the client's v4-mapped form.
      CHECK(formatEndpoint6(local6Of(client.get())).rfind("[::ffff:10.77.0.5]:", 0) == 0);
      CHECK(pod.entries("sluice_orig_dst_v1") == 1);
      CHECK(pod.entries("sluice_orig_dst6_v1") == 0);
      CHECK_FALSE(pod.accepted().valid());  // not on [::1]:15001
    }
    SUBCASE("unenrolling removes the pod's IPv6 address too") {
      Pod6 pod;
      CHECK(pod.entries("sluice_enrolled6_v1") == 1);
      pod.bpf.loader->unenroll(pod.cookie);
      CHECK(pod.entries("sluice_enrolled6_v1") == 0);
      CHECK(pod.entries("sluice_enrolled_v1") == 0);
      auto bad = pod.bpf.loader->enroll(pod.cookie, sluice_enrolled{1, 0}, "not-an-address");
      REQUIRE_FALSE(bad.has_value());
      CHECK(bad.error().describe().find("not-an-address") != std::string::npos);
      CHECK(pod.entries("sluice_enrolled_v1") == 0);
    }
  }

  TEST_CASE("getpeername6 answers the original IPv6 destination, also across a reconnect") {
    Pod6 pod;
    auto server = listen6In(pod.ns.fd(), "fd00:77::9", 8080);
    auto lo = listen6In(pod.ns.fd(), "::1", 8082);
    SUBCASE("captured") {
      auto client = connect6In(pod.ns.fd(), "fd00:77::9", 8080);
      CHECK(formatEndpoint6(peer6Of(client.get())) == "[fd00:77::9]:8080");
      auto a = pod.accepted(true);
      REQUIRE(a.valid());
      // The proxy's accepted socket sees the client's real address, the
      // loopback end whose port the client's getsockname() keeps.
      CHECK(formatEndpoint6(peer6Of(a.get())) ==
            fmt::format("[::1]:{}", ntohs(local6Of(client.get()).sin6_port)));
    }
    SUBCASE("a socket that reconnects after a failed captured attempt is not lied about") {
      pod.proxy.reset();  // nothing listens on [::1]:15001: the captured attempt is refused
      auto s = socketInNetns(pod.ns.fd(), AF_INET6, SOCK_STREAM, 0);
      REQUIRE(s.has_value());
      auto first = makeSockaddr6("fd00:77::9", 8080);
      REQUIRE(::connect(s->get(), reinterpret_cast<sockaddr*>(&first), sizeof(first)) != 0);
      CHECK(errno == ECONNREFUSED);
      auto second = makeSockaddr6("::1", 8082);
      REQUIRE(::connect(s->get(), reinterpret_cast<sockaddr*>(&second), sizeof(second)) == 0);
      CHECK(formatEndpoint6(peer6Of(s->get())) == "[::1]:8082");
    }
  }

  TEST_CASE("sockops: IPv6 records of sockets that close without the proxy taking them go") {
    Pod6 pod;
    SUBCASE("refused: nothing listens on [::1]:15001 - no cookie record stays") {
      pod.proxy.reset();
      for (int i = 0; i < 20; ++i) {
        auto [s, err] = tryConnect6In(pod.ns.fd(), "fd00:77::9", 8080);
        CHECK(err == ECONNREFUSED);
      }
      CHECK(pod.entries("sluice_cookie_dst6_v1") == 0);
      CHECK(pod.entries("sluice_orig_dst6_v1") == 0);
    }
    SUBCASE("re-keyed by 4-tuple, then reset in the accept queue - no record stays") {
      auto rekeyed = pod.stat(SLUICE_STAT_SOCKOPS_REKEYED);
      std::vector<UniqueFd> clients;
      for (int i = 0; i < 10; ++i) clients.push_back(connect6In(pod.ns.fd(), "fd00:77::9", 8080));
      CHECK(pod.entries("sluice_orig_dst6_v1") == 10);
      CHECK(pod.entries("sluice_cookie_dst6_v1") == 0);
      CHECK(pod.stat(SLUICE_STAT_SOCKOPS_REKEYED) - rekeyed == 10);
      pod.proxy.reset();  // 10 connections never accepted: each is reset
      for (auto& c : clients) {
        char b;
        CHECK(::recv(c.get(), &b, 1, 0) < 0);
      }
      CHECK(pod.entries("sluice_orig_dst6_v1") == 0);
    }
  }
}
