#!/usr/bin/python3
"""HBONE peers for the end-to-end tests, built on third-party stacks only:
Python's ssl (OpenSSL) and the `h2` package (python3-h2), not on Sluice code.

  h2connect.py connect HOST PORT AUTHORITY CERT KEY CA [MESSAGE]
      TLS 1.3 + ALPN h2 with a client certificate, one HTTP/2 CONNECT to
      AUTHORITY; on 200 sends MESSAGE through the tunnel and reads the echo.
  h2connect.py bad HOST PORT KIND [CERT KEY CA]
      misbehaves on purpose (KIND: random, tls12, stall, nocert, cert, preface,
      get) and reports how the server reacted and how long it took.
Prints one JSON object.
"""
import json
import os
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events


def tls_context(cert=None, key=None, ca=None, tls12=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # HBONE has no SNI / hostnames: identities are SPIFFE IDs
    if ca:
        ctx.load_verify_locations(ca)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["h2"])
    return ctx


def wait_closed(sock, limit=60.0):
    """Seconds until the peer closes (EOF, reset or TLS alert), or None."""
    start = time.monotonic()
    sock.settimeout(1.0)
    while time.monotonic() - start < limit:
        try:
            if not sock.recv(65536):
                return round(time.monotonic() - start, 2)
        except socket.timeout:
            continue
        except (ssl.SSLError, OSError):
            return round(time.monotonic() - start, 2)
    return None


def h2_events(sock, conn, until, limit=10.0):
    deadline = time.monotonic() + limit
    sock.settimeout(1.0)
    out = []
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        if not data:
            out.append("eof")
            return out
        for ev in conn.receive_data(data):
            out.append(ev)
            if isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        sock.sendall(conn.data_to_send())
        if until(out):
            return out
    return out


def connect(host, port, authority, cert, key, ca, message=None):
    raw = socket.create_connection((host, int(port)), timeout=10)
    sock = tls_context(cert, key, ca).wrap_socket(raw)
    result = {"tls_version": sock.version(), "alpn": sock.selected_alpn_protocol()}
    # h2 4.1 predates RFC 8441-era CONNECT handling in its outbound checks and
    # insists on :path; RFC 9113 8.5 forbids :path/:scheme on CONNECT.
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding="utf-8", validate_outbound_headers=False))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "CONNECT"), (":authority", authority)])
    sock.sendall(conn.data_to_send())
    evs = h2_events(sock, conn, lambda e: any(isinstance(x, (h2.events.ResponseReceived, h2.events.StreamReset)) for x in e))
    status = None
    for ev in evs:
        if isinstance(ev, h2.events.ResponseReceived):
            status = dict(ev.headers).get(":status")
    result["status"] = status
    result["events"] = [type(e).__name__ for e in evs]
    if status == "200" and message:
        conn.send_data(sid, (message + "\n").encode())
        sock.sendall(conn.data_to_send())
        got = b""
        def has_line(e):
            nonlocal got
            got = b"".join(x.data for x in e if isinstance(x, h2.events.DataReceived))
            return b"\n" in got
        h2_events(sock, conn, has_line)
        result["echo"] = got.decode(errors="replace").strip()
    sock.close()
    return result


def bad(host, port, kind, cert=None, key=None, ca=None):
    raw = socket.create_connection((host, int(port)), timeout=10)
    result = {"kind": kind}
    try:
        if kind == "random":
            # Garbage that cannot start a TLS record: with a random first
            # byte, 0x16 (a handshake record header with a long length) or
            # an SSLv2-style header makes the server wait for the rest, and
            # the connection ends at the 10 s handshake deadline instead.
            raw.sendall(b"\x00" + os.urandom(4095))
            result["closed_after"] = wait_closed(raw)
            return result
        if kind == "stall":
            result["closed_after"] = wait_closed(raw)
            return result
        ctx = tls_context(cert, key, ca, tls12=(kind == "tls12"))
        try:
            sock = ctx.wrap_socket(raw)
        except (ssl.SSLError, OSError) as e:
            result["handshake_error"] = str(e)
            return result
        result["tls_version"] = sock.version()
        if kind in ("nocert", "cert"):
            # TLS 1.3: the server checks the client certificate after the
            # client considers the handshake done; the refusal shows on read.
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            try:
                sock.sendall(conn.data_to_send())
            except (ssl.SSLError, OSError) as e:
                result["refused"] = str(e)
            result["closed_after"] = wait_closed(sock)
            return result
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        if kind == "get":
            conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", host)],
                              end_stream=True)
        sock.sendall(conn.data_to_send())
        start = time.monotonic()
        evs = h2_events(sock, conn, lambda e: "eof" in e, limit=60.0)
        result["closed_after"] = round(time.monotonic() - start, 2) if "eof" in evs else None
        result["goaway"] = any(isinstance(x, h2.events.ConnectionTerminated) for x in evs)
        return result
    finally:
        raw.close()


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "connect":
        print(json.dumps(connect(*args)))
    elif mode == "bad":
        print(json.dumps(bad(*args)))
    else:
        sys.exit(f"unknown mode {mode}")
