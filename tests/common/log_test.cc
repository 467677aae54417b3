// Logging: lines go to stderr whole; a batching thread's lines wait for its
// flush (one write), a bound, or the thread's end.
#include "sluice/common/log.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <string>
#include <thread>

namespace {

// Points fd 2 at a pipe while alive; read() takes what was written so far.
class CapturedStderr {
 public:
  CapturedStderr() {
    REQUIRE(::pipe2(fds_, O_CLOEXEC) == 0);
    REQUIRE(::fcntl(fds_[0], F_SETFL, O_NONBLOCK) == 0);            // read() takes what is there
    REQUIRE(::fcntl(fds_[1], F_SETPIPE_SZ, 1 << 20) >= (1 << 20));  // a whole test's lines
    saved_ = ::dup(STDERR_FILENO);
    REQUIRE(saved_ >= 0);
    REQUIRE(::dup2(fds_[1], STDERR_FILENO) == STDERR_FILENO);
  }
  ~CapturedStderr() {
    ::dup2(saved_, STDERR_FILENO);
    ::close(saved_);
    ::close(fds_[0]);
    ::close(fds_[1]);
  }
  std::string read() {
    std::string out;
    char buf[65536];
    for (;;) {
      ssize_t n = ::read(fds_[0], buf, sizeof(buf));
      if (n <= 0) return out;
      out.append(buf, static_cast<size_t>(n));
    }
  }

 private:
  int fds_[2] = {-1, -1};
  int saved_ = -1;
};

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("a thread that does not batch writes each line at once") {
  CapturedStderr err;
  auto logger = sluice::log::get("logtest-plain");
  logger->info("first line");
  CHECK(count(err.read(), "first line\n") == 1);
  logger->warn("second line");
  std::string out = err.read();
  CHECK(count(out, "second line\n") == 1);
  CHECK(out.find("[logtest-plain]") != std::string::npos);
}

TEST_CASE(
    "a batching thread's lines wait for its flush or a warning, then arrive whole and in order") {
  CapturedStderr err;
  auto logger = sluice::log::get("logtest-batch");
  std::string seen_before_flush, seen_after_flush, seen_warning;
  std::thread t([&] {
    sluice::log::batchThisThread();
    for (int i = 0; i < 100; ++i) logger->info("connection {} closed", i);
    seen_before_flush = err.read();
    sluice::log::flushThread();
    seen_after_flush = err.read();
    logger->info("after the flush");
    logger->warn("a warning");  // at once, with the line before it
    seen_warning = err.read();
    logger->info("last words");
  });
  t.join();
  CHECK(seen_before_flush.empty());
  CHECK(count(seen_after_flush, "\n") == 100);
  size_t last = 0;
  for (int i = 0; i < 100; ++i) {
    size_t at = seen_after_flush.find("connection " + std::to_string(i) + " closed\n");
    REQUIRE(at != std::string::npos);
    CHECK(at >= last);
    last = at;
  }
  CHECK(count(seen_warning, "after the flush\n") == 1);
  CHECK(count(seen_warning, "a warning\n") == 1);
  CHECK(seen_warning.find("after the flush") < seen_warning.find("a warning"));
  // Logged after the last write: written when the thread ended.
  CHECK(count(err.read(), "last words\n") == 1);
}

TEST_CASE("a batching thread writes once 64 KiB have gathered, without a flush") {
  CapturedStderr err;
  auto logger = sluice::log::get("logtest-bound");
  std::string seen;
  std::thread t([&] {
    sluice::log::batchThisThread();
    std::string filler(1000, 'x');
    for (int i = 0; i < 100; ++i) logger->info("{} {}", i, filler);
    seen = err.read();  // 100 KB logged: the first 64 KiB of it went out
    sluice::log::flushThread();
  });
  t.join();
  CHECK(seen.size() >= 64 * 1024);
  CHECK(seen.size() < 100 * 1000);
  CHECK(seen.back() == '\n');  // whole lines only
  CHECK(count(seen + err.read(), "\n") == 100);
}
