#include "agent/telemetry/tap_stream.h"

#include <charconv>

#include "sluice/common/json_text.h"

namespace sluice::agent::telemetry {

namespace {

constexpr size_t kLinesPerPoll = 1000;
constexpr auto kHeartbeat = std::chrono::seconds(1);

class TapStream final : public admin::Stream {
 public:
  TapStream(std::unique_ptr<TapSubscription> sub, uint64_t max,
            std::function<TapClock::time_point()> now)
      : sub_(std::move(sub)), max_(max), now_(std::move(now)), last_write_(now_()) {}

  admin::StreamStep poll() override {
    admin::StreamStep step;
    size_t want = kLinesPerPoll;
    if (max_ && max_ - sent_ < want) want = static_cast<size_t>(max_ - sent_);
    events_.clear();
    sub_->drain(events_, want);
    for (const auto& e : events_) {
      step.data += jsonText(toJson(e));
      step.data.push_back('\n');
    }
    sent_ += events_.size();
    if (uint64_t dropped = sub_->dropped(); dropped != reported_drops_) {
      reported_drops_ = dropped;
      step.data += jsonText(nlohmann::json{{"dropped", dropped}});
      step.data.push_back('\n');
    }
    step.done = max_ && sent_ >= max_;
    auto now = now_();
    if (!step.data.empty()) {
      last_write_ = now;
    } else if (now - last_write_ >= kHeartbeat) {
      step.data.push_back('\n');
      last_write_ = now;
    }
    return step;
  }

 private:
  std::unique_ptr<TapSubscription> sub_;
  uint64_t max_;  // 0: unbounded
  std::function<TapClock::time_point()> now_;
  TapClock::time_point last_write_;
  uint64_t sent_ = 0;
  uint64_t reported_drops_ = 0;
  std::vector<TapEvent> events_;
};

}  // namespace

admin::StreamOpener tapStreamOpener(TapHub& hub, std::function<TapClock::time_point()> now) {
  return [&hub, now](const admin::Query& query) -> Result<std::unique_ptr<admin::Stream>> {
    auto filter = TapFilter::fromQuery(query);
    if (!filter) return fail(filter.error().message);
    uint64_t max = 0;
    if (auto it = query.find("max"); it != query.end()) {
      const auto& v = it->second;
      auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), max);
      if (ec != std::errc() || end != v.data() + v.size())
        return fail("max must be a number of requests, got '" + v + "'");
    }
    auto sub = hub.subscribe(std::move(*filter));
    if (!sub) return tl::unexpected(sub.error());
    return std::unique_ptr<admin::Stream>(new TapStream(std::move(*sub), max, now));
  };
}

}  // namespace sluice::agent::telemetry
