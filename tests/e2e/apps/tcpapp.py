#!/usr/bin/python3
"""Test application run inside lab pods (stdlib only).

Servers:
  tcpapp.py whoami PORT     answer each connection with "peer=IP:PORT local=IP:PORT\\n" and close
  tcpapp.py stream PORT     header "<up> <down>\\n"; read <up> bytes (hashing) while sending <down>
                            pattern bytes; after the client's EOF send "sha256=<hex> n=<count>\\n"
  tcpapp.py echo PORT       asyncio line echo, for many concurrent connections
  tcpapp.py http PORT       tiny HTTP/1.1 keep-alive server answering "ok\\n" (benchmarks)
  tcpapp.py watch PORT      line echo (a thread per connection) that prints how each connection
                            ended: "end how=eof|reset|error:<name> n=<bytes read>" (flushed)
  tcpapp.py stall PORT      a peer that stops: each connection's first line picks a role. "sink":
                            never read; "flood": send until nothing goes for 1 s, then reset
                            (linger 0). Prints how each ended, as `stall` the client (flushed)
Clients:
  tcpapp.py get HOST PORT [TIMEOUT]               print one whoami line (IPv4 or IPv6 HOST;
                                                  connect timeout TIMEOUT s, default 10)
  tcpapp.py transfer HOST PORT UP DOWN            checksum-verified transfer both ways (half-close)
  tcpapp.py many HOST PORT N                      N concurrent echo connections held open together
  tcpapp.py say HOST PORT TEXT                    send one line to an echo server, print the answer
  tcpapp.py spread HOST PORT N CONC               N whoami connections, CONC at a time; prints JSON
                                                  {"by_server": {ip: count}, "failures": [...]}
  tcpapp.py hold HOST PORT SECONDS [SPORT]        one echo connection (from local port SPORT), a round
                                                  trip every 0.2 s for SECONDS; prints "ready" once
                                                  connected, "ok n=.."
  tcpapp.py pace HOST PORT                        one echo connection; prints "ready", then for each
                                                  number N read from stdin sends a line of N bytes (and
                                                  its newline), checks the echo, prints "echoed N+1";
                                                  closes at stdin's end and prints "closed"
  tcpapp.py loop HOST PORT CONC TEXT [PAUSE_MS]   CONC threads each opening NEW echo connections, one
                                                  after another with PAUSE_MS (default 5) in between
                                                  (one line "TEXT <n>", reply checked) until stdin
                                                  closes; prints "ready" after the first success,
                                                  then JSON {"buckets": [{"t": unix second, "ok", "fail"}],
                                                  "failures": [[unix time, error], ...] (the last 300),
                                                  "conns": [[start, end, ok 1|0, error], ...] (every one)}
  tcpapp.py peername HOST PORT [4|6]              one whoami connection (6: an AF_INET6 socket to
                                                  ::ffff:HOST); prints JSON {"peername": what the
                                                  client's getpeername() says as "IP:PORT",
                                                  "sockname": its getsockname() IP, "reply"}
  tcpapp.py probe HOST PORT [SPORT]               one connection (from local port SPORT, SO_REUSEADDR),
                                                  read until EOF or error; prints JSON
                                                  {"local", "reply", "error", "ms"}
  tcpapp.py churn HOST PORT SECONDS [CONC]        new whoami connections back to back (CONC at a time)
                                                  for SECONDS; prints "ready" at once, then JSON
                                                  {"ok": n, "failures": [[t, error], ...]} (t: unix time)
  tcpapp.py flood HOST PORT N                     opens N idle connections and holds them (never sends);
                                                  prints "ready opened=.. failed=.." and holds until killed
  tcpapp.py garbage HOST PORT N                   N connections, each sends a line of garbage and waits
                                                  for the close; prints "done closed=.."
  tcpapp.py stall HOST PORT sink|flood            against a `stall` server, in the role's opposite: the
                                                  server sinks, the client floods until nothing goes
                                                  for 1 s and resets: prints "reset sent n=<bytes>";
                                                  or the server floods and resets while the client
                                                  neither reads nor writes: prints how it learnt,
                                                  "end how=reset|eof|timeout|error:<name> n=<bytes>
                                                  s=<seconds it waited>"
  tcpapp.py fragsyn HOST PORT 0|1                 one TCP SYN crafted on a raw socket (IPv4 HOST), whole
                                                  (0) or as two IP fragments (1, the first with 24 bytes
                                                  of the 40-byte TCP header); waits 2 s for the answer;
                                                  prints JSON {"syn_ack": whether one came}
"""
import asyncio
import hashlib
import json
import os
import resource
import select
import socket
import struct
import sys
import threading
import time

BLOCK = 1 << 20
_BASE = bytes((i * 131 + 7) & 0xFF for i in range(BLOCK)) * 2


def pattern(total):
    """Deterministic stream: 1 MiB blocks, block i rotated by i bytes."""
    sent, i = 0, 0
    while sent < total:
        off = (i * 4099) % BLOCK
        chunk = _BASE[off:off + BLOCK]
        n = min(BLOCK, total - sent)
        yield chunk[:n]
        sent += n
        i += 1


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def listen(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(4096)
    return s


def serve_whoami(port):
    s = listen(port)
    print("ready", flush=True)
    while True:
        c, peer = s.accept()
        local = c.getsockname()
        try:
            c.sendall(f"peer={peer[0]}:{peer[1]} local={local[0]}:{local[1]}\n".encode())
        except OSError:
            pass
        c.close()


def handle_stream(c):
    try:
        # A timeout makes Python poll before each read and write. With
        # --sockmap=on a plain blocking recv() can return EAGAIN after a wakeup
        # that brought no data (tcp_bpf_recvmsg waits once; a write-space
        # wakeup of the writer beside it is one, docs/architecture.md), and a
        # makefile()'s read1() returns b"" for it, as for EOF.
        c.settimeout(600)
        f = c.makefile("rb")
        header = f.readline().split()
        up, down = int(header[0]), int(header[1])
        h = hashlib.sha256()
        got = [0]

        def reader():
            while True:
                data = f.read1(BLOCK)
                if not data:
                    break
                h.update(data)
                got[0] += len(data)

        t = threading.Thread(target=reader)
        t.start()
        for chunk in pattern(down):
            c.sendall(chunk)
        t.join()
        c.sendall(f"sha256={h.hexdigest()} n={got[0]}\n".encode())
        c.shutdown(socket.SHUT_WR)
    except (OSError, ValueError, IndexError):
        pass
    finally:
        c.close()


def serve_threads(port, handle):
    """Accepts forever, each connection handled on its own thread."""
    s = listen(port)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def serve_stream(port):
    serve_threads(port, handle_stream)


def serve_asyncio(port, handle):
    """Runs an asyncio TCP server calling handle(reader, writer) per connection."""
    raise_nofile()

    async def main():
        server = await asyncio.start_server(handle, "0.0.0.0", port, backlog=4096)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def serve_echo(port):
    async def handle(reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                writer.write(line)
                await writer.drain()
        except OSError:
            pass
        writer.close()

    serve_asyncio(port, handle)


def handle_watch(c):
    n, how = 0, "eof"
    try:
        f = c.makefile("rb")
        while True:
            line = f.readline()
            if not line:
                break
            n += len(line)
            c.sendall(line)
    except ConnectionResetError:
        how = "reset"
    except OSError as e:
        how = f"error:{type(e).__name__}"
    finally:
        c.close()
    print(f"end how={how} n={n}", flush=True)


def serve_watch(port):
    serve_threads(port, handle_watch)


def stall_flood(c):
    """Sends until nothing has gone for 1 s, then resets; returns the bytes sent."""
    c.setblocking(False)
    chunk, sent, moved = b"\x5a" * 65536, 0, time.monotonic()
    while time.monotonic() - moved < 1.0:
        try:
            sent += c.send(chunk)
            moved = time.monotonic()
        except BlockingIOError:
            select.select([], [c], [], 0.05)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    return sent


def stall_sink(c, since):
    """Neither reads nor writes until the connection has an error or hangs up (a read
    would make room, and the proxy would then find the reset by reading), then reads what
    reached it; says how it ended."""
    p = select.poll()
    p.register(c, 0)  # POLLERR and POLLHUP only
    how = "timeout" if not p.poll(30_000) else None
    took, n = time.monotonic() - since, 0
    c.settimeout(5)
    try:
        while True:
            d = c.recv(65536)
            if not d:
                how = how or "eof"
                break
            n += len(d)
    except ConnectionResetError:
        how = how or "reset"
    except OSError as e:
        how = how or f"error:{type(e).__name__}"
    c.close()
    return f"end how={how} n={n} s={took:.1f}"


def handle_stall(c):
    role = b""
    while not role.endswith(b"\n"):
        d = c.recv(1)
        if not d:
            return
        role += d
    if role.strip() == b"flood":
        print(f"reset sent n={stall_flood(c)}", flush=True)
    else:
        print(stall_sink(c, time.monotonic()), flush=True)


def serve_stall(port):
    serve_threads(port, handle_stall)


def client_stall(host, port, server_role):
    c = socket.create_connection((host, port), timeout=10)
    c.sendall(server_role.encode() + b"\n")
    if server_role == "sink":
        print(f"reset sent n={stall_flood(c)}", flush=True)
    else:
        print(stall_sink(c, time.monotonic()), flush=True)


def serve_http(port):
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"

    async def handle(reader, writer):
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(resp)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        writer.close()

    serve_asyncio(port, handle)


def connect_from(host, port, sport, timeout):
    """A connection from local port `sport` (SO_REUSEADDR), or any port when None."""
    if sport is None:
        return socket.create_connection((host, port), timeout=timeout)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    c = socket.socket(family, socket.SOCK_STREAM)
    try:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind(("", sport))
        c.settimeout(timeout)
        c.connect((host, port))
    except OSError:
        c.close()
        raise
    return c


def read_reply(host, port, timeout=10, on_connect=None, sport=None):
    """Connects, reads until the server closes, returns the text."""
    with connect_from(host, port, sport, timeout) as c:
        if on_connect:
            on_connect(c)
        data = b""
        while True:
            d = c.recv(4096)
            if not d:
                break
            data += d
    return data.decode(errors="replace")


def client_get(host, port, timeout=10):
    sys.stdout.write(read_reply(host, port, timeout=timeout))


def client_peername(host, port, family):
    if family == "6":
        c = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        c.settimeout(60)
        c.connect(("::ffff:" + host, port))
    else:
        c = socket.create_connection((host, port), timeout=60)
    peer = c.getpeername()
    own = c.getsockname()
    data = b""
    while True:
        d = c.recv(4096)
        if not d:
            break
        data += d
    c.close()
    print(json.dumps({"peername": f"{peer[0]}:{peer[1]}", "sockname": own[0],
                      "reply": data.decode(errors="replace")}))


def client_transfer(host, port, up, down):
    c = socket.create_connection((host, port), timeout=60)
    c.sendall(f"{up} {down}\n".encode())
    up_hash = hashlib.sha256()

    def writer():
        for chunk in pattern(up):
            up_hash.update(chunk)
            c.sendall(chunk)
        c.shutdown(socket.SHUT_WR)  # half-close: we still read the whole answer

    t = threading.Thread(target=writer)
    t.start()
    expect = hashlib.sha256()
    for chunk in pattern(down):
        expect.update(chunk)
    got = hashlib.sha256()
    remaining = down
    tail = b""
    while True:
        d = c.recv(BLOCK)
        if not d:
            break
        if remaining > 0:
            take = d[:remaining]
            got.update(take)
            remaining -= len(take)
            tail += d[len(take):]
        else:
            tail += d
    t.join()
    c.close()
    ok_down = remaining == 0 and got.hexdigest() == expect.hexdigest()
    ok_up = tail.decode().strip() == f"sha256={up_hash.hexdigest()} n={up}"
    print(f"down_ok={ok_down} up_ok={ok_up} trailer={tail.decode().strip()!r}")
    sys.exit(0 if ok_down and ok_up else 1)


def client_many(host, port, n):
    raise_nofile()

    async def main():
        conns = []
        for i in range(n):
            conns.append(await asyncio.wait_for(asyncio.open_connection(host, port), 30))
        # All n are open at once; now each does a round trip.
        async def one(i, rw):
            r, w = rw
            msg = f"conn {i}\n".encode()
            w.write(msg)
            await w.drain()
            back = await asyncio.wait_for(r.readline(), 30)
            w.close()
            return back == msg
        results = await asyncio.gather(*(one(i, rw) for i, rw in enumerate(conns)), return_exceptions=True)
        return sum(1 for r in results if r is True)

    ok = asyncio.run(main())
    print(f"completed={ok} of {n}")
    sys.exit(0 if ok == n else 1)


def client_say(host, port, text):
    with socket.create_connection((host, port), timeout=10) as c:
        c.sendall(text.encode() + b"\n")
        f = c.makefile("rb")
        sys.stdout.write(f.readline().decode())


def client_hold(host, port, seconds, sport=None):
    import time
    c = connect_from(host, port, sport, 10)
    f = c.makefile("rb")
    print("ready", flush=True)
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        msg = f"hold {n}\n".encode()
        c.sendall(msg)
        if f.readline() != msg:
            print(f"broken after n={n}", flush=True)
            sys.exit(1)
        n += 1
        time.sleep(0.2)
    c.close()
    print(f"ok n={n}", flush=True)


def client_pace(host, port):
    c = socket.create_connection((host, port), timeout=10)
    f = c.makefile("rb")
    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line)
        msg = b"p" * n + b"\n"
        c.sendall(msg)
        if f.readline() != msg:
            print(f"broken at {n}", flush=True)
            sys.exit(1)
        print(f"echoed {n + 1}", flush=True)
    c.close()
    print("closed", flush=True)


def client_loop(host, port, conc, text, pause_ms=5):
    import collections
    import json
    import time

    lock = threading.Lock()
    buckets, failures, conns = {}, collections.deque(maxlen=300), []
    first_ok = threading.Event()
    stop = threading.Event()

    def record(start, err):
        end = time.time()
        with lock:
            b = buckets.setdefault(int(start), [0, 0])
            b[0 if err is None else 1] += 1
            conns.append([round(start, 4), round(end, 4), 1 if err is None else 0, err or ""])
            if err is not None:
                failures.append([round(start, 3), err])

    def worker(w):
        n = 0
        while not stop.is_set():
            msg = f"{text} {w}-{n}\n".encode()
            n += 1
            start = time.time()
            err = None
            try:
                with socket.create_connection((host, port), timeout=2) as c:
                    c.sendall(msg)
                    back = c.makefile("rb").readline()
                    if back != msg:
                        err = f"bad reply {back[:60]!r}"
            except OSError as e:
                err = f"{type(e).__name__}: {e}"
            record(start, err)
            if err is None:
                first_ok.set()
            # A pause also after a refused connect, which returns at once. And
            # the closed connections' TIME_WAIT ports are only reused after 60 s.
            time.sleep(pause_ms / 1000)

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(conc)]
    for t in threads:
        t.start()
    if not first_ok.wait(30):
        stop.set()
        sys.exit(f"loop: no connection to {host}:{port} succeeded in 30 s: {list(failures)[-3:]}")
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    stop.set()
    for t in threads:
        t.join(5)
    with lock:
        out = {"buckets": [{"t": t, "ok": b[0], "fail": b[1]} for t, b in sorted(buckets.items())],
               "failures": list(failures), "conns": sorted(conns)}
    print(json.dumps(out), flush=True)


def client_spread(host, port, n, conc):
    import json
    from concurrent.futures import ThreadPoolExecutor

    def one(i):
        try:
            line = read_reply(host, port).strip()
            local = [f for f in line.split() if f.startswith("local=")]
            if not local:
                return None, f"#{i}: bad reply {line!r}"
            return local[0][len("local="):].rsplit(":", 1)[0], None
        except OSError as e:
            return None, f"#{i}: {e}"

    by_server, failures = {}, []
    with ThreadPoolExecutor(conc) as pool:
        for server, err in pool.map(one, range(n)):
            if err:
                failures.append(err)
            else:
                by_server[server] = by_server.get(server, 0) + 1
    print(json.dumps({"by_server": by_server, "failures": failures}))


def client_probe(host, port, sport=None):
    import json
    import time
    start = time.monotonic()
    out = {"local": None, "reply": "", "error": None}
    try:
        out["reply"] = read_reply(host, port, timeout=15, sport=sport,
                                  on_connect=lambda c: out.update(local="%s:%d" % c.getsockname()[:2]))
    except OSError as e:
        out["error"] = type(e).__name__ if not e.strerror else e.strerror
    out["ms"] = round((time.monotonic() - start) * 1000, 1)
    print(json.dumps(out))


def client_churn(host, port, seconds, conc=1):
    import json
    import time
    print("ready", flush=True)
    end = time.monotonic() + seconds
    lock = threading.Lock()
    result = {"ok": 0, "failures": []}

    def worker():
        while time.monotonic() < end:
            t = time.time()
            try:
                line = read_reply(host, port)
                if not line.startswith("peer="):
                    raise OSError(f"bad reply {line!r}")
                with lock:
                    result["ok"] += 1
            except OSError as e:
                with lock:
                    result["failures"].append([t, str(e)])
                time.sleep(0.01)

    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    print(json.dumps(result), flush=True)


def client_flood(host, port, n):
    import time
    raise_nofile()
    socks, failed = [], 0
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect((host, port))
            socks.append(s)
        except OSError:
            failed += 1
            s.close()
    print(f"ready opened={len(socks)} failed={failed}", flush=True)
    while True:
        time.sleep(3600)


def client_garbage(host, port, n):
    closed = 0
    for i in range(n):
        try:
            with socket.create_connection((host, port), timeout=10) as c:
                c.sendall(b"GET / HTTP/1.1\r\nHost: garbage\r\n\r\n")
                while c.recv(4096):
                    pass
                closed += 1
        except OSError:
            closed += 1
    print(f"done closed={closed}")


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def client_fragsyn(host, port, fragment):
    import random
    import select
    import struct
    import time
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((host, port))
    src = probe.getsockname()[0]
    probe.close()
    saddr, daddr = socket.inet_aton(src), socket.inet_aton(host)
    sport = random.randint(40000, 60000)
    options = bytes([2, 4, 0x05, 0xB4]) + bytes([1]) * 16  # MSS 1460, NOPs: a 40-byte header
    tcp = struct.pack("!HHIIBBHHH", sport, port, 1000, 0, 10 << 4, 0x02, 65535, 0, 0) + options
    pseudo = saddr + daddr + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def send(payload, offset, more):
        # The kernel fills in the total length and the header checksum.
        flags = (0x2000 if more else 0) | (offset // 8)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0x5151, flags, 64, socket.IPPROTO_TCP, 0,
                         saddr, daddr)
        raw.sendto(ip + payload, (host, 0))

    if fragment:
        send(tcp[:24], 0, True)
        send(tcp[24:], 24, False)
    else:
        send(tcp, 0, False)
    deadline = time.monotonic() + 2
    seen = False
    while not seen and time.monotonic() < deadline:
        if not select.select([rx], [], [], max(0, deadline - time.monotonic()))[0]:
            break
        pkt = rx.recv(1500)
        ihl = (pkt[0] & 0x0F) * 4
        if pkt[12:16] != daddr or len(pkt) < ihl + 14:
            continue
        from_port, to_port = struct.unpack("!HH", pkt[ihl:ihl + 4])
        seen = from_port == port and to_port == sport and pkt[ihl + 13] & 0x12 == 0x12
    print(json.dumps({"syn_ack": seen}))


def main():
    a = sys.argv[1:]
    if not a or a[0] in ("-h", "--help"):
        print(__doc__)
        return
    cmd = a[0]
    if cmd == "whoami":
        serve_whoami(int(a[1]))
    elif cmd == "stream":
        serve_stream(int(a[1]))
    elif cmd == "echo":
        serve_echo(int(a[1]))
    elif cmd == "watch":
        serve_watch(int(a[1]))
    elif cmd == "http":
        serve_http(int(a[1]))
    elif cmd == "stall" and len(a) == 2:
        serve_stall(int(a[1]))
    elif cmd == "stall":
        client_stall(a[1], int(a[2]), a[3])
    elif cmd == "get":
        client_get(a[1], int(a[2]), float(a[3]) if len(a) > 3 else 10)
    elif cmd == "transfer":
        client_transfer(a[1], int(a[2]), int(a[3]), int(a[4]))
    elif cmd == "many":
        client_many(a[1], int(a[2]), int(a[3]))
    elif cmd == "say":
        client_say(a[1], int(a[2]), a[3])
    elif cmd == "spread":
        client_spread(a[1], int(a[2]), int(a[3]), int(a[4]))
    elif cmd == "loop":
        client_loop(a[1], int(a[2]), int(a[3]), a[4], float(a[5]) if len(a) > 5 else 5)
    elif cmd == "hold":
        client_hold(a[1], int(a[2]), float(a[3]), int(a[4]) if len(a) > 4 else None)
    elif cmd == "pace":
        client_pace(a[1], int(a[2]))
    elif cmd == "peername":
        client_peername(a[1], int(a[2]), a[3] if len(a) > 3 else "4")
    elif cmd == "probe":
        client_probe(a[1], int(a[2]), int(a[3]) if len(a) > 3 else None)
    elif cmd == "churn":
        client_churn(a[1], int(a[2]), float(a[3]), int(a[4]) if len(a) > 4 else 1)
    elif cmd == "flood":
        client_flood(a[1], int(a[2]), int(a[3]))
    elif cmd == "garbage":
        client_garbage(a[1], int(a[2]), int(a[3]))
    elif cmd == "fragsyn":
        client_fragsyn(a[1], int(a[2]), a[3] == "1")
    else:
        sys.exit(f"tcpapp: unknown command {cmd}")


if __name__ == "__main__":
    main()
