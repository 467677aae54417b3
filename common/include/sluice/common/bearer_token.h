// A bearer token given literally, or read from a file on every use:
// Kubernetes rotates projected service account tokens in place, so a
// long-running agent must not keep the one it started with.
#pragma once

#include <fstream>
#include <sstream>
#include <string>

namespace sluice {

struct BearerToken {
  BearerToken(std::string v = {}, std::string f = {}) : value(std::move(v)), file(std::move(f)) {}
  std::string value;
  std::string file;

  bool empty() const { return value.empty() && file.empty(); }
  // The current token (trailing whitespace trimmed); empty when the file is unreadable.
  std::string get() const {
    if (file.empty()) return value;
    std::ifstream in(file);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string t = ss.str();
    while (!t.empty() && (t.back() == '\n' || t.back() == '\r' || t.back() == ' ')) t.pop_back();
    return t;
  }
};

}  // namespace sluice
