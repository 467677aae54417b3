// The agent's admin and metrics HTTP server, one connection
// (agent/admin/http_connection.h): whatever a local client sends. The bytes
// arrive through a socket pair and the client half-closes; every request is
// answered as the server would (a document, a body by reference, a stream),
// until the connection is done. Never crashes, never stays open once the
// client is gone and everything is written, and whatever it writes starts
// with a status line.
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "agent/admin/http_connection.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using sluice::agent::admin::Connection;
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) != 0) return 0;
  sluice::UniqueFd client(fds[1]);
  Connection conn{sluice::UniqueFd(fds[0])};
  size_t sent = 0;
  std::string got;
  for (int round = 0; round < 10000 && !conn.done(); ++round) {
    if (sent < size) {
      ssize_t n = ::send(client.get(), data + sent, size - sent, MSG_NOSIGNAL);
      if (n > 0) sent += size_t(n);
      if (sent == size) ::shutdown(client.get(), SHUT_WR);
    }
    if (!conn.readSome()) break;
    while (auto req = conn.next()) {
      if (req->target.rfind("/stream", 0) == 0) {
        conn.startStream("application/x-ndjson");
        conn.streamData(req->target);
        conn.endStream();
      } else if (req->target.rfind("/shared", 0) == 0) {
        conn.respond(200, "text/plain", std::make_shared<const std::string>(req->target));
      } else {
        conn.respond(404, "application/json", "{}\n", "X-Test: 1\r\n");
      }
    }
    if (!conn.flush()) break;
    char buf[65536];
    for (ssize_t n; (n = ::recv(client.get(), buf, sizeof(buf), 0)) > 0;)
      if (got.size() < 4096) got.append(buf, size_t(n));
    // Everything read and written, the client gone: the connection must
    // be done by now, not left open until its timeout.
    if (conn.eof() && conn.pending() == 0 && !conn.done() && round > 100) std::abort();
  }
  if (!got.empty() && got.rfind("HTTP/1.", 0) != 0) std::abort();
  return 0;
}
