// "Did you mean ...?" for an operator's typo: the known word closest to
// what was written.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <span>
#include <string_view>

namespace sluice {

// Levenshtein distance, ignoring ASCII case.
size_t editDistance(std::string_view a, std::string_view b);

// The candidate nearest to `word` if it is within `max_distance` edits
// (case ignored), else null. `word` itself among them is distance 0.
const char* closestWord(std::string_view word, std::span<const char* const> candidates,
                        size_t max_distance = 2);
inline const char* closestWord(std::string_view word, std::initializer_list<const char*> candidates,
                               size_t max_distance = 2) {
  return closestWord(word, std::span<const char* const>(candidates.begin(), candidates.size()),
                     max_distance);
}

}  // namespace sluice
