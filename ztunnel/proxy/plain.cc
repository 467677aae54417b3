#include "ztunnel/proxy/plain.h"

#include <cstring>
#include <optional>

#include "sluice/common/addr.h"
#include "sluice/common/log.h"
#include "ztunnel/l7/inspect_policy.h"
#include "ztunnel/l7/inspector.h"

namespace sluice::ztunnel::proxy {

class PlainConnection final : public relay::PipeOwner, public Abortable, public l7::RequestSink {
 public:
  PlainConnection(PlainUpstream& set, std::shared_ptr<LiveRecord> live,
                  std::shared_ptr<PodState> pod, std::shared_ptr<PodState> target, UniqueFd client,
                  UniqueFd upstream, std::unique_ptr<Attempt> attempt, SourceShare share = {})
      : set_(set),
        ctx_(set.ctx_),
        live_(std::move(live)),
        pod_(std::move(pod)),
        target_(std::move(target)),
        client_(std::move(client)),
        upstream_(std::move(upstream)),
        attempt_(std::move(attempt)),
        share_(std::move(share)),
        up_(ctx_.ring, *this, ctx_.config.buffer_bytes, ctx_.config.buffer_max_bytes),
        down_(ctx_.ring, *this, ctx_.config.buffer_bytes, ctx_.config.buffer_max_bytes) {}

  void start(const SockAddr& dst, const uring::SocketSetup& setup) {
    live_->owner = this;
    if (l7::shouldInspect(ctx_.config, ctx_.directory, dst)) {
      l7_ = std::make_unique<l7::Inspector>(*this, ctx_.config.http_detect_timeout);
      l7_->attach(up_, down_);
    }
    // A same-node handoff: its two app sockets are joined once it is
    // connected and HTTP inspection (if on) has found it is not HTTP
    // (EngineHooks::splice).
    if (ctx_.splice && target_) splice_ = Splice::kPending;
    connect_.start(ctx_.ring, upstream_.get(), dst, ctx_.config.connect_timeout, setup);
  }
  // Continues a connection frozen by the predecessor agent.
  void resume(ConnectionFd& c) {
    live_->owner = this;
    up_.resume(client_.get(), upstream_.get(), std::move(c.to_upstream), c.client_eof,
               c.upstream_shut);
    down_.resume(upstream_.get(), client_.get(), std::move(c.to_client), c.upstream_eof,
                 c.client_shut);
    if (up_.sinkDone() && down_.sinkDone()) close(false, CloseReason::kEof);
  }
  // Relaying (connected, not closing): it can be frozen.
  bool freezable() const { return !closing_ && up_.started() && down_.started(); }
  void freeze() {
    endSplice();  // the successor relays what the apps send from now on
    closing_ = frozen_ = true;
    up_.freeze();
    down_.freeze();
    if (busy()) {
      ctx_.ring.cancelFd(client_.get());
      ctx_.ring.cancelFd(upstream_.get());
    }
    set_.closing_.push_back(this);
  }
  bool frozen() const { return frozen_; }
  // The ring is done with a frozen connection: its state, sockets and
  // record; its own record closes as handed over. Null: the freeze met an
  // error, and the connection is reset instead.
  std::optional<ConnectionFd> thaw() {
    if (int err = up_.frozenError() ? up_.frozenError() : down_.frozenError(); err) {
      reset_ = true;
      setLinger0(client_.get());
      setLinger0(upstream_.get());
      reason_ = CloseReason::kReset;
      detail_ = fmt::format("while freezing for an upgrade: {}", std::strerror(-err));
      return std::nullopt;
    }
    ConnectionFd c;
    c.record = ctx_.records.snapshotOf(*live_);
    c.pod_uid = pod_->spec.uid;
    if (target_) c.target_uid = target_->spec.uid;
    c.dest_pod_uid = live_->dest_pod_uid;
    c.dest_pod = live_->dest_pod;
    c.client = std::move(client_);
    c.upstream = std::move(upstream_);
    c.to_upstream = up_.pending();
    c.to_client = down_.pending();
    c.client_eof = up_.sourceEnded();
    c.upstream_eof = down_.sourceEnded();
    c.upstream_shut = up_.sinkDone();
    c.client_shut = down_.sinkDone();
    reason_ = CloseReason::kHandedOver;
    return c;
  }
  bool closing() const { return closing_; }
  void tick() {
    if (closing_) return;
    up_.tick();
    down_.tick();
  }
  bool busy() const { return connect_.busy() || up_.busy() || down_.busy(); }
  bool involves(const std::string& uid) const {
    return pod_->spec.uid == uid || (target_ && target_->spec.uid == uid);
  }
  // The ring is done with it: count it closed, write its record and close
  // its sockets with the ring's next submission (none if thaw() took them).
  void finish() {
    ctx_.counters().sub(Counter::kActive);
    ctx_.counters().add(Counter::kClosed);
    pod_->connections--;
    share_ = {};
    ctx_.records.close(*live_, reason_, std::move(detail_), retried_);
    ctx_.ring.close(std::move(client_), !reset_);
    ctx_.ring.close(std::move(upstream_), !reset_);
  }

  void abort(CloseReason reason, std::string detail = {}) override {
    close(true, reason, std::move(detail));
  }

  void close(bool reset, CloseReason reason, std::string detail = {}) {
    if (closing_) return;
    endSplice();  // before a reset: no app send goes straight to the other app after it
    closing_ = true;
    reason_ = reason;
    detail_ = std::move(detail);
    up_.stop();
    down_.stop();
    if (l7_) {  // requests without a response are reported now, with how it ends
      ctx_.records.ending(*live_, reason_, detail_);
      l7_->finish();
    }
    if (reset) {
      // RST rather than FIN: the peer learns of the reset. (Not shutdown():
      // that would send a FIN ahead of the RST.)
      reset_ = true;
      setLinger0(client_.get());
      setLinger0(upstream_.get());
    }
    // Whatever is still in flight completes with -ECANCELED; reap() frees
    // the connection (closing both fds) once nothing is.
    if (busy()) {
      ctx_.ring.cancelFd(client_.get());
      ctx_.ring.cancelFd(upstream_.get());
    }
    set_.closing_.push_back(this);
  }

 private:
  void onConnected(int res) {
    if (closing_) return;
    if (res < 0) {
      ctx_.counters().add(Counter::kConnectFailures);
      CloseReason why =
          res == -ETIMEDOUT ? CloseReason::kConnectTimeout : CloseReason::kConnectError;
      std::string detail = connect_.describe(res);
      // A Service connection moves to another endpoint; the app never
      // notices (nothing was read from it yet).
      if (attempt_ && attempt_->isService()) {
        attempt_->client = std::move(client_);  // the retry takes the app's socket along
        retried_ = Attempt::retry(attempt_, res == -ETIMEDOUT ? "connect timeout" : detail);
        if (!retried_) client_ = std::move(attempt_->client);
      }
      if (!retried_) inspectUndelivered();
      close(true, why, std::move(detail));
      return;
    }
    if (attempt_) attempt_->succeeded();
    ctx_.records.confirm(*live_);
    up_.start(client_.get(), upstream_.get());
    down_.start(upstream_.get(), client_.get());
    if (splice_ == Splice::kPending) armSplice();
  }

  // The connect failed: the request the client has sent already (it wrote
  // once its connect to the proxy returned) is counted, answered by
  // nothing and flagged as the connection ends, as on the HBONE path. Only
  // looked at: the reset follows.
  void inspectUndelivered() {
    if (!l7_ || !client_.valid()) return;
    std::string sent = peekPending(client_.get());
    if (!sent.empty()) l7_->clientBytes(sent);
  }

  // --- same-node splice (SpliceControl) ---
  void armSplice() {
    if (l7_ && l7_->detecting()) return;  // again after the next write
    if (l7_ && l7_->observing()) {        // HTTP: the proxy sees every request
      splice_ = Splice::kOff;
      return;
    }
    auto armed = ctx_.splice->arm(client_.get(), upstream_.get(), up_sent_, down_sent_);
    switch (armed.state) {
      case SpliceControl::Arm::kArmed:
        splice_ = Splice::kArmed;
        spliced_ = std::move(armed.pair);
        ctx_.counters().add(Counter::kSpliced);
        return;
      case SpliceControl::Arm::kNotYet:
        if (++arm_attempts_ < kArmAttempts) return;  // again after the next write
        [[fallthrough]];
      case SpliceControl::Arm::kNever:
        splice_ = Splice::kOff;
        ctx_.counters().add(Counter::kSpliceFallbacks);
        return;
    }
  }
  // The bytes that went straight from app to app count as relayed: those
  // not counted yet (countSpliced) at the end.
  void endSplice() {
    if (splice_ != Splice::kArmed) return;
    splice_ = Splice::kOff;
    addSpliced(spliced_->end());
    spliced_.reset();
  }

 public:
  // While spliced: what the pair carried so far into the record (a query
  // or scrape, Engine::countSpliced).
  void countSpliced() {
    if (splice_ == Splice::kArmed) addSpliced(spliced_->counted());
  }

 private:
  void addSpliced(const SplicedPair::Spliced& total) {
    uint64_t up = total.up > spliced_up_ ? total.up - spliced_up_ : 0;
    uint64_t down = total.down > spliced_down_ ? total.down - spliced_down_ : 0;
    spliced_up_ += up;
    spliced_down_ += down;
    if (up || down) ctx_.records.moved(*live_, up, down);
  }
  void pipeSent(relay::Pipe& p, size_t n) override {
    bool up = &p == &up_;
    uint64_t total = up ? (up_sent_ += n) : (down_sent_ += n);
    if (splice_ == Splice::kArmed)
      spliced_->forwarded(up, total);
    else if (splice_ == Splice::kPending && !closing_)
      armSplice();
  }

  // l7::RequestSink
  void l7Request(const RequestRecord& r) override { ctx_.records.request(*live_, r); }

  // relay::PipeOwner
  void pipeMoved(relay::Pipe& p, size_t n) override {
    if (&p == &up_)
      ctx_.records.moved(*live_, n, 0);
    else
      ctx_.records.moved(*live_, 0, n);
  }
  void pipeEnded(relay::Pipe&) override {
    if (up_.sinkDone() && down_.sinkDone()) close(false, CloseReason::kEof);
  }
  // The last EOF: the other pipe read its source (this sink's socket) to
  // the end and has shut its own sink down; close() follows.
  bool pipeSinkClosesNext(const relay::Pipe& p) const override {
    const relay::Pipe& other = &p == &up_ ? down_ : up_;
    return other.sourceEnded() && other.sinkDone() && !closing_;
  }
  void pipeFailed(relay::Pipe&, int err, bool sending) override {
    if (err == -ECONNRESET || (sending && err == -EPIPE))
      close(true, CloseReason::kReset);
    else
      close(true, sending ? CloseReason::kSendError : CloseReason::kRecvError, std::strerror(-err));
  }

  PlainUpstream& set_;
  WorkerContext& ctx_;
  std::shared_ptr<LiveRecord> live_;
  std::shared_ptr<PodState> pod_, target_;
  UniqueFd client_, upstream_;
  std::unique_ptr<Attempt> attempt_;   // released (balancer slot) when freed
  SourceShare share_;                  // inbound: its source's place, given back at finish()
  relay::Pipe up_, down_;              // client -> upstream, upstream -> client
  std::unique_ptr<l7::Inspector> l7_;  // HTTP inspection (taps both pipes); null: bytes only
  uring::Connect<&PlainConnection::onConnected> connect_{this};
  enum class Splice : uint8_t { kOff, kPending, kArmed };
  static constexpr unsigned kArmAttempts = 16;
  Splice splice_ = Splice::kOff;
  std::unique_ptr<SplicedPair> spliced_;  // with kArmed
  unsigned arm_attempts_ = 0;
  uint64_t up_sent_ = 0, down_sent_ = 0;        // written to the upstream / to the client
  uint64_t spliced_up_ = 0, spliced_down_ = 0;  // spliced bytes in the record so far
  bool closing_ = false;
  bool reset_ = false;  // closes with RST (linger 0 kept), else orderly
  bool frozen_ = false;
  bool retried_ = false;
  CloseReason reason_ = CloseReason::kNone;
  std::string detail_;
};

PlainUpstream::PlainUpstream(WorkerContext& ctx) : ctx_(ctx) {}
PlainUpstream::~PlainUpstream() = default;

void PlainUpstream::open(std::shared_ptr<LiveRecord> live, std::shared_ptr<PodState> pod,
                         std::shared_ptr<PodState> target, UniqueFd client, Upstream upstream,
                         const SockAddr& dst, std::unique_ptr<Attempt> attempt, SourceShare share) {
  live->worker = ctx_.worker;
  live->may_retry = attempt && attempt->isService();
  ctx_.records.open(live);
  pod->connections++;
  ctx_.counters().add(Counter::kActive);
  auto c = std::make_unique<PlainConnection>(
      *this, std::move(live), std::move(pod), std::move(target), std::move(client),
      std::move(upstream.fd), std::move(attempt), std::move(share));
  PlainConnection* raw = c.get();
  conns_.emplace(raw, std::move(c));
  raw->start(dst, upstream.setup);
}

void PlainUpstream::adopt(ConnectionFd c, std::shared_ptr<PodState> pod,
                          std::shared_ptr<PodState> target) {
  auto live = std::make_shared<LiveRecord>();
  live->rec = c.record;
  live->rec.adopted = true;
  live->rec.state = ConnState::kOpen;
  live->rec.reason = CloseReason::kNone;
  live->rec.reason_detail.clear();
  live->rec.retried = false;
  live->dest_pod_uid = c.dest_pod_uid;
  live->dest_pod = c.dest_pod;
  if (auto a = parseEndpoint(c.record.source)) live->source = *a;
  if (auto a = parseEndpoint(c.record.destination)) live->destination = *a;
  live->sent = c.record.bytes_sent;
  live->received = c.record.bytes_received;
  live->worker = ctx_.worker;
  ctx_.records.open(live);
  pod->connections++;
  ctx_.counters().add(Counter::kActive);
  auto conn =
      std::make_unique<PlainConnection>(*this, std::move(live), std::move(pod), std::move(target),
                                        std::move(c.client), std::move(c.upstream), nullptr);
  PlainConnection* raw = conn.get();
  conns_.emplace(raw, std::move(conn));
  raw->resume(c);
}

size_t PlainUpstream::freeze() {
  size_t n = 0;
  for (auto& [p, c] : conns_)
    if (c->freezable()) {
      c->freeze();
      ++n;
    }
  freezing_ += n;
  return n;
}

void PlainUpstream::removePod(const std::string& uid) {
  for (auto& [p, c] : conns_)
    if (c->involves(uid)) c->close(true, CloseReason::kPodRemoved);
}

void PlainUpstream::countSpliced() {
  for (auto& [p, c] : conns_) c->countSpliced();
}

void PlainUpstream::tick() {
  for (auto& [p, c] : conns_) c->tick();
}

void PlainUpstream::shutdown() {
  for (auto& [p, c] : conns_) c->close(true, CloseReason::kProxyShutdown);
}

void PlainUpstream::reap() {
  if (closing_.empty()) return;
  std::erase_if(closing_, [this](PlainConnection* c) {
    if (c->busy()) return false;
    if (c->frozen()) {
      --freezing_;
      if (auto out = c->thaw()) frozen_.push_back(std::move(*out));
    }
    c->finish();
    conns_.erase(c);  // closes both fds; the attempt releases its endpoint
    return true;
  });
}

}  // namespace sluice::ztunnel::proxy
