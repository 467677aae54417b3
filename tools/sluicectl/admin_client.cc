#include "tools/sluicectl/admin_client.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "sluice/common/addr.h"
#include "sluice/common/unique_fd.h"

namespace sluice::ctl {

Result<AdminResponse> adminFetch(const std::string& admin, const std::string& path) {
  auto ep = parseEndpoint(admin);
  if (!ep) return fail("invalid --admin address '" + admin + "': expected IP:PORT");
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return failErrno("cannot create a socket");
  timeval tv{5, 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&*ep), sizeof(*ep)) != 0)
    return failErrno("cannot reach the agent admin API at " + admin +
                     ": is sluice-agent running on this node? (--admin selects another address)");
  std::string req = "GET " + path + " HTTP/1.0\r\nHost: " + admin + "\r\n\r\n";
  if (::write(fd.get(), req.data(), req.size()) != static_cast<ssize_t>(req.size()))
    return failErrno("sending to the admin API at " + admin + " failed");
  std::string resp;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd.get(), buf, sizeof(buf))) > 0) resp.append(buf, static_cast<size_t>(n));
  if (n < 0) return failErrno("reading from the admin API at " + admin + " failed");
  auto body = resp.find("\r\n\r\n");
  if (resp.rfind("HTTP/1.", 0) != 0 || body == std::string::npos)
    return fail("malformed answer from the admin API at " + admin);
  return AdminResponse{std::atoi(resp.c_str() + resp.find(' ') + 1), resp.substr(body + 4)};
}

Result<nlohmann::json> adminJson(const std::string& admin, const std::string& path) {
  auto r = adminFetch(admin, path);
  if (!r) return tl::unexpected(r.error());
  if (r->status != 200)
    return fail("admin API " + path + " answered " + std::to_string(r->status) + ": " + r->body);
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (j.is_discarded()) return fail("admin API " + path + " returned invalid JSON");
  return j;
}

}  // namespace sluice::ctl
