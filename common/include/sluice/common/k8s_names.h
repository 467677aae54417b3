// Kubernetes object names as the API server accepts them.
#pragma once

#include <cstddef>
#include <string_view>

namespace sluice {

// An RFC 1123 label (lower-case letters, digits, '-'; alphanumeric at both
// ends) of at most `max` characters, or with `dots` a subdomain of such
// labels. A namespace: (v, 63, false); most object names: (v, 253, true).
inline bool isDnsName(std::string_view v, size_t max, bool dots) {
  if (v.empty() || v.size() > max) return false;
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  for (size_t i = 0; i < v.size(); ++i) {
    char c = v[i];
    bool edge = i == 0 || i + 1 == v.size() || (dots && (v[i - 1] == '.' || v[i + 1] == '.'));
    if (alnum(c)) continue;
    if (edge || (c != '-' && !(dots && c == '.'))) return false;
  }
  return true;
}

}  // namespace sluice
