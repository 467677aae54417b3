#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "ztunnel/proxy/cpu_wait.h"

#include <doctest/doctest.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <thread>

using sluice::ztunnel::proxy::CpuWait;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

TEST_SUITE("cpu wait") {
  TEST_CASE("CpuWait: a thread sharing its CPU with a busy one waits - a sleeping one hardly") {
    cpu_set_t allowed, one;
    REQUIRE(::sched_getaffinity(0, sizeof(allowed), &allowed) == 0);
    int cpu = 0;
    while (cpu < CPU_SETSIZE && !CPU_ISSET(cpu, &allowed)) ++cpu;
    REQUIRE(cpu < CPU_SETSIZE);
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);  // the first CPU this process may use
    double idle = -2, contended = -2;
    bool pinned = false, available = false;
    std::atomic<bool> stop{false};
    // (No REQUIRE on these threads: a failure there would not unwind the test.)
    std::jthread watched([&] {
      pinned = ::sched_setaffinity(0, sizeof(one), &one) == 0;
      CpuWait w;
      available = w.available();
      if (!pinned || !available) return;
      std::this_thread::sleep_for(100ms);
      idle = w.sample();
      std::jthread hog([&] {
        if (::sched_setaffinity(0, sizeof(one), &one) != 0) return;
        while (!stop.load(std::memory_order_relaxed)) {
        }
      });
      const auto until = Clock::now() + 300ms;
      while (Clock::now() < until) {
      }
      contended = w.sample();
      stop = true;
    });
    watched.join();
    REQUIRE(pinned);
    REQUIRE(available);
    MESSAGE("waited: sleeping ", idle, ", sharing one CPU with a busy thread ", contended);
    CHECK(idle >= 0);
    CHECK(idle < 0.5);        // asleep: it waits only when woken
    CHECK(contended > 0.25);  // two runnable threads on one CPU: about half each
  }
}
