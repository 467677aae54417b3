// Loads, attaches and pins Sluice's BPF programs; owns every bpf_object.
//
// Pinned state under --bpf-pin-dir survives the agent: the maps (enrolled
// pods, redirect records, stats), the cgroup links and each enrolled pod
// netns's sk_lookup link. On start the loader reuses pinned maps and
// atomically swaps pinned links to the freshly loaded programs (a pod's
// sk_lookup link as the pod is enrolled again), so capture never stops
// across an agent restart.
#pragma once

#include <linux/bpf.h>
#include <linux/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "agent/bpf/map.h"
#include "agent/bpf/map_fill.h"
#include "sluice/common/bpf_abi.h"
#include "sluice/common/result.h"
#include "sluice/common/unique_fd.h"

struct sluice_capture;
struct sluice_inbound;
struct sluice_sockmap;
struct bpf_object_open_opts;

namespace sluice::agent::bpf {

using EnrolledMap = BpfMap<__u64, sluice_enrolled>;
using OrigDstMap = BpfMap<sluice_pair_key, sluice_orig_dst>;
using ExcludedPortsMap = BpfMap<__u16, __u8>;
// The IPv6 twins (their own pins beside the IPv4 maps, see sluice_abi.h).
using Enrolled6Map = BpfMap<__u64, sluice_enrolled6>;
using OrigDst6Map = BpfMap<sluice_pair_key6, sluice_orig_dst6>;

struct LoaderConfig {
  std::string pin_dir;                   // e.g. /sys/fs/bpf/sluice
  std::string cgroup_path;               // cgroup-v2 root, e.g. /sys/fs/cgroup/unified
  std::vector<uint16_t> excluded_ports;  // host order
  bool sockmap = false;                  // --sockmap=on: same-node acceleration
};

// Same-node acceleration (bpf/sockmap.bpf.c): its sockops program is attached
// through a link pinned as linkPin(pin_dir, kSockmapSockops) only while
// --sockmap=on; its sk_msg program is attached to the pinned sockhash.
inline constexpr const char* kSockmapSockops = "sluice_sockmap_sockops";

// Which mode runs. A kernel that refuses the programs turns a requested "on"
// into "off" with the reason, never silently.
struct SockmapState {
  bool requested = false;
  bool active = false;
  std::string detail;  // why it is off when requested, or what runs
};

// The programs attached at the cgroup-v2 root, each through a link pinned as
// linkPin(pin_dir, program). `sluicectl check` verifies every one of them.
struct CgroupProgram {
  const char* program;  // name in capture.bpf.c
  bpf_attach_type type;
};
inline constexpr CgroupProgram kCgroupPrograms[] = {
    {"sluice_connect4", BPF_CGROUP_INET4_CONNECT},
    {"sluice_connect6", BPF_CGROUP_INET6_CONNECT},
    {"sluice_sockops", BPF_CGROUP_SOCK_OPS},
    {"sluice_getsockopt", BPF_CGROUP_GETSOCKOPT},
    {"sluice_getpeername4", BPF_CGROUP_INET4_GETPEERNAME},
    {"sluice_getpeername6", BPF_CGROUP_INET6_GETPEERNAME},
    {"sluice_getsockname4", BPF_CGROUP_INET4_GETSOCKNAME},
    {"sluice_getsockname6", BPF_CGROUP_INET6_GETSOCKNAME},
};
inline std::string linkPin(const std::string& pin_dir, const std::string& program) {
  return pin_dir + "/link_" + program;
}
// The sk_lookup program's link of an enrolled pod's netns (Loader::attachInbound).
inline std::string lookupLinkPin(const std::string& pin_dir, uint64_t netns_cookie) {
  return linkPin(pin_dir, "lookup_" + std::to_string(netns_cookie));
}

struct AttachedLink {
  std::string program;  // sluice_connect4 ...
  std::string pin;      // pinned link path
  uint32_t link_id = 0;
  bool reused = false;  // an existing pinned link was updated in place
};

class Loader {
 public:
  static Result<std::unique_ptr<Loader>> create(const LoaderConfig& config);
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  EnrolledMap& enrolled() { return enrolled_; }
  OrigDstMap& origDst() { return orig_dst_; }
  // An enrolled pod's IPv6 address (only pods that have one): connect6
  // captures real IPv6 destinations only from those pods.
  Enrolled6Map& enrolled6() { return enrolled6_; }
  OrigDst6Map& origDst6() { return orig_dst6_; }
  // Enrolls a pod netns: its IPv6 address (canonical text, empty when it has
  // none) into sluice_enrolled6_v1 first, then `value` into
  // sluice_enrolled_v1, so connect6 never sees the pod without its own
  // address. unenroll() removes both, and the netns's sk_lookup link.
  Result<void> enroll(uint64_t netns_cookie, const sluice_enrolled& value, const std::string& ip6);
  void unenroll(uint64_t netns_cookie);
  const std::vector<AttachedLink>& links() const { return links_; }
  const SockmapState& sockmap() const { return sockmap_state_; }
  // Sum of the per-CPU sockmap counters (enum sluice_sockmap_stat order);
  // zeros while sockmap is off.
  std::vector<uint64_t> sockmapStats() const;

  // Attaches the inbound programs of an enrolled pod: the tc ingress
  // program to ifname inside the given netns (creating the clsact qdisc;
  // replacing an older Sluice filter) and the sk_lookup program to the netns
  // (a link pinned as lookupPin(), whose program an existing pin swaps).
  Result<void> attachInbound(int netns_fd, const std::string& ifname);
  // Removes Sluice's tc filter from ifname and the netns's sk_lookup link;
  // missing netns/interface is fine.
  void detachInbound(int netns_fd, const std::string& ifname);
  // Where the sk_lookup link of the netns with this cookie is pinned.
  std::string lookupPin(uint64_t netns_cookie) const {
    return lookupLinkPin(config_.pin_dir, netns_cookie);
  }
  // fd of sluice_inbound_listeners (the SOCKHASH of the proxy's 15006
  // listeners, keyed by the pod address): MapInboundSteering fills it.
  int inboundListenersFd() const;

  // fd of the tc ingress program (for BPF_PROG_TEST_RUN in tests).
  int tcProgramFd() const;

  // Sum of the per-CPU stats counters: enum sluice_stat order, then the
  // IPv6 ones of sluice_stats6_v1 from index kStat6Base (enum sluice_stat6),
  // then those of sluice_stats4_v1 from kStat4Base (enum sluice_stat4;
  // stat_names.h).
  std::vector<uint64_t> stats() const;
  // Fill level of every hash map (enrolled pods, pending and re-keyed
  // redirect records, excluded ports); a map that cannot be read is left out.
  std::vector<MapFill> mapFill() const;

  // Mounts bpffs at /sys/fs/bpf when nothing is mounted there yet (as on
  // hosts whose init system does not), so pins under it are shared.
  static Result<void> ensureBpffs(const std::string& pin_dir);
  // The cgroup-v2 mount point from /proc/self/mounts (unified or hybrid).
  static Result<std::string> findCgroup2();

  // Loads each of Sluice's BPF programs on its own (nothing pinned, nothing
  // attached, everything freed again): what `sluicectl check --pre` reports.
  struct ProgramProbe {
    std::string program;  // sluice_connect4 ...
    std::string section;  // cgroup/connect4 ...
    std::string error;    // empty: the verifier accepted it
  };
  static std::vector<ProgramProbe> probePrograms();
  // The same for the optional sockmap programs (--sockmap=on).
  static std::vector<ProgramProbe> probeSockmapPrograms();

  // Removes every pinned object under pin_dir (links detach when the last fd
  // closes). Used by `sluice-agent uninstall`.
  static Result<void> removePinned(const std::string& pin_dir);

 private:
  Loader() = default;
  Result<void> attachCgroupPrograms();
  // Adopts the IPv6 twins of the capture maps and sluice_stats6_v1.
  Result<void> adoptIp6Maps();
  Result<void> attachLookup(int netns_fd);
  void releaseLookup(uint64_t netns_cookie);  // detaches and unpins its link
  // Attaches prog_fd at the cgroup through the link pinned for `program`,
  // swapping the program of an existing pinned link in place.
  Result<AttachedLink> attachLink(int prog_fd, const char* program, bpf_attach_type type);
  // Loads and attaches the sockmap programs (--sockmap=on), or removes the
  // sockops link an earlier run left (off). Never fails the agent: a refusal
  // is logged and recorded in sockmap_state_.
  void configureSockmap(const bpf_object_open_opts* opts);
  Result<void> enableSockmap(const bpf_object_open_opts* opts);

  // The skeletons' __destroy (defined where the skeleton headers are).
  struct CaptureDestroy {
    void operator()(sluice_capture* skel) const;
  };
  struct InboundDestroy {
    void operator()(sluice_inbound* skel) const;
  };
  struct SockmapDestroy {
    void operator()(sluice_sockmap* skel) const;
  };

  // Destroyed in reverse: our link fds first (pinned links stay attached),
  // then the cgroup, then the programs and maps.
  LoaderConfig config_;
  std::unique_ptr<sluice_capture, CaptureDestroy> capture_;
  std::unique_ptr<sluice_inbound, InboundDestroy> inbound_;
  std::unique_ptr<sluice_sockmap, SockmapDestroy> sockmap_;
  SockmapState sockmap_state_;
  UniqueFd cgroup_fd_;
  std::vector<UniqueFd> link_fds_;
  std::vector<AttachedLink> links_;
  EnrolledMap enrolled_;
  OrigDstMap orig_dst_;
  ExcludedPortsMap excluded_;
  Enrolled6Map enrolled6_;
  OrigDst6Map orig_dst6_;
  UniqueFd stats_fd_;
  UniqueFd stats6_fd_;
  UniqueFd stats4_fd_;
  UniqueFd sockmap_stats_fd_;
};

// Name of the tc filter priority/handle Sluice uses in pod netns.
inline constexpr uint32_t kTcHandle = 0x5100;
inline constexpr uint32_t kTcPriority = 1;

}  // namespace sluice::agent::bpf
