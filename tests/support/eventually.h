// Polls a condition until it holds or a deadline passes: the one wait the tests share.
#pragma once

#include <chrono>
#include <thread>

namespace sluice::testing {

// True as soon as pred() is; false if it still is not after `timeout` (checked one last
// time at the deadline, so a slow machine does not lose the final poll).
template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = std::chrono::seconds(10),
                std::chrono::milliseconds poll = std::chrono::milliseconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(poll);
  }
  return pred();
}

}  // namespace sluice::testing
