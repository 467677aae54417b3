// HTTP inspection of one app connection: detection on the client's first
// bytes, then the protocol's observer on both directions. It taps the
// connection's two relay pipes and only looks: bytes are never held, changed
// or re-encoded, so a server-first protocol (the client sends nothing) is
// relayed at once like any other. Detection gives up (opaque, the tap
// detaches) on anything that is not HTTP/1.x or HTTP/2 prior knowledge, on
// server bytes before the client's request (unless they are an HTTP/2
// server preface, kept until the client's preface decides), after
// kMaxDetectBytes or after the detection deadline. Worker thread only.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "ztunnel/l7/detect.h"
#include "ztunnel/l7/exchange.h"
#include "ztunnel/relay/pipe.h"

namespace sluice::ztunnel::l7 {

class Inspector final : public relay::Tap {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr size_t kMaxEarlyServerBytes = 256;

  Inspector(RequestSink& sink, std::chrono::milliseconds detect_timeout);
  ~Inspector();
  Inspector(const Inspector&) = delete;
  Inspector& operator=(const Inspector&) = delete;

  // Taps both pipes (before they start): `client` carries the client's bytes.
  void attach(relay::Pipe& client, relay::Pipe& server);
  // The connection ended: requests still waiting for their response are
  // reported (status 0 unless its headers came); nothing is seen after.
  void finish();

  // The protocol so far: kTcp while detecting and when opaque.
  AppProtocol protocol() const { return protocol_; }
  bool detecting() const { return state_ == State::kDetecting; }
  bool observing() const { return state_ == State::kObserving; }

  // What the taps call, also for tests. False: no more interest. The
  // server's bytes no longer followed (not HTTP, or past a limit of ours):
  // the requests whose response headers came are reported with them, the
  // others dropped. The server's end mid-response: all are reported as
  // they stand, as by finish(). The client's bytes no longer followed:
  // observation ends, and what waits is not reported.
  bool clientBytes(std::string_view bytes);
  bool serverBytes(std::string_view bytes);
  void serverEnd();

  // relay::Tap
  bool tapped(const relay::Pipe& p, const char* data, size_t n) override;
  void tapEnded(const relay::Pipe& p) override;

 private:
  enum class State : unsigned char { kDetecting, kObserving, kDone };
  void stop();
  bool start(Detected d, std::string_view last);

  RequestSink& sink_;
  State state_ = State::kDetecting;
  AppProtocol protocol_ = AppProtocol::kTcp;
  Clock::time_point deadline_;
  std::string head_;          // client bytes while detection needs more (bounded)
  std::string early_server_;  // an HTTP/2 server preface that came first (bounded)
  std::unique_ptr<ProtocolObserver> observer_;
  const relay::Pipe* client_pipe_ = nullptr;
};

}  // namespace sluice::ztunnel::l7
