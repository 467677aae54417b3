#include "tools/sluicectl/admin_client.h"

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "sluice/common/addr.h"
#include "tools/sluicectl/commands.h"

using nlohmann::json;

namespace sluice::ctl {

namespace {

int connectAdmin(const std::string& admin, const std::string& path) {
  auto ep = parseEndpoint(admin);
  if (!ep) die("invalid --admin address '" + admin + "': expected IP:PORT", 2);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (connect(fd, reinterpret_cast<sockaddr*>(&*ep), sizeof(*ep)) != 0)
    die("cannot reach the agent admin API at " + admin + " (" + strerror(errno) +
        "): is sluice-agent running on this node? (--admin selects another address)");
  std::string req = "GET " + path + " HTTP/1.0\r\nHost: " + admin + "\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size()))
    die("sending to the admin API at " + admin + " failed: " + strerror(errno));
  return fd;
}

// "HTTP/1.x NNN ..." -> NNN; dies on anything else.
int statusOf(const std::string& head, const std::string& admin) {
  if (head.rfind("HTTP/1.", 0) != 0) die("malformed answer from the admin API at " + admin);
  return std::atoi(head.c_str() + head.find(' ') + 1);
}

}  // namespace

// Minimal HTTP/1.0 GET: the admin API is local and small; a timeout bounds every call.
json adminGet(const std::string& admin, const std::string& path) {
  int fd = connectAdmin(admin, path);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string resp;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) resp.append(buf, n);
  close(fd);
  auto body = resp.find("\r\n\r\n");
  if (body == std::string::npos) die("malformed answer from the admin API at " + admin);
  int status = statusOf(resp, admin);
  std::string payload = resp.substr(body + 4);
  if (status == 404)
    die("the agent at " + admin + " has no " + path +
        ": it is older than this sluicectl (upgrade the agent)");
  if (status != 200)
    die("admin API " + path + " answered " + std::to_string(status) + ": " + payload);
  json j = json::parse(payload, nullptr, false);
  if (j.is_discarded()) die("admin API " + path + " returned invalid JSON");
  return j;
}

AdminStream::AdminStream(const std::string& admin, const std::string& path)
    : fd_(connectAdmin(admin, path)) {
  size_t end;
  while ((end = buffer_.find("\r\n\r\n")) == std::string::npos)
    if (!fill(5000)) die("no answer from the admin API at " + admin + " for " + path);
  int status = statusOf(buffer_, admin);
  std::string head = buffer_.substr(0, end);
  buffer_.erase(0, end + 4);
  if (status == 200) return;
  while (fill(5000)) {
  }
  if (status == 404)
    die("the agent at " + admin + " has no " + path +
        ": it is older than this sluicectl (upgrade the agent)");
  json err = json::parse(buffer_, nullptr, false);
  std::string msg =
      !err.is_discarded() && err.contains("error") ? err["error"].get<std::string>() : buffer_;
  die("the agent refused " + path + " (" + std::to_string(status) + "): " + msg);
}

AdminStream::~AdminStream() {
  if (fd_ >= 0) close(fd_);
}

bool AdminStream::fill(int timeout_ms) {
  if (closed_) return false;
  pollfd p{fd_, POLLIN, 0};
  int r = ::poll(&p, 1, timeout_ms);
  if (r < 0 && errno == EINTR) return false;
  if (r <= 0) return false;
  char buf[65536];
  ssize_t n = ::read(fd_, buf, sizeof(buf));
  if (n <= 0) {
    closed_ = true;
    return false;
  }
  buffer_.append(buf, static_cast<size_t>(n));
  return true;
}

AdminStream::Next AdminStream::next(std::string& line, int timeout_ms) {
  while (true) {
    if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
      line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return Next::kLine;
    }
    if (!fill(timeout_ms)) return closed_ ? Next::kClosed : Next::kTimeout;
  }
}

std::string urlEncode(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || c == '/') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

}  // namespace sluice::ctl
