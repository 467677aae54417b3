#include "ztunnel/uring/ops.h"

#include <cstddef>
#include <cstring>

namespace sluice::ztunnel::uring {

namespace {
// Not in Debian 12's kernel headers (6.1): the kernel's own values.
constexpr uint8_t kOpBind = 56;            // IORING_OP_BIND (6.11)
constexpr uint32_t kSocketSetsockopt = 3;  // SOCKET_URING_OP_SETSOCKOPT (6.7)

bool probe() {
  io_uring_probe* p = io_uring_get_probe();
  if (!p) return false;
  // BIND came after the socket commands: a kernel with it has both.
  bool ok =
      io_uring_opcode_supported(p, kOpBind) && io_uring_opcode_supported(p, IORING_OP_URING_CMD);
  io_uring_free_probe(p);
  return ok;
}
}  // namespace

bool socketSetupSupported() {
  static const bool supported = probe();
  return supported;
}

void prepSetsockopt(io_uring_sqe* s, int fd, int level, int name, const int* value) {
  prepSetsockopt(s, fd, level, name, value, sizeof(int));
}

void prepSetsockopt(io_uring_sqe* s, int fd, int level, int name, const void* value, unsigned len) {
  io_uring_prep_rw(IORING_OP_URING_CMD, s, fd, nullptr, 0, 0);
  s->cmd_op = kSocketSetsockopt;
  // The kernel's sqe->level and sqe->optname share the word of sqe->addr
  // (level first), sqe->optlen that of sqe->file_index, and sqe->optval
  // that of sqe->addr3.
  const uint32_t level_name[2] = {static_cast<uint32_t>(level), static_cast<uint32_t>(name)};
  std::memcpy(reinterpret_cast<char*>(s) + offsetof(io_uring_sqe, addr), level_name,
              sizeof(level_name));
  s->file_index = len;
  s->addr3 = reinterpret_cast<uint64_t>(value);
}

void prepBind(io_uring_sqe* s, int fd, const SockAddr& addr) {
  // IORING_OP_BIND reads the address from sqe->addr and its length from sqe->addr2 (off).
  io_uring_prep_rw(kOpBind, s, fd, addr.sa(), 0, addr.len());
}

}  // namespace sluice::ztunnel::uring
