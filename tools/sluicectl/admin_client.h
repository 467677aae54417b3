// sluicectl's client of the agent's admin API: one JSON document per GET, or
// a stream of lines (/live/tap). Plain HTTP/1.0 over a blocking socket with a
// timeout: the API is local and small.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "sluice/common/result.h"
#include "sluice/common/unique_fd.h"

namespace sluice::ctl {

struct AdminResponse {
  int status = 0;
  std::string body;
};

// Fails when the API cannot be reached or does not answer HTTP; the message
// says what to do (`sluicectl check` reports it instead of dying).
// `post`: an action (POST, no body).
Result<AdminResponse> adminFetch(const std::string& admin, const std::string& path,
                                 bool post = false);
// adminFetch, then a 200 with a JSON body (else the error names the path).
Result<nlohmann::json> adminJson(const std::string& admin, const std::string& path);
// adminJson, or the command ends with its message.
nlohmann::json adminGet(const std::string& admin, const std::string& path);

// The body of a streamed response, line by line.
class AdminStream {
 public:
  // Connects and checks the answer's status; dies with the agent's message.
  AdminStream(const std::string& admin, const std::string& path);
  AdminStream(const AdminStream&) = delete;
  AdminStream& operator=(const AdminStream&) = delete;

  enum class Next { kLine, kTimeout, kClosed };
  // The next line (without its newline), waiting at most timeout_ms (-1: forever).
  Next next(std::string& line, int timeout_ms);

 private:
  bool fill(int timeout_ms);  // false: timeout or closed (closed_ says which)
  UniqueFd fd_;
  bool closed_ = false;
  std::string buffer_;
};

// An HTTP query string value, percent-encoded.
std::string urlEncode(const std::string& s);

// A JSON field as text ("" when absent; booleans and numbers printed).
std::string str(const nlohmann::json& j, const char* key);

}  // namespace sluice::ctl
