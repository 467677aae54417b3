#include "tools/sluicectl/admin_client.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "sluice/common/addr.h"
#include "tools/sluicectl/commands.h"

namespace sluice::ctl {

using nlohmann::json;

// Minimal HTTP/1.0 GET over a blocking socket: the admin API is local and
// small; a timeout bounds every call.
json adminGet(const std::string& admin, const std::string& path) {
  auto ep = parseEndpoint(admin);
  if (!ep) die("invalid --admin address '" + admin + "': expected IP:PORT", 2);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (connect(fd, reinterpret_cast<sockaddr*>(&*ep), sizeof(*ep)) != 0)
    die("cannot reach the agent admin API at " + admin + " (" + strerror(errno) +
        "): is sluice-agent running on this node? (--admin selects another address)");
  std::string req = "GET " + path + " HTTP/1.0\r\nHost: " + admin + "\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size()))
    die("sending to the admin API failed");
  std::string resp;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) resp.append(buf, n);
  close(fd);
  auto body = resp.find("\r\n\r\n");
  if (resp.rfind("HTTP/1.", 0) != 0 || body == std::string::npos)
    die("malformed answer from the admin API at " + admin);
  int status = std::atoi(resp.c_str() + resp.find(' ') + 1);
  std::string payload = resp.substr(body + 4);
  json j = json::parse(payload, nullptr, false);
  if (status != 200) {
    // The agent's errors are {"error": "..."}: say what it said.
    if (!j.is_discarded() && j.is_object() && j.contains("error") && j["error"].is_string())
      die(j["error"].get<std::string>());
    die("admin API " + path + " answered " + std::to_string(status) + ": " + payload);
  }
  if (j.is_discarded()) die("admin API " + path + " returned invalid JSON");
  return j;
}

std::string str(const json& j, const char* key) {
  if (!j.contains(key)) return "";
  const auto& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  return v.dump();
}

}  // namespace sluice::ctl
