#!/usr/bin/python3
"""HTTP apps for the end-to-end tests, with exact byte counts.

  httpapp.py server PORT
      HTTP/1.1 with keep-alive: /fail answers 503, anything else 200, each
      with a small body; /notmod a 304 whose Content-Length (50) is not its
      body's; /cut a 200 promising 1000 bytes, 10 sent, then the connection
      closed; /reset reads the request and resets the connection; prints
      "ready".
  httpapp.py client HOST PORT CONNECTIONS OK FAIL
      CONNECTIONS keep-alive connections, each sending OK requests for /ok
      and FAIL for /fail (POST with a body); prints JSON: status counts and the
      bytes this client wrote and read.
  httpapp.py raw HOST PORT PATH...
      one connection, a GET for each PATH written at once (pipelined), then
      everything read to the server's end; prints JSON: the bytes read and the
      error that ended it (null at a clean end).
  httpapp.py h2server PORT
      HTTP/2 prior knowledge (h2c) with the `h2` package (python3-h2); same
      answers; speaks first (its SETTINGS on accept); prints "ready".
  httpapp.py h2client HOST PORT OK FAIL
      one h2c connection, OK + FAIL requests; prints JSON status counts.
Raw sockets (HTTP/1) so that the bytes counted are the bytes exchanged.
"""
import json
import socket
import struct
import sys
import threading


def answer(path):
    if path.startswith("/fail"):
        return 503, b"unavailable\n"
    return 200, b"ok " + path.encode() + b"\n"


def read_message(sock, buf):
    """One HTTP/1.1 message with a Content-Length body: (head, body, rest of buf) or None at EOF."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    return head, buf[:length], buf[length:]


def serve_conn(conn):
    buf = b""
    with conn:
        while True:
            msg = read_message(conn, buf)
            if msg is None:
                return
            head, _, buf = msg
            path = head.split(b" ")[1].decode()
            if path == "/reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if path == "/cut":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"y" * 10)
                return
            if path == "/notmod":
                conn.sendall(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n")
                continue
            status, body = answer(path)
            reason = b"OK" if status == 200 else b"Service Unavailable"
            conn.sendall(b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n%s"
                         % (status, reason, len(body), body))


def raw(host, port, paths):
    """The requests in one write, a half-close, then what comes back: {"received", "error"}.
    A reset at any point is the error (it can come before the requests went out: a proxy
    whose connect to the app failed at once resets the connection it just accepted)."""
    received, error = 0, None
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: server:%d\r\n\r\n" % (p.encode(), port)
                               for p in paths))
            s.shutdown(socket.SHUT_WR)
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                received += len(chunk)
    except OSError as e:
        error = type(e).__name__
    print(json.dumps({"received": received, "error": error}))


def listen_forever(port, handler):
    """Accepts on PORT, one thread per connection running handler(conn); prints "ready"."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def client(host, port, connections, ok, fail):
    codes, sent, received = {}, 0, 0
    for _ in range(connections):
        with socket.create_connection((host, port), timeout=10) as s:
            buf = b""
            for path in ["/ok"] * ok + ["/fail"] * fail:
                body = b"x" * 10
                req = (b"POST %s HTTP/1.1\r\nHost: server:%d\r\nContent-Length: %d\r\n\r\n%s"
                       % (path.encode(), port, len(body), body))
                s.sendall(req)
                sent += len(req)
                before = len(buf)
                msg = read_message(s, buf)
                if msg is None:
                    raise SystemExit("connection closed early")
                head, rbody, buf = msg
                received += len(head) + 4 + len(rbody) + len(buf) - before
                code = head.split(b" ")[1].decode()
                codes[code] = codes.get(code, 0) + 1
            s.shutdown(socket.SHUT_WR)
            while True:  # the server's EOF: every byte it sent is counted
                chunk = s.recv(65536)
                if not chunk:
                    break
                received += len(chunk)
    print(json.dumps({"codes": codes, "sent": sent, "received": received}))


def h2server(port):
    import h2.config
    import h2.connection
    import h2.events

    def serve(conn):
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        h2c.initiate_connection()
        conn.sendall(h2c.data_to_send())
        paths = {}
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                for ev in h2c.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        paths[ev.stream_id] = dict(ev.headers)[b":path"].decode()
                    elif isinstance(ev, h2.events.StreamEnded):
                        status, body = answer(paths.pop(ev.stream_id, "/"))
                        h2c.send_headers(ev.stream_id, [(":status", str(status)),
                                                        ("content-length", str(len(body)))])
                        h2c.send_data(ev.stream_id, body, end_stream=True)
                conn.sendall(h2c.data_to_send())

    listen_forever(port, serve)


def h2client(host, port, ok, fail):
    import h2.config
    import h2.connection
    import h2.events

    codes = {}
    with socket.create_connection((host, port), timeout=10) as s:
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        h2c.initiate_connection()
        for path in ["/ok"] * ok + ["/fail"] * fail:
            sid = h2c.get_next_available_stream_id()
            h2c.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":path", path),
                                   (":authority", f"server:{port}")], end_stream=True)
        s.sendall(h2c.data_to_send())
        done = 0
        while done < ok + fail:
            data = s.recv(65536)
            if not data:
                raise SystemExit("connection closed early")
            for ev in h2c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    code = dict(ev.headers)[b":status"].decode()
                    codes[code] = codes.get(code, 0) + 1
                elif isinstance(ev, h2.events.StreamEnded):
                    done += 1
            s.sendall(h2c.data_to_send())
        h2c.close_connection()
        s.sendall(h2c.data_to_send())
    print(json.dumps({"codes": codes}))


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "server":
        listen_forever(int(args[0]), serve_conn)
    elif mode == "client":
        client(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]))
    elif mode == "raw":
        raw(args[0], int(args[1]), args[2:])
    elif mode == "h2server":
        h2server(int(args[0]))
    elif mode == "h2client":
        h2client(args[0], int(args[1]), int(args[2]), int(args[3]))
    else:
        raise SystemExit(__doc__)
