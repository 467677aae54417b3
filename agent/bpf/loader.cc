#include "agent/bpf/loader.h"

#include <arpa/inet.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstdarg>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string_view>

#include "capture.skel.h"
#include "inbound.skel.h"
#include "sluice/common/ip6.h"
#include "sluice/common/log.h"
#include "sluice/common/netns.h"
#include "sockmap.skel.h"

namespace sluice::agent::bpf {

constexpr long kBpfFsMagic = 0xcafe4a11;  // statfs f_type of bpffs

namespace {

// Set around calls whose EEXIST is expected (the clsact qdisc of a pod that
// was enrolled before): libbpf prints the kernel's extended ack for it
// ("Exclusivity flag on, cannot modify") as a warning, which it is not.
thread_local bool tc_hook_may_exist = false;

int libbpfPrint(enum libbpf_print_level level, const char* format, va_list args) {
  char buf[1024];
  int n = vsnprintf(buf, sizeof(buf), format, args);
  std::string line(buf, n > 0 ? std::min<size_t>(n, sizeof(buf) - 1) : 0);
  while (!line.empty() && line.back() == '\n') line.pop_back();
  auto logger = log::get("bpf");
  if (tc_hook_may_exist && line.find("Exclusivity flag on") != std::string::npos)
    level = LIBBPF_DEBUG;
  if (level == LIBBPF_WARN)
    logger->warn("libbpf: {}", line);
  else
    logger->debug("libbpf: {}", line);
  return n;
}

template <typename Key, typename Value>
Result<BpfMap<Key, Value>> adoptMap(const bpf_map* map) {
  UniqueFd fd(fcntl(bpf_map__fd(map), F_DUPFD_CLOEXEC, 0));
  if (!fd) return failErrno("dup of BPF map fd failed");
  return BpfMap<Key, Value>::adopt(std::move(fd), bpf_map__name(map));
}

}  // namespace

namespace {

// Loads the object with only `only` set to autoload and no map pinned.
template <typename Skel>
std::string probeOne(Skel* (*open)(const bpf_object_open_opts*), int (*load)(Skel*),
                     void (*destroy)(Skel*), const char* only) {
  Skel* skel = open(nullptr);
  if (skel == nullptr) return fmt::format("cannot open the BPF object ({})", std::strerror(errno));
  bpf_program* p;
  bpf_object__for_each_program(p, skel->obj) {
    bpf_program__set_autoload(p, std::string_view(bpf_program__name(p)) == only);
  }
  bpf_map* m;
  bpf_object__for_each_map(m, skel->obj) { bpf_map__set_pin_path(m, nullptr); }
  int err = load(skel);
  destroy(skel);
  if (err == 0) return "";
  return fmt::format(
      "the kernel refused it: {} (run as root; the verifier log is printed with "
      "SLUICE_LOG_LEVEL=debug)",
      std::strerror(-err));
}

template <typename Skel>
void probeAll(Skel* (*open)(const bpf_object_open_opts*), int (*load)(Skel*),
              void (*destroy)(Skel*), std::vector<Loader::ProgramProbe>& out) {
  Skel* skel = open(nullptr);
  if (skel == nullptr) {
    out.push_back({"?", "?", fmt::format("cannot open a BPF object ({})", std::strerror(errno))});
    return;
  }
  std::vector<std::pair<std::string, std::string>> programs;
  bpf_program* p;
  bpf_object__for_each_program(p, skel->obj) {
    programs.emplace_back(bpf_program__name(p), bpf_program__section_name(p));
  }
  destroy(skel);
  for (const auto& [name, section] : programs)
    out.push_back({name, section, probeOne(open, load, destroy, name.c_str())});
}

}  // namespace

std::vector<Loader::ProgramProbe> Loader::probePrograms() {
  libbpf_set_print(libbpfPrint);
  std::vector<ProgramProbe> out;
  probeAll<sluice_capture>(sluice_capture__open_opts, sluice_capture__load, sluice_capture__destroy,
                           out);
  probeAll<sluice_inbound>(sluice_inbound__open_opts, sluice_inbound__load, sluice_inbound__destroy,
                           out);
  return out;
}

std::vector<Loader::ProgramProbe> Loader::probeSockmapPrograms() {
  libbpf_set_print(libbpfPrint);
  std::vector<ProgramProbe> out;
  probeAll<sluice_sockmap>(sluice_sockmap__open_opts, sluice_sockmap__load, sluice_sockmap__destroy,
                           out);
  return out;
}

Result<std::unique_ptr<Loader>> Loader::create(const LoaderConfig& config) {
  libbpf_set_print(libbpfPrint);
  if (auto r = ensureBpffs(config.pin_dir); !r) return tl::unexpected(r.error());
  std::error_code ec;
  std::filesystem::create_directories(config.pin_dir, ec);
  if (ec)
    return fail(
        fmt::format("cannot create BPF pin directory {}: {} (is bpffs mounted at /sys/fs/bpf?)",
                    config.pin_dir, ec.message()));

  std::unique_ptr<Loader> self(new Loader());
  self->config_ = config;

  LIBBPF_OPTS(bpf_object_open_opts, opts, .pin_root_path = config.pin_dir.c_str());
  self->capture_.reset(sluice_capture__open_opts(&opts));
  if (!self->capture_) return failErrno("cannot open the capture BPF object");
  if (int err = sluice_capture__load(self->capture_.get()); err != 0) {
    errno = -err;
    return failErrno(
        "loading the capture BPF programs failed (the verifier log is above at debug level; "
        "a pinned map from an incompatible build can also cause this: run `sluice-agent "
        "uninstall`)");
  }
  self->inbound_.reset(sluice_inbound__open_opts(&opts));
  if (!self->inbound_) return failErrno("cannot open the inbound BPF object");
  if (int err = sluice_inbound__load(self->inbound_.get()); err != 0) {
    errno = -err;
    return failErrno("loading the inbound tc BPF program failed");
  }

  auto enrolled = adoptMap<__u64, sluice_enrolled>(self->capture_->maps.sluice_enrolled_v1);
  if (!enrolled) return tl::unexpected(enrolled.error());
  self->enrolled_ = std::move(*enrolled);
  auto orig = adoptMap<sluice_pair_key, sluice_orig_dst>(self->capture_->maps.sluice_orig_dst_v1);
  if (!orig) return tl::unexpected(orig.error());
  self->orig_dst_ = std::move(*orig);
  auto excluded = adoptMap<__u16, __u8>(self->capture_->maps.sluice_excluded_ports_v1);
  if (!excluded) return tl::unexpected(excluded.error());
  self->excluded_ = std::move(*excluded);
  self->stats_fd_ =
      UniqueFd(fcntl(bpf_map__fd(self->capture_->maps.sluice_stats_v1), F_DUPFD_CLOEXEC, 0));
  // Created and pinned by libbpf when an earlier build's pins lack it.
  self->stats4_fd_ =
      UniqueFd(fcntl(bpf_map__fd(self->capture_->maps.sluice_stats4_v1), F_DUPFD_CLOEXEC, 0));
  if (auto r = self->adoptIp6Maps(); !r) return tl::unexpected(r.error());

  // The excluded-port set is configuration: replace it wholesale.
  for (auto& [port, v] : self->excluded_.entries()) self->excluded_.erase(port);
  for (uint16_t port : config.excluded_ports) {
    __u16 key = htons(port);
    if (auto r = self->excluded_.update(key, 1); !r) return tl::unexpected(r.error());
  }

  if (auto r = self->attachCgroupPrograms(); !r) return tl::unexpected(r.error());
  self->configureSockmap(&opts);
  return self;
}

Result<void> Loader::adoptIp6Maps() {
  auto enrolled6 = adoptMap<__u64, sluice_enrolled6>(capture_->maps.sluice_enrolled6_v1);
  if (!enrolled6) return tl::unexpected(enrolled6.error());
  enrolled6_ = std::move(*enrolled6);
  auto orig6 = adoptMap<sluice_pair_key6, sluice_orig_dst6>(capture_->maps.sluice_orig_dst6_v1);
  if (!orig6) return tl::unexpected(orig6.error());
  orig_dst6_ = std::move(*orig6);
  stats6_fd_ = UniqueFd(fcntl(bpf_map__fd(capture_->maps.sluice_stats6_v1), F_DUPFD_CLOEXEC, 0));
  // An address left by a run that stopped between the two updates of enroll().
  for (const auto& [cookie, v] : enrolled6_.entries())
    if (!enrolled_.lookup(cookie)) enrolled6_.erase(cookie);
  return {};
}

Result<void> Loader::enroll(uint64_t netns_cookie, const sluice_enrolled& value,
                            const std::string& ip6) {
  if (ip6.empty()) {
    enrolled6_.erase(netns_cookie);
  } else {
    auto a = parseIp6(ip6);
    if (!a)
      return fail(
          fmt::format("the pod's IPv6 address '{}' is not an IPv6 address (CNI result)", ip6));
    sluice_enrolled6 v6{};
    std::memcpy(v6.pod_ip6, a->s6_addr, sizeof(v6.pod_ip6));
    if (auto r = enrolled6_.update(netns_cookie, v6); !r) return r;
  }
  if (auto r = enrolled_.update(netns_cookie, value); !r) {
    enrolled6_.erase(netns_cookie);
    return r;
  }
  return {};
}

void Loader::unenroll(uint64_t netns_cookie) {
  enrolled_.erase(netns_cookie);
  enrolled6_.erase(netns_cookie);
  releaseLookup(netns_cookie);
}

Result<void> Loader::attachCgroupPrograms() {
  cgroup_fd_.reset(::open(config_.cgroup_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!cgroup_fd_)
    return failErrno(
        fmt::format("cannot open cgroup-v2 directory {} (pass --cgroup with the cgroup2 mount)",
                    config_.cgroup_path));
  for (const auto& p : kCgroupPrograms) {
    const bpf_program* prog = bpf_object__find_program_by_name(capture_->obj, p.program);
    if (prog == nullptr)
      return fail(
          fmt::format("the capture BPF object has no program {} (a build mismatch)", p.program));
    auto link = attachLink(bpf_program__fd(prog), p.program, p.type);
    if (!link) return tl::unexpected(link.error());
    links_.push_back(std::move(*link));
  }
  return {};
}

namespace {

// Detaches the link pinned at `pin` before its pin goes. Unlinking a pin alone releases the link
// only after an RCU grace period and a workqueue hop, so a connection made right after could still
// meet its program; BPF_LINK_DETACH takes effect before it returns. Nothing pinned there: nothing
// to do.
void detachPinnedLink(const std::string& pin) {
  UniqueFd link(bpf_obj_get(pin.c_str()));
  if (link && bpf_link_detach(link.get()) != 0)
    log::get("bpf")->warn(
        "cannot detach the link pinned at {} ({}); it goes when its pin is released", pin,
        std::strerror(errno));
}

}  // namespace

Result<AttachedLink> Loader::attachLink(int prog_fd, const char* program, bpf_attach_type type) {
  AttachedLink link;
  link.program = program;
  link.pin = linkPin(config_.pin_dir, link.program);
  UniqueFd fd(bpf_obj_get(link.pin.c_str()));
  UniqueFd elsewhere;  // a pinned link on another cgroup: detached once ours is attached
  if (fd) {
    bpf_link_info info{};
    uint32_t len = sizeof(info);
    struct stat cg {};
    if (bpf_obj_get_info_by_fd(fd.get(), &info, &len) == 0 && info.type == BPF_LINK_TYPE_CGROUP &&
        ::fstat(cgroup_fd_.get(), &cg) == 0 &&
        info.cgroup.cgroup_id != static_cast<uint64_t>(cg.st_ino)) {
      // --cgroup changed since the link was pinned: it must move, or the
      // pods outside the old cgroup would go uncaptured while every report
      // names the new one.
      log::get("bpf")->warn(
          "pinned link {} is attached to another cgroup (id {}), not {} (id {}): moving it",
          link.pin, info.cgroup.cgroup_id, config_.cgroup_path, cg.st_ino);
      elsewhere = std::move(fd);
      ::unlink(link.pin.c_str());
    }
  }
  if (fd) {
    // Swap the running program under the existing link: no window without capture.
    if (bpf_link_update(fd.get(), prog_fd, nullptr) == 0) {
      link.reused = true;
    } else {
      log::get("bpf")->warn("pinned link {} cannot be updated ({}); re-attaching", link.pin,
                            std::strerror(errno));
      fd.reset();
      ::unlink(link.pin.c_str());
    }
  }
  if (!fd) {
    fd.reset(bpf_link_create(prog_fd, cgroup_fd_.get(), type, nullptr));
    if (!fd)
      return failErrno(
          fmt::format("attaching {} to cgroup {} failed", link.program, config_.cgroup_path));
    if (bpf_obj_pin(fd.get(), link.pin.c_str()) != 0)
      return failErrno(fmt::format("pinning link {} failed", link.pin));
  }
  if (elsewhere && bpf_link_detach(elsewhere.get()) != 0)
    log::get("bpf")->warn("cannot detach {}'s earlier link ({}); it goes when the agent exits",
                          link.program, std::strerror(errno));
  bpf_link_info info{};
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(fd.get(), &info, &len) == 0) link.link_id = info.id;
  link_fds_.push_back(std::move(fd));
  return link;
}

namespace {

// Whether this kernel counts the bytes waiting in a psock's redirect queue
// (struct sk_psock.msg_tot_len, with FIONREAD for sockmap: 6.18.14, 6.12.75,
// 6.6.128, 6.19), which sluice_sk_msg's backpressure bound reads.
bool psockCountsQueue() {
  btf* vmlinux = btf__load_vmlinux_btf();
  if (!vmlinux) return false;
  bool found = false;
  int id = btf__find_by_name_kind(vmlinux, "sk_psock", BTF_KIND_STRUCT);
  if (id > 0) {
    const btf_type* t = btf__type_by_id(vmlinux, id);
    const btf_member* m = btf_members(t);
    for (int i = 0; i < btf_vlen(t) && !found; ++i, ++m)
      found = std::string_view(btf__name_by_offset(vmlinux, m->name_off)) == "msg_tot_len";
  }
  btf__free(vmlinux);
  return found;
}

}  // namespace

void Loader::configureSockmap(const bpf_object_open_opts* opts) {
  auto logger = log::get("bpf");
  const std::string pin = linkPin(config_.pin_dir, kSockmapSockops);
  sockmap_state_.requested = config_.sockmap;
  if (config_.sockmap) {
    if (auto r = enableSockmap(opts); r) {
      sockmap_state_.active = true;
      sockmap_state_.detail =
          "on: pod-local app <-> proxy hops are redirected between sockets (sockhash + sk_msg)";
      if (psockCountsQueue()) {
        sockmap_state_.detail +=
            "; a sender whose reader is more than 4 MiB behind moves to loopback TCP";
        logger->info("sockmap {}", sockmap_state_.detail);
      } else {
        sockmap_state_.detail +=
            "; NO backpressure bound: this kernel's struct sk_psock has no msg_tot_len (6.18.14, "
            "6.12.75, 6.6.128 and 6.19 have it), so a sender faster than its reader queues until "
            "the host's tcp_mem runs out: use --sockmap=off on this kernel";
        logger->warn("sockmap {}", sockmap_state_.detail);
      }
      return;
    } else {
      sockmap_state_.detail = "off: --sockmap=on was asked but " + r.error().describe() +
                              "; the app <-> proxy hops use loopback TCP";
      logger->warn("sockmap {}", sockmap_state_.detail);
      sockmap_.reset();
    }
  } else {
    sockmap_state_.detail = "off (--sockmap=off)";
  }
  // Off: no new socket enters the sockhash. Pairs redirected by an earlier
  // run keep their redirect until they close (the sockhash stays pinned).
  detachPinnedLink(pin);
  if (::unlink(pin.c_str()) == 0)
    logger->info("sockmap off: detached the sockops link {} of an earlier run", pin);
  std::erase_if(links_, [](const AttachedLink& l) { return l.program == kSockmapSockops; });
}

Result<void> Loader::enableSockmap(const bpf_object_open_opts* opts) {
  sockmap_.reset(sluice_sockmap__open_opts(opts));
  if (!sockmap_) return failErrno("the sockmap BPF object cannot be opened");
  if (int err = sluice_sockmap__load(sockmap_.get()); err != 0) {
    errno = -err;
    return failErrno(
        "the kernel refused the sockmap BPF programs (sockhash, sk_msg; the verifier log is "
        "printed with SLUICE_LOG_LEVEL=debug)");
  }
  // Replaces the sk_msg program an earlier run attached to the pinned map.
  if (bpf_prog_attach(bpf_program__fd(sockmap_->progs.sluice_sk_msg),
                      bpf_map__fd(sockmap_->maps.sluice_sockhash_v1), BPF_SK_MSG_VERDICT, 0) != 0)
    return failErrno("attaching sluice_sk_msg to the sockhash failed");
  auto link = attachLink(bpf_program__fd(sockmap_->progs.sluice_sockmap_sockops), kSockmapSockops,
                         BPF_CGROUP_SOCK_OPS);
  if (!link) return tl::unexpected(link.error());
  links_.push_back(std::move(*link));
  sockmap_stats_fd_ =
      UniqueFd(fcntl(bpf_map__fd(sockmap_->maps.sluice_sockmap_stats_v1), F_DUPFD_CLOEXEC, 0));
  return {};
}

void Loader::CaptureDestroy::operator()(sluice_capture* skel) const {
  sluice_capture__destroy(skel);
}

void Loader::InboundDestroy::operator()(sluice_inbound* skel) const {
  sluice_inbound__destroy(skel);
}

void Loader::SockmapDestroy::operator()(sluice_sockmap* skel) const {
  sluice_sockmap__destroy(skel);
}

Result<void> Loader::attachInbound(int netns_fd, const std::string& ifname) {
  Result<void> result;
  auto entered = runInNetns(netns_fd, [&] {
    unsigned ifindex = if_nametoindex(ifname.c_str());
    if (ifindex == 0) {
      result =
          failErrno(fmt::format("interface {} not found in the pod network namespace", ifname));
      return;
    }
    // The program reads an Ethernet header first: on an interface without
    // one (an L3 device) it would misread every packet and let SYNs pass to
    // the app around the mesh. Refused, not attached.
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, ifname.c_str(), IFNAMSIZ - 1);
    UniqueFd probe(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!probe || ::ioctl(probe.get(), SIOCGIFHWADDR, &ifr) != 0) {
      result = failErrno(fmt::format("reading the link type of {} failed", ifname));
      return;
    }
    if (ifr.ifr_hwaddr.sa_family != ARPHRD_ETHER) {
      result = fail(fmt::format(
          "interface {} is not an Ethernet device (link type {}): Sluice steers inbound "
          "connections on Ethernet pod interfaces (veth) only; use a CNI that gives pods one",
          ifname, ifr.ifr_hwaddr.sa_family));
      return;
    }
    LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = static_cast<int>(ifindex),
                .attach_point = BPF_TC_INGRESS);
    tc_hook_may_exist = true;
    int err = bpf_tc_hook_create(&hook);
    tc_hook_may_exist = false;
    if (err != 0 && err != -EEXIST) {
      errno = -err;
      result = failErrno(fmt::format("creating the clsact qdisc on {} failed", ifname));
      return;
    }
    LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = bpf_program__fd(inbound_->progs.sluice_tc_inbound),
                .flags = BPF_TC_F_REPLACE, .handle = kTcHandle, .priority = kTcPriority);
    err = bpf_tc_attach(&hook, &opts);
    if (err != 0) {
      errno = -err;
      result = failErrno(fmt::format("attaching the tc ingress program on {} failed", ifname));
    }
  });
  if (!entered) return entered;
  if (!result) return result;
  return attachLookup(netns_fd);
}

Result<void> Loader::attachLookup(int netns_fd) {
  auto cookie = netnsCookie(netns_fd);
  if (!cookie) return tl::unexpected(cookie.error());
  const std::string pin = lookupPin(*cookie);
  const int prog = bpf_program__fd(inbound_->progs.sluice_sk_lookup);
  // A pod enrolled by an earlier run: swap the program under its link, so
  // the netns is never without one.
  if (UniqueFd link(bpf_obj_get(pin.c_str())); link) {
    if (bpf_link_update(link.get(), prog, nullptr) == 0) return {};
    log::get("bpf")->warn("pinned link {} cannot be updated ({}); re-attaching", pin,
                          std::strerror(errno));
    ::unlink(pin.c_str());
  }
  UniqueFd link(bpf_link_create(prog, netns_fd, BPF_SK_LOOKUP, nullptr));
  if (!link) return failErrno("attaching the sk_lookup program to the pod netns failed");
  if (bpf_obj_pin(link.get(), pin.c_str()) != 0)
    return failErrno(fmt::format("pinning link {} failed", pin));
  return {};
}

void Loader::detachInbound(int netns_fd, const std::string& ifname) {
  (void)runInNetns(netns_fd, [&] {
    unsigned ifindex = if_nametoindex(ifname.c_str());
    if (ifindex == 0) return;
    LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = static_cast<int>(ifindex),
                .attach_point = BPF_TC_INGRESS);
    LIBBPF_OPTS(bpf_tc_opts, opts, .handle = kTcHandle, .priority = kTcPriority);
    bpf_tc_detach(&hook, &opts);
  });
  if (auto cookie = netnsCookie(netns_fd)) releaseLookup(*cookie);
}

void Loader::releaseLookup(uint64_t netns_cookie) {
  const std::string pin = lookupPin(netns_cookie);
  detachPinnedLink(pin);
  ::unlink(pin.c_str());
}

int Loader::inboundListenersFd() const {
  return bpf_map__fd(inbound_->maps.sluice_inbound_listeners);
}

int Loader::tcProgramFd() const { return bpf_program__fd(inbound_->progs.sluice_tc_inbound); }

namespace {

std::vector<uint64_t> perCpuSums(int fd, __u32 count) {
  std::vector<uint64_t> out(count, 0);
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0 || fd < 0) return out;
  std::vector<uint64_t> values(ncpu);
  for (__u32 i = 0; i < count; ++i) {
    if (bpf_map_lookup_elem(fd, &i, values.data()) != 0) continue;
    for (uint64_t v : values) out[i] += v;
  }
  return out;
}

}  // namespace

std::vector<uint64_t> Loader::stats() const {
  auto out = perCpuSums(stats_fd_.get(), SLUICE_STAT_MAX);
  auto six = perCpuSums(stats6_fd_.get(), SLUICE_STAT6_MAX);
  out.insert(out.end(), six.begin(), six.end());
  auto four = perCpuSums(stats4_fd_.get(), SLUICE_STAT4_MAX);
  out.insert(out.end(), four.begin(), four.end());
  return out;
}

std::vector<uint64_t> Loader::sockmapStats() const {
  return perCpuSums(sockmap_stats_fd_.get(), SLUICE_SOCKMAP_STAT_MAX);
}

std::vector<MapFill> Loader::mapFill() const {
  std::vector<MapFill> out;
  for (const bpf_map* map :
       {capture_->maps.sluice_enrolled_v1, capture_->maps.sluice_cookie_dst_v1,
        capture_->maps.sluice_orig_dst_v1, capture_->maps.sluice_excluded_ports_v1,
        capture_->maps.sluice_enrolled6_v1, capture_->maps.sluice_cookie_dst6_v1,
        capture_->maps.sluice_orig_dst6_v1})
    if (auto fill = bpf::mapFill(bpf_map__fd(map), bpf_map__name(map)))
      out.push_back(std::move(*fill));
  if (sockmap_)
    if (auto fill = bpf::mapFill(bpf_map__fd(sockmap_->maps.sluice_sockhash_v1),
                                 bpf_map__name(sockmap_->maps.sluice_sockhash_v1)))
      out.push_back(std::move(*fill));
  return out;
}

Result<void> Loader::ensureBpffs(const std::string& pin_dir) {
  const std::string root = "/sys/fs/bpf";
  if (pin_dir.rfind(root + "/", 0) != 0) return {};  // custom location: the operator's mount
  struct statfs st {};
  if (::statfs(root.c_str(), &st) == 0 && st.f_type == kBpfFsMagic) return {};
  if (::mount("bpf", root.c_str(), "bpf", 0, "mode=0700") != 0)
    return failErrno(
        "bpffs is not mounted at /sys/fs/bpf and mounting it failed (mount -t bpf bpf "
        "/sys/fs/bpf)");
  log::get("bpf")->info("mounted bpffs at /sys/fs/bpf");
  return {};
}

Result<std::string> Loader::findCgroup2() {
  std::ifstream mounts("/proc/self/mounts");
  std::string line;
  while (std::getline(mounts, line)) {
    std::istringstream fields(line);
    std::string dev, dir, type;
    fields >> dev >> dir >> type;
    if (type == "cgroup2") return dir;
  }
  return fail("no cgroup2 mount found in /proc/self/mounts; mount one or pass --cgroup");
}

Result<void> Loader::removePinned(const std::string& pin_dir) {
  std::error_code ec;
  if (!std::filesystem::exists(pin_dir, ec)) return {};
  // Only our own pins, only on bpffs: a mistyped --bpf-pin-dir must never
  // empty an ordinary directory.
  struct statfs st {};
  if (::statfs(pin_dir.c_str(), &st) != 0) return failErrno("cannot inspect " + pin_dir);
  if (st.f_type != kBpfFsMagic)
    return fail(fmt::format(
        "{} is not on the BPF filesystem (bpffs): nothing removed; --bpf-pin-dir names the "
        "directory the agent pinned its BPF objects in (default /sys/fs/bpf/sluice)",
        pin_dir));
  std::string foreign;
  for (const auto& entry : std::filesystem::directory_iterator(pin_dir, ec)) {
    std::string name = entry.path().filename().string();
    bool link = name.starts_with("link_");
    if (!link && !name.starts_with("sluice_")) {
      foreign += (foreign.empty() ? "" : ", ") + name;
      continue;
    }
    if (link) detachPinnedLink(entry.path());
    if (::unlink(entry.path().c_str()) != 0)
      return failErrno(fmt::format("cannot remove pinned object {}", entry.path().string()));
  }
  if (!foreign.empty())
    return fail(fmt::format(
        "removed Sluice's pins under {}; left what is not Sluice's ({}), and the directory",
        pin_dir, foreign));
  if (::rmdir(pin_dir.c_str()) != 0 && errno != ENOENT)
    return failErrno(fmt::format("cannot remove pin directory {}", pin_dir));
  return {};
}

}  // namespace sluice::agent::bpf
