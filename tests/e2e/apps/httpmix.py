#!/usr/bin/python3
"""HTTP/1.1 test application with a known mix of answers (stdlib only).

  httpmix.py serve PORT              keep-alive server: GET /fail... answers 503, anything else 200;
                                     prints "ready" once listening
  httpmix.py load HOST PORT [EVERY]  GETs until killed, 10 per connection then a new connection,
                                     every EVERY-th (default 4) to /fail; prints "ready" after the
                                     first 200
  httpmix.py get HOST PORT PATH      one GET; prints the status code
"""
import http.client
import http.server
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - the http.server API
        code = 503 if self.path.startswith("/fail") else 200
        body = b"fail\n" if code == 503 else b"ok\n"
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve(port):
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


def load(host, port, every):
    n, ready = 0, False
    while True:
        c = http.client.HTTPConnection(host, port, timeout=5)
        try:
            for _ in range(10):
                n += 1
                c.request("GET", "/fail" if n % every == 0 else "/")
                r = c.getresponse()
                r.read()
                if not ready and r.status == 200:
                    print("ready", flush=True)
                    ready = True
                time.sleep(0.01)
        except (OSError, http.client.HTTPException):
            time.sleep(0.2)
        finally:
            c.close()


def get(host, port, path):
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    print(r.status, flush=True)


def main():
    a = sys.argv[1:]
    if not a or a[0] in ("-h", "--help"):
        print(__doc__)
    elif a[0] == "serve":
        serve(int(a[1]))
    elif a[0] == "load":
        load(a[1], int(a[2]), int(a[3]) if len(a) > 3 else 4)
    elif a[0] == "get":
        get(a[1], int(a[2]), a[3])
    else:
        sys.exit(f"httpmix: unknown command {a[0]}")


if __name__ == "__main__":
    main()
