// The passive HTTP/2 observer, fed frames that a real nghttp2 client and
// server produce (no sockets, no root).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <nghttp2/nghttp2.h>

#include <cstring>
#include <string>
#include <vector>

#include "ztunnel/l7/http2.h"
#include "ztunnel/l7/inspector.h"
#include "ztunnel/l7_observer.h"

using namespace sluice::ztunnel;
using namespace sluice::ztunnel::l7test;
using namespace std::chrono_literals;

namespace {

// A real nghttp2 session whose output is collected.
struct Peer {
  nghttp2_session* s = nullptr;
  std::string out;
  explicit Peer(bool server, const nghttp2_option* opt = nullptr) {
    nghttp2_session_callbacks* cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_send_callback(
        cb, [](nghttp2_session*, const uint8_t* d, size_t n, int, void* ud) -> ssize_t {
          static_cast<Peer*>(ud)->out.append(reinterpret_cast<const char*>(d), n);
          return static_cast<ssize_t>(n);
        });
    if (server)
      nghttp2_session_server_new2(&s, cb, this, opt);
    else
      nghttp2_session_client_new2(&s, cb, this, opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 100},
                                   {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20}};
    nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, iv, 2);
  }
  ~Peer() { nghttp2_session_del(s); }
  std::string take() {
    nghttp2_session_send(s);
    return std::move(out);
  }
  void recv(const std::string& b) {
    nghttp2_session_mem_recv(s, reinterpret_cast<const uint8_t*>(b.data()), b.size());
  }
};

nghttp2_nv nv(const char* n, const char* v) {
  return {(uint8_t*)n, (uint8_t*)v, strlen(n), strlen(v), NGHTTP2_NV_FLAG_NONE};
}

struct Body {
  std::string data;
  size_t off = 0;
};

nghttp2_data_provider provider(Body& b) {
  nghttp2_data_provider p;
  p.source.ptr = &b;
  p.read_callback = [](nghttp2_session*, int32_t, uint8_t* buf, size_t len, uint32_t* flags,
                       nghttp2_data_source* src, void*) -> ssize_t {
    auto* body = static_cast<Body*>(src->ptr);
    size_t n = std::min(len, body->data.size() - body->off);
    memcpy(buf, body->data.data() + body->off, n);
    body->off += n;
    if (body->off == body->data.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return static_cast<ssize_t>(n);
  };
  return p;
}

}  // namespace

TEST_SUITE("l7/http2") {
  TEST_CASE("h2c prior knowledge: several streams, a server preface first, tiny reads") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    Peer client(false), server(true);
    // The server may speak first: its SETTINGS are kept until the client's preface.
    std::string s0 = server.take();
    CHECK(feed(in, s0, false));
    CHECK(in.detecting());
    const char* codes[] = {"200", "503", "404"};
    std::vector<int32_t> ids;
    for (int i = 0; i < 3; ++i) {
      nghttp2_nv req[] = {nv(":method", "GET"), nv(":scheme", "http"), nv(":path", "/h2?x"),
                          nv(":authority", "svc.ns:80")};
      ids.push_back(nghttp2_submit_request(client.s, nullptr, req, 4, nullptr, nullptr));
    }
    client.recv(s0);
    std::string c = client.take();
    CHECK(feed(in, c, true, 7));
    CHECK(toString(in.protocol()) == std::string("http/2"));
    server.recv(c);
    for (int i = 0; i < 3; ++i) {
      Body body{std::string(10 * (i + 1), 'x')};
      auto p = provider(body);
      nghttp2_nv resp[] = {nv(":status", codes[i])};
      nghttp2_submit_response(server.s, ids[i], resp, 1, &p);
      std::string s = server.take();
      CHECK(feed(in, s, false, 5));
      client.recv(s);
    }
    CHECK(feed(in, client.take(), true));  // ACKs, WINDOW_UPDATEs
    REQUIRE(sink.seen.size() == 3);
    CHECK(sink.seen[0].method == "GET");
    CHECK(sink.seen[0].path == "/h2");
    CHECK(sink.seen[0].authority == "svc.ns:80");
    CHECK(sink.seen[0].protocol == "http/2");
    CHECK(sink.seen[1].status == 503);
    CHECK(sink.seen[2].status == 404);
    CHECK(sink.seen[2].response_bytes == 30);
  }

  TEST_CASE("gRPC: content-type, a request body and grpc-status in the trailers") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    Peer client(false), server(true);
    Body req_body{
        std::string("\0\0\0\0\x03"
                    "abc",
                    8)};
    auto rp = provider(req_body);
    nghttp2_nv req[] = {nv(":method", "POST"),
                        nv(":scheme", "http"),
                        nv(":path", "/pkg.Svc/Method"),
                        nv(":authority", "grpc:50051"),
                        nv("content-type", "application/grpc+proto"),
                        nv("te", "trailers")};
    int32_t id = nghttp2_submit_request(client.s, nullptr, req, 6, &rp, nullptr);
    std::string c = client.take();
    CHECK(feed(in, c, true));
    server.recv(c);
    std::string s = server.take();  // the server's SETTINGS + ACK
    CHECK(feed(in, s, false));
    client.recv(s);
    CHECK(feed(in, client.take(), true));
    nghttp2_nv head[] = {nv(":status", "200"), nv("content-type", "application/grpc")};
    nghttp2_submit_headers(server.s, NGHTTP2_FLAG_NONE, id, nullptr, head, 2, nullptr);
    nghttp2_nv trailers[] = {nv("grpc-status", "14"), nv("grpc-message", "unavailable")};
    nghttp2_submit_trailer(server.s, id, trailers, 2);
    CHECK(feed(in, server.take(), false));
    REQUIRE(sink.seen.size() == 1);
    CHECK(sink.seen[0].protocol == "grpc");
    CHECK(sink.seen[0].status == 200);
    CHECK(sink.seen[0].grpc_status == 14);
    CHECK(sink.seen[0].request_bytes == 8);
    CHECK(sink.seen[0].path == "/pkg.Svc/Method");
  }

  TEST_CASE("a stream the client resets is reported without a response") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    Peer client(false);
    nghttp2_nv req[] = {nv(":method", "GET"), nv(":scheme", "http"), nv(":path", "/"),
                        nv(":authority", "a")};
    int32_t id = nghttp2_submit_request(client.s, nullptr, req, 4, nullptr, nullptr);
    CHECK(feed(in, client.take(), true));
    nghttp2_submit_rst_stream(client.s, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
    CHECK(feed(in, client.take(), true));
    REQUIRE(sink.seen.size() == 1);
    CHECK(sink.seen[0].status == 0);
  }

  TEST_CASE(
      "a peer's HPACK table is bounded at 64 KiB: beyond, the observer stops, not the bytes") {
    // The server announces a header table and the client's encoder may use
    // up to 1 MiB of it: the observer's decoder would keep whatever the
    // client indexes. Mirrored, the table is at most 64 KiB: a client's
    // table size update above that is a compression error for the
    // observer, which gives up (the connection's bytes still pass).
    for (uint32_t table : {64u * 1024, 1u << 30}) {
      CAPTURE(table);
      Sink sink;
      l7::Inspector in(sink, 10s);
      nghttp2_option* opt = nullptr;
      nghttp2_option_new(&opt);
      nghttp2_option_set_max_deflate_dynamic_table_size(opt, 1 << 20);
      Peer client(false, opt), server(true);
      nghttp2_option_del(opt);
      nghttp2_settings_entry iv{NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, table};
      nghttp2_submit_settings(server.s, NGHTTP2_FLAG_NONE, &iv, 1);
      std::string c = client.take();  // preface + SETTINGS
      CHECK(feed(in, c, true));
      server.recv(c);
      std::string s = server.take();  // SETTINGS (with the table) + ACK
      CHECK(feed(in, s, false));
      client.recv(s);
      std::string ack = client.take();  // the client's ACK: the table may grow
      CHECK(feed(in, ack, true));
      server.recv(ack);
      nghttp2_nv req[] = {nv(":method", "GET"), nv(":scheme", "http"), nv(":path", "/"),
                          nv(":authority", "a"), nv("x-fill", "0123456789")};
      int32_t id = nghttp2_submit_request(client.s, nullptr, req, 5, nullptr, nullptr);
      c = client.take();
      if (table > l7::Http2Observer::kMaxHeaderTable) {
        CHECK_FALSE(feed(in, c, true));
        CHECK_FALSE(in.observing());
        continue;
      }
      CHECK(feed(in, c, true));
      server.recv(c);
      nghttp2_nv resp[] = {nv(":status", "204")};
      nghttp2_submit_response(server.s, id, resp, 1, nullptr);
      CHECK(feed(in, server.take(), false));
      REQUIRE(sink.seen.size() == 1);
      CHECK(sink.seen[0].status == 204);
    }
  }

  TEST_CASE("statuses no peer may send: HTTP outside 100-599 is none, gRPC beyond 16 is UNKNOWN") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    Peer client(false), server(true);
    nghttp2_nv req[] = {nv(":method", "POST"), nv(":scheme", "http"), nv(":path", "/p.S/M"),
                        nv(":authority", "g"), nv("content-type", "application/grpc")};
    std::vector<int32_t> ids;
    for (int i = 0; i < 2; ++i)
      ids.push_back(nghttp2_submit_request(client.s, nullptr, req, 5, nullptr, nullptr));
    std::string c = client.take();
    CHECK(feed(in, c, true));
    server.recv(c);
    nghttp2_nv bad_status[] = {nv(":status", "999999")};
    nghttp2_submit_response(server.s, ids[0], bad_status, 1, nullptr);
    nghttp2_nv head[] = {nv(":status", "200")};
    nghttp2_submit_headers(server.s, NGHTTP2_FLAG_NONE, ids[1], nullptr, head, 1, nullptr);
    nghttp2_nv trailers[] = {nv("grpc-status", "123456")};
    nghttp2_submit_trailer(server.s, ids[1], trailers, 1);
    CHECK(feed(in, server.take(), false));
    REQUIRE(sink.seen.size() == 2);
    CHECK(sink.seen[0].status == 0);
    CHECK(sink.seen[1].status == 200);
    CHECK(sink.seen[1].grpc_status == 2);
  }

  TEST_CASE("garbage after the preface gives up") {
    Sink sink;
    l7::Inspector in(sink, 10s);
    CHECK(in.clientBytes("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
    CHECK_FALSE(feed(in, std::string(64, '\xff'), true));
    CHECK_FALSE(in.observing());
  }
}
