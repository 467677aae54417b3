// What one side (client or server) of a worker's HBONE owns: its tunnels
// (each in a side-specific Link) and its streams. Something finished is
// freed from a `soon` completion after the one that finished it, never
// from inside a callback that may still be using it.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "ztunnel/hbone/stream.h"
#include "ztunnel/uring/ops.h"

namespace sluice::ztunnel::hbone {

template <class Link>  // has a `Tunnel tunnel`
class Owned {
 public:
  explicit Owned(uring::Ring& ring) : ring_(ring) {}

  Link* add(std::unique_ptr<Link> l) {
    Link* raw = l.get();
    links_.emplace(raw, std::move(l));
    return raw;
  }
  Stream* add(std::unique_ptr<Stream> s) {
    Stream* raw = s.get();
    streams_.emplace(raw, std::move(s));
    return raw;
  }
  // A tunnel finished: free it (and whatever else is) on the next run.
  void scheduleReap() {
    if (!reap_op_.busy()) reap_op_.soon(ring_);
  }
  // A stream finished: freed on the next run, found by key (a worker can
  // hold thousands of streams; the reap must not walk them all per close).
  void scheduleReap(Stream& s) {
    finished_.push_back(&s);
    scheduleReap();
  }
  // Visits each one; f may close (not free) what it visits.
  template <class F>
  void eachLink(F f) {
    for (Link* l : snapshot(links_)) f(*l);
  }
  template <class F>
  void eachStream(F f) {
    for (Stream* s : snapshot(streams_)) f(*s);
  }
  // The tunnels of the pod with this uid close ("pod_removed").
  void closePod(const std::string& uid) {
    eachLink([&](Link& l) {
      if (l.tunnel.pod()->spec.uid == uid) l.tunnel.close("pod_removed");
    });
  }
  // Every tunnel and stream closes: the proxy shuts down.
  void closeAll() {
    eachLink([](Link& l) { l.tunnel.close("proxy_shutdown"); });
    eachStream([](Stream& s) { s.close(true, CloseReason::kProxyShutdown); });
  }
  // Every tunnel sends GOAWAY (an upgrade's successor took over).
  void goAway() {
    eachLink([](Link& l) { l.tunnel.goAway(); });
  }
  bool idle() const { return links_.empty() && streams_.empty() && !reap_op_.busy(); }
  size_t receiveBufferBytes() const {  // what the tunnels' receive buffers hold
    size_t n = 0;
    for (const auto& [raw, link] : links_) n += link->tunnel.receiveBufferBytes();
    return n;
  }
  // The tunnel with this id (Tunnel::id()), or null: a walk of this side's
  // tunnels, for the rare stream that delivers after nghttp2 forgot it.
  Tunnel* tunnel(uint64_t id) {
    for (auto& [raw, link] : links_)
      if (link->tunnel.id() == id) return &link->tunnel;
    return nullptr;
  }

 private:
  template <class Map>
  static auto snapshot(const Map& m) {
    std::vector<typename Map::key_type> all;
    all.reserve(m.size());
    for (const auto& [p, owned] : m) all.push_back(p);
    return all;
  }
  void reap(const io_uring_cqe&) {
    for (Stream* s : finished_) streams_.erase(s);
    finished_.clear();
    // Tunnels are few (pooled): walked.
    std::erase_if(links_, [](auto& p) {
      const Tunnel& t = p.second->tunnel;
      return t.closed() && !t.busy();
    });
  }
  uring::Ring& ring_;
  std::unordered_map<Link*, std::unique_ptr<Link>> links_;
  std::unordered_map<Stream*, std::unique_ptr<Stream>> streams_;
  std::vector<Stream*> finished_;  // to free at the next reap
  uring::Op<&Owned::reap> reap_op_{this};
};

}  // namespace sluice::ztunnel::hbone
