// Per-worker load balancing state for Service connections: power of two
// choices over (open connections + 1) x EWMA of connect latency, with
// consecutive-failure ejection. One Balancer per worker thread, so nothing
// here takes a lock; each worker balances its own share of connections.
//
// Latencies below `latency_floor` count as equal: a same-node endpoint
// (tens of microseconds) must not starve remote ones (hundreds, and a few
// milliseconds now and then on a busy node) when all are healthy; a slow
// endpoint (tens of milliseconds) is avoided.
//
// An endpoint's latency average decays towards zero while no new sample
// comes (halving every `half_life`, as Linkerd's peak EWMA decays): one
// slow connect (a tunnel's first handshake, an agent restart) would
// otherwise keep an endpoint that loses every choice out of rotation for
// as long as the others are idle, since only a pick brings a new sample.
// For the same reason an endpoint's first sample is averaged with the floor.
#pragma once

#include <netinet/in.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <random>
#include <unordered_map>
#include <vector>

#include "sluice/ztunnel/engine.h"

namespace sluice::ztunnel::proxy {

// 2^-x for x >= 0 (1 for x <= 0 or NaN, 0 from 1022 on: below the smallest
// normal double), relative error below 1e-12: the
// decay of a latency average after x half-lives. Written without libm,
// whose std::exp2 was the agent's only use of it (mapping libm.so cost
// 0.3 MiB resident).
double halvings(double x);

class Balancer {
 public:
  using Clock = std::chrono::steady_clock;
  struct Config {
    unsigned eject_after = 3;
    std::chrono::milliseconds eject_for{5000};
    std::chrono::milliseconds max_eject_for{60000};
    std::chrono::microseconds latency_floor{5000};
    double alpha = 0.3;  // EWMA weight of the newest sample
    std::chrono::milliseconds half_life{5000};
  };

  Balancer(Config config, uint64_t seed) : config_(config), rng_(seed) {}

  // An endpoint of `svc` not in `tried`: healthy ones first; when every
  // remaining one is ejected, the ejected ones (trying beats refusing).
  // Counts the choice as an open connection until closed().
  std::optional<SockAddr> pick(const ServiceTarget& svc, const std::vector<SockAddr>& tried,
                               Clock::time_point now);
  void closed(const SockAddr& ep);
  // The outcome of a connect attempt. Returns true when this failure ejected
  // the endpoint; a failure while it is ejected changes nothing (it comes
  // back when its time is over and is ejected again, for longer, after
  // eject_after more failures).
  bool result(const SockAddr& ep, bool ok, std::chrono::microseconds latency,
              Clock::time_point now);
  // Forgets endpoints idle for a minute (removed from the view long ago).
  void prune(Clock::time_point now);

  // For tests and stats.
  bool ejected(const SockAddr& ep, Clock::time_point now) const;
  unsigned open(const SockAddr& ep) const;
  size_t tracked() const { return states_.size(); }

 private:
  struct State {
    double ewma_us = -1;  // <0: no sample yet
    unsigned open = 0;
    unsigned failures = 0;  // consecutive
    unsigned ejections = 0;
    Clock::time_point ejected_until{}, last_used{}, sampled_at{};
  };
  // The latency average as of `now`, decayed since its last sample.
  double latency(const State& st, Clock::time_point now) const;
  double score(const SockAddr& ep, Clock::time_point now) const;

  Config config_;
  std::mt19937_64 rng_;
  std::unordered_map<SockAddr, State> states_;  // by endpoint, either family
};

}  // namespace sluice::ztunnel::proxy
