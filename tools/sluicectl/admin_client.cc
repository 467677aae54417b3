#include "tools/sluicectl/admin_client.h"

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "sluice/common/addr.h"
#include "sluice/common/json_text.h"
#include "tools/sluicectl/commands.h"

using nlohmann::json;

namespace sluice::ctl {

namespace {

// Connected, request sent, a 5 s bound on sending (and, for `timed`, reading).
Result<UniqueFd> request(const std::string& admin, const std::string& path, bool timed,
                         const char* method = "GET") {
  auto ep = SockAddr::parse(admin);
  if (!ep || ep->port() == 0)
    return fail("invalid --admin address '" + admin + "': expected IP:PORT or [IPv6]:PORT");
  UniqueFd fd(::socket(ep->family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return failErrno("cannot create a socket");
  timeval tv{5, 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (timed) setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (::connect(fd.get(), ep->sa(), ep->len()) != 0)
    return failErrno("cannot reach the agent admin API at " + admin +
                     ": is sluice-agent running on this node? (--admin selects another address)");
  std::string req = std::string(method) + " " + path + " HTTP/1.0\r\nHost: " + admin +
                    (std::strcmp(method, "POST") == 0 ? "\r\nContent-Length: 0" : "") + "\r\n\r\n";
  if (::write(fd.get(), req.data(), req.size()) != static_cast<ssize_t>(req.size()))
    return failErrno("sending to the admin API at " + admin + " failed");
  return fd;
}

// "HTTP/1.x NNN ..." -> NNN; 0 for anything else.
int statusOf(const std::string& head) {
  if (head.rfind("HTTP/1.", 0) != 0) return 0;
  return std::atoi(head.c_str() + head.find(' ') + 1);
}

std::string olderAgent(const std::string& admin, const std::string& path) {
  return "the agent at " + admin + " has no " + path +
         ": it is older than this sluicectl (upgrade the agent), or the address is not its admin "
         "API (--admin; the admin API listens on 127.0.0.1:15000 by default, metrics on "
         ":15020)";
}

}  // namespace

Result<AdminResponse> adminFetch(const std::string& admin, const std::string& path, bool post) {
  auto fd = request(admin, path, /*timed=*/true, post ? "POST" : "GET");
  if (!fd) return tl::unexpected(fd.error());
  std::string resp;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd->get(), buf, sizeof(buf))) > 0) resp.append(buf, static_cast<size_t>(n));
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
    return fail("the agent at " + admin + " did not answer " + path +
                " within 5 s (is it overloaded or stuck? its log says more)");
  if (n < 0) return failErrno("reading from the admin API at " + admin + " failed");
  auto body = resp.find("\r\n\r\n");
  int status = statusOf(resp);
  if (status == 0 || body == std::string::npos)
    return fail("malformed answer from the admin API at " + admin);
  return AdminResponse{status, resp.substr(body + 4)};
}

namespace {

// The agent's refusal of `path`: its {"error"} text when it sent one.
std::string refusal(const std::string& path, int status, const std::string& body) {
  json err = json::parse(body, nullptr, false);
  std::string msg =
      !err.is_discarded() && err.is_object() && err.contains("error") && err["error"].is_string()
          ? err["error"].get<std::string>()
          : body;
  return "the agent refused " + path + " (" + std::to_string(status) + "): " + msg;
}

Result<json> jsonOf(const std::string& admin, const std::string& path, const AdminResponse& r) {
  if (r.status == 404) return fail(olderAgent(admin, path));
  if (r.status != 200) return fail(refusal(path, r.status, r.body));
  auto j = json::parse(r.body, nullptr, false);
  if (j.is_discarded()) return fail("admin API " + path + " returned invalid JSON");
  return j;
}

// Exit status 2: what the user typed is wrong (an --admin that is no
// address, a request the agent refused as malformed); 1: anything else.
int exitFor(const Error& e) { return e.message.find("invalid --admin") == 0 ? 2 : 1; }

}  // namespace

Result<json> adminJson(const std::string& admin, const std::string& path) {
  auto r = adminFetch(admin, path);
  if (!r) return tl::unexpected(r.error());
  return jsonOf(admin, path, *r);
}

json adminGet(const std::string& admin, const std::string& path) {
  auto r = adminFetch(admin, path);
  if (!r) die(r.error().describe(), exitFor(r.error()));
  auto j = jsonOf(admin, path, *r);
  if (!j) die(j.error().describe(), r->status == 400 ? 2 : 1);
  return *j;
}

AdminStream::AdminStream(const std::string& admin, const std::string& path) {
  auto fd = request(admin, path, /*timed=*/false);
  if (!fd) die(fd.error().describe(), exitFor(fd.error()));
  fd_ = std::move(*fd);
  size_t end;
  while ((end = buffer_.find("\r\n\r\n")) == std::string::npos)
    if (!fill(5000)) die("no answer from the admin API at " + admin + " for " + path);
  int status = statusOf(buffer_);
  if (status == 0) die("malformed answer from the admin API at " + admin);
  buffer_.erase(0, end + 4);
  if (status == 200) return;
  while (fill(5000)) {
  }
  if (status == 404) die(olderAgent(admin, path));
  die(refusal(path, status, buffer_), status == 400 ? 2 : 1);
}

bool AdminStream::fill(int timeout_ms) {
  if (closed_) return false;
  pollfd p{fd_.get(), POLLIN, 0};
  int r = ::poll(&p, 1, timeout_ms);
  if (r <= 0) return false;
  char buf[65536];
  ssize_t n = ::read(fd_.get(), buf, sizeof(buf));
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

std::string str(const json& j, const char* key) {
  if (!j.contains(key)) return "";
  const auto& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  return jsonText(v);
}

}  // namespace sluice::ctl
