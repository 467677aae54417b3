#include "sluice/common/suggest.h"

#include <algorithm>
#include <vector>

namespace sluice {

namespace {
char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }
}  // namespace

size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min(
          {prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (lower(a[i - 1]) != lower(b[j - 1]))});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

const char* closestWord(std::string_view word, std::span<const char* const> candidates,
                        size_t max_distance) {
  const char* best = nullptr;
  size_t best_d = max_distance + 1;
  for (const char* c : candidates)
    if (size_t d = editDistance(word, c); d < best_d) best = c, best_d = d;
  return best;
}

}  // namespace sluice
