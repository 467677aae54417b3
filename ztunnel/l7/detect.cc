#include "ztunnel/l7/detect.h"

#include <algorithm>

namespace sluice::ztunnel::l7 {

namespace {

constexpr std::string_view kH2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
constexpr size_t kMaxMethod = 16;

bool isMethodChar(char c) { return (c >= 'A' && c <= 'Z') || c == '-' || c == '_'; }
// RFC 3986 characters plus '%'; no controls, no space.
bool isTargetChar(char c) { return c > 0x20 && c < 0x7f; }

// `have` is a prefix of `want`, or `want` is a prefix of `have`.
bool prefixMatch(std::string_view have, std::string_view want) {
  size_t n = std::min(have.size(), want.size());
  return have.substr(0, n) == want.substr(0, n);
}

// METHOD SP request-target SP HTTP/1.x CRLF
Detected requestLine(std::string_view s) {
  size_t i = 0;
  while (i < s.size() && isMethodChar(s[i])) ++i;
  if (i == s.size()) return i <= kMaxMethod ? Detected::kNeedMore : Detected::kOpaque;
  if (i == 0 || i > kMaxMethod || s[i] != ' ') return Detected::kOpaque;
  // A tunnel, not requests: its bytes after the 200 are someone else's protocol.
  if (s.substr(0, i) == "CONNECT") return Detected::kOpaque;
  size_t t = ++i;
  while (i < s.size() && isTargetChar(s[i])) ++i;
  if (i == s.size()) return Detected::kNeedMore;
  if (i == t || s[i] != ' ') return Detected::kOpaque;
  std::string_view rest = s.substr(i + 1);
  constexpr std::string_view kVersion = "HTTP/1.";
  if (!prefixMatch(rest, kVersion)) return Detected::kOpaque;
  if (rest.size() <= kVersion.size()) return Detected::kNeedMore;
  char minor = rest[kVersion.size()];
  if (minor != '0' && minor != '1') return Detected::kOpaque;
  std::string_view eol = rest.substr(kVersion.size() + 1);
  if (!prefixMatch(eol, "\r\n")) return Detected::kOpaque;
  return eol.size() >= 2 ? Detected::kHttp1 : Detected::kNeedMore;
}

}  // namespace

const char* toString(Detected d) {
  switch (d) {
    case Detected::kNeedMore:
      return "need_more";
    case Detected::kHttp1:
      return "http1";
    case Detected::kHttp2:
      return "http2";
    case Detected::kOpaque:
      return "opaque";
  }
  return "?";
}

Detected detect(std::string_view head) {
  if (head.empty()) return Detected::kNeedMore;
  if (prefixMatch(head, kH2Preface))
    return head.size() >= kH2Preface.size() ? Detected::kHttp2 : Detected::kNeedMore;
  Detected d = requestLine(head);
  if (d == Detected::kNeedMore && head.size() >= kMaxDetectBytes) return Detected::kOpaque;
  return d;
}

}  // namespace sluice::ztunnel::l7
