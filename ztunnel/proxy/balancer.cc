#include "ztunnel/proxy/balancer.h"

#include <algorithm>
#include <bit>
#include <cstdint>

namespace sluice::ztunnel::proxy {

// Whole halvings go to the exponent (a power of two built from its bits:
// std::ldexp would bind to libm's copy); the
// fraction's 2^-f = e^(-f ln 2), f in [0, 1), from a Taylor series whose
// 15th term is below 1e-12 of the first.
double halvings(double x) {
  if (!(x > 0)) return 1.0;
  if (x >= 1022) return 0.0;  // below the smallest normal double
  double whole = static_cast<double>(static_cast<long>(x));
  double t = -(x - whole) * 0.69314718055994530942;
  double term = 1.0, sum = 1.0;
  for (int k = 1; k < 15; ++k) {
    term *= t / k;
    sum += term;
  }
  auto power = std::bit_cast<double>(static_cast<uint64_t>(1023 - static_cast<int>(whole)) << 52);
  return sum * power;
}

double Balancer::latency(const State& st, Clock::time_point now) const {
  if (st.ewma_us <= 0 || now <= st.sampled_at) return st.ewma_us;
  std::chrono::duration<double> since = now - st.sampled_at;
  std::chrono::duration<double> half_life = config_.half_life;
  return st.ewma_us * halvings(since / half_life);
}

double Balancer::score(const SockAddr& ep, Clock::time_point now) const {
  double floor = static_cast<double>(config_.latency_floor.count());
  auto it = states_.find(ep);
  if (it == states_.end()) return floor;
  return std::max(latency(it->second, now), floor) * (it->second.open + 1);
}

std::optional<SockAddr> Balancer::pick(const ServiceTarget& svc, const std::vector<SockAddr>& tried,
                                       Clock::time_point now) {
  std::vector<const SockAddr*> healthy, ejected_ones;
  for (const auto& ep : svc.endpoints) {
    if (std::any_of(tried.begin(), tried.end(), [&](const SockAddr& t) { return t == ep; }))
      continue;
    (ejected(ep, now) ? ejected_ones : healthy).push_back(&ep);
  }
  auto& pool = healthy.empty() ? ejected_ones : healthy;
  if (pool.empty()) return std::nullopt;
  const SockAddr* chosen = pool[0];
  if (pool.size() > 1) {
    std::uniform_int_distribution<size_t> d(0, pool.size() - 1);
    size_t i = d(rng_), j = d(rng_);
    while (j == i) j = d(rng_);
    double si = score(*pool[i], now), sj = score(*pool[j], now);
    if (si == sj)
      chosen = (rng_() & 1) ? pool[i] : pool[j];
    else
      chosen = si < sj ? pool[i] : pool[j];
  }
  State& st = states_[*chosen];
  st.open++;
  st.last_used = now;
  return *chosen;
}

void Balancer::closed(const SockAddr& ep) {
  auto it = states_.find(ep);
  if (it != states_.end() && it->second.open > 0) it->second.open--;
}

bool Balancer::result(const SockAddr& ep, bool ok, std::chrono::microseconds latency,
                      Clock::time_point now) {
  State& st = states_[ep];
  st.last_used = now;
  if (ok) {
    double sample = static_cast<double>(latency.count());
    // Before its first sample an endpoint counts as at the floor, so one
    // sample weighs as much as later ones.
    double prior = st.ewma_us < 0 ? static_cast<double>(config_.latency_floor.count())
                                  : this->latency(st, now);
    st.ewma_us = config_.alpha * sample + (1 - config_.alpha) * prior;
    st.sampled_at = now;
    st.failures = 0;
    st.ejections = 0;
    return false;
  }
  // Tried while ejected (every endpoint is): the ejection stands as it is,
  // not re-counted or extended by each failure of the connections that
  // still come to it.
  if (st.ejected_until > now) return false;
  if (++st.failures < config_.eject_after) return false;
  st.failures = 0;
  auto base = config_.eject_for * (1u << std::min(st.ejections, 4u));
  st.ejected_until = now + std::min(base, config_.max_eject_for);
  st.ejections++;
  return true;
}

bool Balancer::ejected(const SockAddr& ep, Clock::time_point now) const {
  auto it = states_.find(ep);
  return it != states_.end() && it->second.ejected_until > now;
}

unsigned Balancer::open(const SockAddr& ep) const {
  auto it = states_.find(ep);
  return it == states_.end() ? 0 : it->second.open;
}

void Balancer::prune(Clock::time_point now) {
  std::erase_if(states_, [&](const auto& kv) {
    const State& st = kv.second;
    return st.open == 0 && st.ejected_until <= now && now - st.last_used > std::chrono::minutes(1);
  });
}

}  // namespace sluice::ztunnel::proxy
