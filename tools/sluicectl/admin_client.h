// sluicectl's client of the agent's admin API: one JSON document per GET, or
// a stream of lines (/live/tap). Plain HTTP/1.0 over a blocking socket: the
// API is local; an agent that cannot be reached ends the command with what
// to do.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace sluice::ctl {

nlohmann::json adminGet(const std::string& admin, const std::string& path);

// The body of a streamed response, line by line.
class AdminStream {
 public:
  // Connects and checks the answer's status; dies with the agent's message.
  AdminStream(const std::string& admin, const std::string& path);
  ~AdminStream();
  AdminStream(const AdminStream&) = delete;
  AdminStream& operator=(const AdminStream&) = delete;

  enum class Next { kLine, kTimeout, kClosed };
  // The next line (without its newline), waiting at most timeout_ms (-1: forever).
  Next next(std::string& line, int timeout_ms);

 private:
  bool fill(int timeout_ms);  // false: timeout or closed (closed_ says which)
  int fd_ = -1;
  bool closed_ = false;
  std::string buffer_;
};

// An HTTP query string value, percent-encoded.
std::string urlEncode(const std::string& s);

}  // namespace sluice::ctl
