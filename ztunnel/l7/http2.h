// HTTP/2 (prior knowledge, h2c) and gRPC as a passive observer: two nghttp2
// sessions that only read. A server-side session decodes the client's bytes
// (requests), a client-side session the server's (responses); whatever they
// want to send (ACKs, WINDOW_UPDATEs, our own SETTINGS) is discarded. To
// follow the real peers, each session mirrors what the other side announced:
// the server's SETTINGS become the request session's local settings (applied
// when the client's ACK arrives, as in the real client), and each request
// stream is opened on the response session under the same id. Any error ends
// the observation; the bytes were relayed regardless.
#pragma once

#include <nghttp2/nghttp2.h>

#include <memory>
#include <unordered_map>

#include "ztunnel/l7/exchange.h"

namespace sluice::ztunnel::l7 {

class Http2Observer final : public ProtocolObserver {
 public:
  // Streams open at once beyond this: the observer gives up.
  static constexpr size_t kMaxStreams = 1024;
  // The largest HPACK dynamic table either peer may make the observer keep
  // (SETTINGS_HEADER_TABLE_SIZE as mirrored; the default is 4 KiB).
  static constexpr uint32_t kMaxHeaderTable = 64 * 1024;

  explicit Http2Observer(RequestSink& sink);
  ~Http2Observer() override;
  bool client(std::string_view bytes) override;
  bool server(std::string_view bytes) override;
  void finish(bool answered_only = false) override;

 private:
  struct SessionDeleter {
    void operator()(nghttp2_session* s) const { nghttp2_session_del(s); }
  };
  using Session = std::unique_ptr<nghttp2_session, SessionDeleter>;
  struct Callbacks;
  friend struct Callbacks;

  bool feed(nghttp2_session* s, std::string_view bytes);
  bool drain(nghttp2_session* s);  // serialise what it queued, and drop it
  Exchange* find(int32_t id);
  // The exchange is over: reported, and its stream closed in the session
  // that still holds it open (`other`).
  void done(int32_t id, nghttp2_session* other);
  bool mirrorSettings(nghttp2_session* to, const nghttp2_settings& s);

  RequestSink& sink_;
  Session req_, resp_;
  std::unordered_map<int32_t, Exchange> streams_;
  bool failed_ = false;
};

}  // namespace sluice::ztunnel::l7
