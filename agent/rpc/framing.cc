#include "agent/rpc/framing.h"

#include <arpa/inet.h>

#include <cctype>
#include <cstring>

#include "sluice/common/fmt.h"

namespace sluice::agent::rpc {

namespace {

std::string percentDecode(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out.push_back(static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

}  // namespace

Status MessageReader::feed(std::string_view data,
                           const std::function<bool(const std::string&)>& on_message) {
  Status failure;
  rx_.append(data);
  while (rx_.size() - rx_off_ >= 5) {
    const char* p = rx_.data() + rx_off_;
    uint32_t mlen;
    std::memcpy(&mlen, p + 1, 4);
    mlen = ntohl(mlen);
    if (p[0] != 0) {
      failure = {kInternal, "compressed message from the control plane"};
      break;
    }
    if (mlen > max_) {
      failure = {kResourceExhausted,
                 fmt::format("message of {} bytes from the control plane exceeds the limit of {}",
                             mlen, max_)};
      break;
    }
    if (rx_.size() - rx_off_ < 5 + size_t{mlen}) break;
    std::string msg(p + 5, mlen);
    rx_off_ += 5 + mlen;
    if (!on_message(msg)) {
      failure = {kCancelled, "ended by the caller"};
      break;
    }
  }
  if (rx_off_ == rx_.size()) {
    rx_.clear();
    rx_off_ = 0;
  } else if (rx_off_ > (1u << 20)) {
    rx_.erase(0, rx_off_);
    rx_off_ = 0;
  }
  return failure;
}

Status trailerStatus(const std::string& grpc_status, const std::string& grpc_message,
                     bool mid_message) {
  int code = kUnknown;
  try {
    code = std::stoi(grpc_status);
  } catch (...) {
  }
  if (code == kOk && mid_message) return {kInternal, "the answer ended inside a message"};
  return {code, percentDecode(grpc_message)};
}

}  // namespace sluice::agent::rpc
