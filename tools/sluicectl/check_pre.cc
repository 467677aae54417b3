// `sluicectl check --pre`: can this node run Sluice? Every item is probed on
// the running kernel, not inferred from a version number.
#include <bpf/bpf.h>
#include <linux/magic.h>
#include <sys/statfs.h>
#include <sys/timex.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>

#include "agent/bpf/loader.h"
#include "cni-plugin/installer.h"
#include "sluice/common/fmt.h"
#include "tools/sluicectl/check.h"
#include "ztunnel/uring/ring.h"

namespace sluice::ctl::check {
namespace {

// The proxy's io_uring setup (SINGLE_ISSUER, DEFER_TASKRUN, multishot accept)
// needs 6.1.
constexpr int kMinMajor = 6, kMinMinor = 1;

Outcome kernelVersion() {
  utsname u{};
  if (uname(&u) != 0) return Outcome::failed("uname failed", "run sluicectl on the node itself");
  int major = 0, minor = 0;
  if (std::sscanf(u.release, "%d.%d", &major, &minor) != 2)
    return Outcome::warn(fmt::format("cannot read the kernel version from '{}'", u.release),
                         "the probes below decide whether Sluice can run");
  if (major < kMinMajor || (major == kMinMajor && minor < kMinMinor))
    return Outcome::failed(fmt::format("running {}", u.release),
                           fmt::format("upgrade the node's kernel to {}.{} or newer (the proxy's "
                                       "io_uring features and the BPF programs need it)",
                                       kMinMajor, kMinMinor));
  return Outcome::ok(u.release);
}

Outcome cgroup2() {
  auto mount = agent::bpf::Loader::findCgroup2();
  if (!mount)
    return Outcome::failed(mount.error().describe(),
                           "mount the cgroup v2 hierarchy (systemd: boot with "
                           "systemd.unified_cgroup_hierarchy=1, or mount -t cgroup2 none "
                           "/sys/fs/cgroup/unified); Sluice's capture attaches there");
  return Outcome::ok(*mount);
}

Outcome bpffs() {
  struct statfs st {};
  if (statfs("/sys/fs/bpf", &st) != 0 || static_cast<unsigned long>(st.f_type) != BPF_FS_MAGIC)
    return Outcome::warn("nothing of type bpf is mounted at /sys/fs/bpf",
                         "the agent mounts it itself, but mount it from the host (mount -t bpf "
                         "bpf /sys/fs/bpf, or your distribution's unit) so that pinned programs "
                         "are shared with the agent's container");
  return Outcome::ok();
}

Outcome btf() {
  if (::access("/sys/kernel/btf/vmlinux", R_OK) != 0)
    return Outcome::failed(
        fmt::format("/sys/kernel/btf/vmlinux: {}", std::strerror(errno)),
        "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y: Sluice's BPF programs are CO-RE");
  return Outcome::ok();
}

Outcome sockhash() {
  int fd = bpf_map_create(BPF_MAP_TYPE_SOCKHASH, "sluice_probe", sizeof(uint64_t), sizeof(uint64_t),
                          16, nullptr);
  if (fd < 0)
    return Outcome::warn(
        fmt::format("creating a BPF_MAP_TYPE_SOCKHASH map failed: {}", std::strerror(errno)),
        "same-node socket acceleration (sockmap) needs it; run as root on a "
        "kernel with CONFIG_BPF_STREAM_PARSER=y");
  ::close(fd);
  for (const auto& probe : agent::bpf::Loader::probeSockmapPrograms())
    if (!probe.error.empty())
      return Outcome::warn(fmt::format("{} ({}): {}", probe.program, probe.section, probe.error),
                           "--sockmap=on would fall back to off on this kernel (the agent logs "
                           "it and shows it in /config_dump bpf.sockmap)");
  return Outcome::ok();
}

Outcome ioUring() {
  std::ifstream sysctl("/proc/sys/kernel/io_uring_disabled");
  int disabled = 0;
  if (sysctl >> disabled; disabled == 2)
    return Outcome::failed("kernel.io_uring_disabled = 2",
                           "sysctl -w kernel.io_uring_disabled=0 (and persist it in "
                           "/etc/sysctl.d): Sluice's proxy is built on io_uring");
  auto ring = ztunnel::uring::Ring::create(8);
  if (!ring)
    return Outcome::failed(ring.error().describe(),
                           "check kernel.io_uring_disabled, seccomp or LSM policy that blocks "
                           "io_uring_setup for the agent");
  if (disabled == 1)
    return Outcome::warn("kernel.io_uring_disabled = 1: only privileged processes may use it",
                         "the agent runs privileged, so it works; set 0 to be safe");
  if (!(*ring)->waitsWithoutIowait())
    return Outcome::warn(
        "no IORING_ENTER_NO_IOWAIT (kernel before 6.15): proxy workers waiting for traffic "
        "count as I/O wait",
        "Sluice works; the node's iowait and the agent's io.pressure will overstate its I/O, so "
        "keep the agent out of alerts on them (kernel 6.15+ removes this)");
  return Outcome::ok("SINGLE_ISSUER, DEFER_TASKRUN, NO_IOWAIT");
}

Outcome cniChainable(const NodePaths& paths) {
  cni::InstallerOptions options;
  options.conf_dir = paths.cni_conf_dir;
  options.bin_dir = paths.cni_bin_dir;
  auto plan = cni::Installer(options).plan();
  if (!plan)
    return Outcome::failed(plan.error().describe(),
                           "pass the container runtime's CNI config dir with --cni-conf-dir");
  const auto& st = plan->status;
  switch (st.state) {
    case cni::ChainState::kChained:
      return Outcome::ok(st.file.string());
    case cni::ChainState::kNoPrimaryConfig:
      return Outcome::warn(st.detail,
                           "install the cluster's primary CNI first; the sluice-cni installer "
                           "waits for its configuration and chains into it");
    case cni::ChainState::kUnusable:
    case cni::ChainState::kUnsupportedVersion:
      break;
  }
  return Outcome::failed(st.detail, "fix the primary CNI's configuration (see above)");
}

Outcome clockSynced() {
  timex tx{};
  if (adjtimex(&tx) == TIME_ERROR)
    return Outcome::warn("the kernel reports the clock as unsynchronized",
                         "run an NTP client (chrony, systemd-timesyncd): mutual TLS checks "
                         "certificate validity against this clock");
  return Outcome::ok();
}

Outcome clockNotBehindBuild() {
  auto now = std::chrono::duration_cast<std::chrono::seconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  // A day of slack: the build machine's clock may be ahead too.
  if (now + 86400 < SLUICE_BUILD_UNIX)
    return Outcome::failed(
        "the clock is more than a day before this sluicectl was built",
        "set the clock (NTP): certificates issued now would look not yet valid elsewhere");
  return Outcome::ok();
}

}  // namespace

std::vector<Check> preInstallChecks(const NodePaths& paths) {
  std::vector<Check> checks = {
      {"kernel", "Linux 6.1 or newer", kernelVersion},
      {"kernel", "cgroup v2 is mounted", cgroup2},
      {"kernel", "bpffs is mounted at /sys/fs/bpf", bpffs},
      {"kernel", "kernel BTF is available (CO-RE)", btf},
  };
  for (const auto& probe : agent::bpf::Loader::probePrograms())
    checks.push_back({"bpf", fmt::format("{} ({}) loads", probe.program, probe.section), [probe] {
                        return probe.error.empty()
                                   ? Outcome::ok()
                                   : Outcome::failed(probe.error,
                                                     "Sluice cannot capture traffic on this "
                                                     "kernel; run as root, check lockdown/LSM "
                                                     "policy, or upgrade the kernel");
                      }});
  checks.push_back({"bpf",
                    "sockmap (BPF_MAP_TYPE_SOCKHASH, the sk_msg/sockops programs) is available",
                    sockhash});
  checks.push_back({"io_uring", "io_uring works with the proxy's setup", ioUring});
  checks.push_back({"cni", "the primary CNI configuration is found and can chain sluice-cni",
                    [paths] { return cniChainable(paths); }});
  checks.push_back({"clock", "the system clock is synchronized", clockSynced});
  checks.push_back({"clock", "the system clock is not behind this build", clockNotBehindBuild});
  return checks;
}

}  // namespace sluice::ctl::check
