#!/usr/bin/env python3
"""A local HTTPS server speaking the Kubernetes API's list/watch protocol for
the resources Sluice's control plane watches. It stands in for an API server
(there is none on these machines) and is driven by the test through
/_control/* endpoints.

Faithful where the client depends on it:
  * lists: {"kind": "<Kind>List", "metadata": {"resourceVersion", "continue"},
    "items": [...]} with items carrying no kind; limit/continue paging;
  * watches: HTTP/1.1 chunked, one JSON event per line ({"type", "object"}),
    replay from ?resourceVersion=, BOOKMARK events when allowWatchBookmarks=true,
    an ERROR event with a 410 Status when the version was compacted away,
    the stream ends after timeoutSeconds;
  * bearer-token authentication: 401 with a Status body otherwise;
  * TokenReview (authentication.k8s.io/v1) for configured tokens.
Fault injection: /_control/cut ends every watch stream in the middle of an
event; /_control/malformed sends a line that is not JSON; /_control/compact
drops the history (next resume gets 410); /_control/expire-continue
{"resource", "count"} answers the next `count` list requests of that resource
that carry a continue token with 410 Gone, reason Expired, as an API server
does once the list's revision is compacted away (the Status carries the
"inconsistent" remainder token in metadata.continue, like the real one);
/_control/token changes the accepted token; /_control/unserve {"resource"}
removes a resource's CRD as the API server does (its objects are deleted, a DELETED
event each, its open watches end, and it answers 404); /_control/serve installs it again.
Slow and failing servers: /_control/fail {"status", "count", "resource" (default: every
listed/watched one), "retry_after"} answers the next `count` list or watch requests with
that status (a Status body, and Retry-After: <retry_after> when given), as an overloaded
API server answers 429 or 500; /_control/slow {"seconds"} delays every list and watch
answer by that long; /_control/hang {"on": true} stops answering: new requests get nothing
(their connection is dropped when the hang ends) and open watches send nothing, not even
bookmarks, until {"on": false}.
Custom resources: list items keep apiVersion and kind, metadata.generation
counts spec changes, PATCH .../namespaces/NS/PLURAL/NAME/status with a JSON
merge patch (application/merge-patch+json; other types get 415) replaces the
status only and is recorded for /_control/patches.

Namespaced lists of pods (GET /api/v1/namespaces/NS/pods) honour an equality
labelSelector (k=v[,k2=v2]), as `sluicectl check --kubeconfig` asks for them.

Single objects (Secrets, ConfigMaps; apps/v1 DaemonSets and Deployments, read
only by sluicectl): GET/PUT .../namespaces/NS/PLURAL/NAME and
POST .../namespaces/NS/PLURAL as the API server answers them (404 NotFound,
201 on create, 409 AlreadyExists, 409 Conflict on a stale resourceVersion);
/_control/put-object {"plural", "object"} stores one, /_control/forbid
{"method", "plural"} answers 403 to that verb, /_control/race-create
{"plural", "object"} stores the object just before the next create of its
name and answers that create 409 (another writer was faster).

Prints "PORT <n>" on stdout once listening.
"""
import argparse
import json
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RESOURCES = {
    "/api/v1/namespaces": ("namespaces", "Namespace", "v1"),
    "/api/v1/pods": ("pods", "Pod", "v1"),
    "/api/v1/services": ("services", "Service", "v1"),
    "/apis/discovery.k8s.io/v1/endpointslices": ("endpointslices", "EndpointSlice",
                                                  "discovery.k8s.io/v1"),
    # Custom resources (deploy/crds.yaml; Istio's with --watch-istio-policies).
    "/apis/security.sluice.dev/v1/authorizationpolicies": (
        "authorizationpolicies", "AuthorizationPolicy", "security.sluice.dev/v1"),
    "/apis/security.sluice.dev/v1/peerauthentications": (
        "peerauthentications", "PeerAuthentication", "security.sluice.dev/v1"),
    "/apis/security.istio.io/v1/authorizationpolicies": (
        "istio-authorizationpolicies", "AuthorizationPolicy", "security.istio.io/v1"),
    "/apis/security.istio.io/v1/peerauthentications": (
        "istio-peerauthentications", "PeerAuthentication", "security.istio.io/v1"),
}
# Items of a list of custom resources carry apiVersion and kind; built-in ones do not.
CUSTOM = {"authorizationpolicies", "peerauthentications", "istio-authorizationpolicies",
          "istio-peerauthentications"}
BY_NAME = {v[0]: (k, v[1], v[2]) for k, v in RESOURCES.items()}
# Namespaced objects read and written one by one (not listed or watched):
# plural -> (kind, apiVersion); the path prefix is /api/v1 or /apis/<group>/v1.
NAMED_KINDS = {"secrets": ("Secret", "v1"), "configmaps": ("ConfigMap", "v1"),
               "daemonsets": ("DaemonSet", "apps/v1"), "deployments": ("Deployment", "apps/v1")}


class State:
    def __init__(self, token, bookmark_interval):
        self.cv = threading.Condition()
        self.rv = 100
        self.objects = {name: {} for name in BY_NAME}  # resource -> key -> object
        self.history = []  # (rv, resource, type, object)
        self.compacted = 0  # events with rv <= compacted are gone
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.cut_generation = 0
        self.malformed_generation = 0
        self.expire_continue = {}  # resource -> continue pages still to answer 410
        self.requests = []
        self.reviews = {}  # token -> {"username", "pod_uid", "node"}
        self.patches = []  # (path, body) of every status PATCH
        self.named = {}  # (plural, namespace, name) -> object (Secrets, ConfigMaps)
        self.forbidden = set()  # (method, plural)
        self.races = {}  # (plural, namespace, name) -> object stored before the next create
        self.unserved = set()  # resources answering 404
        self.fail = {}  # resource or "*" -> {"status", "count", "retry_after"}
        self.slow = 0.0  # seconds before each list/watch answer
        self.hang = False

    def key(self, obj):
        m = obj.get("metadata", {})
        return f'{m.get("namespace", "")}/{m["name"]}'

    def upsert(self, resource, obj):
        with self.cv:
            self.rv += 1
            _, kind, api = BY_NAME[resource]
            obj = dict(obj)
            obj["kind"], obj["apiVersion"] = kind, api
            obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
            k = self.key(obj)
            if resource in CUSTOM:  # generation counts spec changes; the status is kept
                old = self.objects[resource].get(k)
                gen = old["metadata"].get("generation", 1) if old else 0
                changed = old is None or old.get("spec") != obj.get("spec")
                obj["metadata"]["generation"] = gen + 1 if changed else gen
                if old is not None and "status" in old:
                    obj["status"] = old["status"]
            typ = "MODIFIED" if k in self.objects[resource] else "ADDED"
            self.objects[resource][k] = obj
            self.history.append((self.rv, resource, typ, obj))
            self.cv.notify_all()
            return self.rv

    def patch_status(self, resource, namespace, name, patch):
        with self.cv:
            k = f"{namespace}/{name}"
            old = self.objects[resource].get(k)
            if old is None:
                return None
            self.rv += 1
            obj = json.loads(json.dumps(old))
            obj["status"] = merge_patch(obj.get("status", {}), patch.get("status", {}))
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.objects[resource][k] = obj
            self.history.append((self.rv, resource, "MODIFIED", obj))
            self.cv.notify_all()
            return obj

    def delete(self, resource, namespace, name):
        with self.cv:
            k = f"{namespace}/{name}"
            obj = self.objects[resource].pop(k, None)
            if obj is None:
                return None
            self.rv += 1
            obj = json.loads(json.dumps(obj))
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.history.append((self.rv, resource, "DELETED", obj))
            self.cv.notify_all()
            return self.rv


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State = None

    def log_message(self, fmt, *args):  # quiet
        pass

    def send_json(self, code, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_body(self):
        n = int(self.headers.get("Content-Length", "0"))
        return json.loads(self.rfile.read(n) or b"{}")

    def authorized(self):
        st = self.state
        if self.headers.get("Authorization", "") != f"Bearer {st.token}":
            self.send_json(401, status(401, "Unauthorized", "Unauthorized"))
            return False
        return True

    def single(self, method, path):
        """NAMED_KINDS objects by name; True when the request was answered."""
        parts = path.strip("/").split("/")
        # api/v1/namespaces/NS/PLURAL[/NAME] or apis/GROUP/v1/namespaces/NS/PLURAL[/NAME]
        if parts[:1] == ["apis"] and len(parts) > 1:
            parts = ["api"] + parts[2:]
        if len(parts) not in (5, 6) or parts[:3] != ["api", "v1", "namespaces"] or \
                parts[4] not in NAMED_KINDS or \
                path.strip("/").startswith("apis/") != ("/" in NAMED_KINDS[parts[4]][1]):
            return False
        st = self.state
        ns, plural = parts[3], parts[4]
        if (method, plural) in st.forbidden:
            self.send_json(403, status(403, "Forbidden",
                                       f'{plural} is forbidden: cannot {method.lower()} {plural} '
                                       f'in the namespace "{ns}"'))
            return True
        with st.cv:
            if method == "GET" and len(parts) == 6:
                obj = st.named.get((plural, ns, parts[5]))
                if obj is None:
                    self.send_json(404, status(404, "NotFound", f'{plural} "{parts[5]}" not found'))
                else:
                    self.send_json(200, obj)
                return True
            if method == "POST" and len(parts) == 5:
                obj = self.read_body()
                key = (plural, ns, obj.get("metadata", {}).get("name", ""))
                if key in st.races:
                    st.named[key] = self.stored(plural, ns, st.races.pop(key))
                if key in st.named:
                    self.send_json(409, status(409, "AlreadyExists",
                                               f'{plural} "{key[2]}" already exists'))
                else:
                    st.named[key] = self.stored(plural, ns, obj)
                    self.send_json(201, st.named[key])
                return True
            if method == "PUT" and len(parts) == 6:
                obj = self.read_body()
                key = (plural, ns, parts[5])
                cur = st.named.get(key)
                if cur is None:
                    self.send_json(404, status(404, "NotFound", f'{plural} "{parts[5]}" not found'))
                elif obj.get("metadata", {}).get("resourceVersion") != \
                        cur["metadata"]["resourceVersion"]:
                    self.send_json(409, status(409, "Conflict", "the object has been modified"))
                else:
                    st.named[key] = self.stored(plural, ns, obj)
                    self.send_json(200, st.named[key])
                return True
        return False

    def stored(self, plural, ns, obj):
        st = self.state
        st.rv += 1
        obj = json.loads(json.dumps(obj))
        obj["kind"], obj["apiVersion"] = NAMED_KINDS[plural]
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = ns
        meta["resourceVersion"] = str(st.rv)
        meta.setdefault("uid", f"uid-{st.rv}")
        return obj

    def do_PUT(self):
        st = self.state
        with st.cv:
            st.requests.append("PUT " + self.path)
        if not self.authorized():
            return
        if not self.single("PUT", urllib.parse.urlparse(self.path).path):
            self.send_json(404, status(404, "NotFound", "not found"))

    def do_POST(self):
        st = self.state
        url = urllib.parse.urlparse(self.path)
        if url.path.startswith("/_control/"):
            return self.control(url.path[len("/_control/"):], self.read_body())
        with st.cv:
            st.requests.append("POST " + self.path)
        if not self.authorized():
            return
        if self.single("POST", url.path):
            return
        if url.path == "/apis/authentication.k8s.io/v1/tokenreviews":
            review = self.read_body()
            token = review.get("spec", {}).get("token", "")
            who = st.reviews.get(token)
            out = dict(review)
            if who is None:
                out["status"] = {"authenticated": False, "error": "invalid bearer token"}
            else:
                extra = {"authentication.kubernetes.io/pod-uid": [who["pod_uid"]]}
                if who.get("node"):
                    extra["authentication.kubernetes.io/node-name"] = [who["node"]]
                out["status"] = {"authenticated": True,
                                 "audiences": review.get("spec", {}).get("audiences", []),
                                 "user": {"username": who["username"], "extra": extra}}
            return self.send_json(201, out)
        self.send_json(404, status(404, "NotFound", "not found"))

    def control(self, what, body):
        st = self.state
        if what == "upsert":
            return self.send_json(200, {"rv": st.upsert(body["resource"], body["object"])})
        if what == "delete":
            return self.send_json(200, {"rv": st.delete(body["resource"], body.get("namespace", ""),
                                                        body["name"])})
        with st.cv:
            if what == "compact":
                st.compacted = st.rv
                st.history = []
            elif what == "cut":
                st.cut_generation += 1
            elif what == "malformed":
                st.malformed_generation += 1
            elif what == "expire-continue":
                st.expire_continue[body["resource"]] = int(body.get("count", 1))
            elif what == "token":
                st.token = body["token"]
            elif what == "review":
                st.reviews[body["token"]] = body
            elif what == "unserve":
                # Removing a CRD deletes its objects (a DELETED event each),
                # ends the open watches of it, then the resource answers 404.
                res = body["resource"]
                for k in list(st.objects[res]):
                    ns, _, name = k.partition("/")
                    st.delete(res, ns, name)  # cv is an RLock
                st.unserved.add(res)
            elif what == "serve":
                st.unserved.discard(body["resource"])
            elif what == "put-object":
                m = body["object"]["metadata"]
                st.named[(body["plural"], m["namespace"], m["name"])] = \
                    self.stored(body["plural"], m["namespace"], body["object"])
            elif what == "forbid":
                st.forbidden.add((body["method"], body["plural"]))
            elif what == "race-create":
                m = body["object"]["metadata"]
                st.races[(body["plural"], m["namespace"], m["name"])] = body["object"]
            elif what == "fail":
                st.fail[body.get("resource", "*")] = {"status": int(body["status"]),
                                                      "count": int(body.get("count", 1)),
                                                      "retry_after": body.get("retry_after")}
            elif what == "slow":
                st.slow = float(body.get("seconds", 0))
            elif what == "hang":
                st.hang = bool(body.get("on", True))
            elif what == "clear-requests":
                st.requests = []
            else:
                return self.send_json(404, {"error": what})
            st.cv.notify_all()
        self.send_json(200, {})

    def do_GET(self):
        st = self.state
        url = urllib.parse.urlparse(self.path)
        if url.path == "/_control/requests":
            with st.cv:
                return self.send_json(200, {"requests": list(st.requests)})
        if url.path == "/_control/patches":
            with st.cv:
                return self.send_json(200, {"patches": [{"path": p, "body": b}
                                                        for p, b in st.patches]})
        with st.cv:
            st.requests.append("GET " + self.path)
        if not self.authorized():
            return
        if self.single("GET", url.path):
            return
        parts = url.path.strip("/").split("/")
        if len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
            return self.pods_in(parts[3], urllib.parse.parse_qs(url.query))
        if url.path not in RESOURCES or RESOURCES[url.path][0] in st.unserved:
            return self.send_json(404, status(404, "NotFound", "the server could not find the "
                                                               "requested resource"))
        resource, kind, api = RESOURCES[url.path]
        if self.fault(resource):
            return
        q = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        if q.get("watch") in ("1", "true"):
            return self.watch(resource, kind, api, q)
        limit = int(q.get("limit", "0") or 0)
        start = int(q.get("continue", "0") or 0)
        with st.cv:
            items = sorted(st.objects[resource].items())
            rv = st.rv
            expire = q.get("continue") and st.expire_continue.get(resource, 0) > 0
            if expire:
                st.expire_continue[resource] -= 1
        if expire:
            # What the API server answers when the revision of a paged list
            # has been compacted (k8s.io/apiserver, storage/etcd3).
            body = status(410, "Expired",
                          "The provided continue parameter is too old to display a consistent "
                          "list result. You can start a new list without the continue "
                          "parameter, or use the continue token in this response to retrieve "
                          "the remainder of the results. Continuing with the provided token "
                          "results in an inconsistent list - objects that were created, "
                          "modified, or deleted between the time the first chunk was returned "
                          "and now may show up in the list.")
            body["metadata"]["continue"] = str(start)
            return self.send_json(410, body)
        page = items[start:start + limit] if limit else items[start:]
        cont = str(start + limit) if limit and start + limit < len(items) else ""
        out_items = []
        for _, obj in page:
            o = dict(obj)
            if resource not in CUSTOM:
                o.pop("kind", None)
                o.pop("apiVersion", None)
            out_items.append(o)
        self.send_json(200, {"kind": kind + "List", "apiVersion": api,
                             "metadata": {"resourceVersion": str(rv), "continue": cont},
                             "items": out_items})

    def pods_in(self, ns, query):
        want = dict(kv.split("=", 1) for kv in query.get("labelSelector", [""])[0].split(",") if kv)
        with self.state.cv:
            items = [dict(o) for _, o in sorted(self.state.objects["pods"].items())
                     if o.get("metadata", {}).get("namespace") == ns and
                     all(o["metadata"].get("labels", {}).get(k) == v for k, v in want.items())]
            rv = self.state.rv
        for o in items:
            o.pop("kind", None)
            o.pop("apiVersion", None)
        self.send_json(200, {"kind": "PodList", "apiVersion": "v1",
                             "metadata": {"resourceVersion": str(rv)}, "items": items})

    def fault(self, resource):
        """A hang, a delay or a failure set by /_control; True when the request is answered
        (or dropped) here."""
        st = self.state
        with st.cv:
            hang, delay = st.hang, st.slow
            fail = st.fail.get(resource) or st.fail.get("*")
            if fail and fail["count"] > 0:
                fail["count"] -= 1
            else:
                fail = None
        if hang:
            with st.cv:
                while st.hang:
                    st.cv.wait(0.2)
            self.close_connection = True  # a hung request never gets an answer
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return True
        if delay:
            time.sleep(delay)
        if fail:
            code = fail["status"]
            reason = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}.get(code, "Failure")
            headers = [("Retry-After", str(fail["retry_after"]))] if fail["retry_after"] is not None else []
            self.send_json(code, status(code, reason, f"injected {code}"), headers)
            return True
        return False

    def do_PATCH(self):
        st = self.state
        url = urllib.parse.urlparse(self.path)
        with st.cv:
            st.requests.append("PATCH " + self.path)
        n = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(n)
        if not self.authorized():
            return
        # /apis/G/V/namespaces/NS/PLURAL/NAME/status
        parts = url.path.split("/")
        if len(parts) != 9 or parts[1] != "apis" or parts[4] != "namespaces" or parts[8] != "status":
            return self.send_json(404, status(404, "NotFound", "not found"))
        collection = "/".join(parts[:4] + [parts[6]])
        if collection not in RESOURCES or RESOURCES[collection][0] not in CUSTOM:
            return self.send_json(404, status(404, "NotFound", "not found"))
        if self.headers.get("Content-Type") != "application/merge-patch+json":
            return self.send_json(415, status(415, "UnsupportedMediaType",
                                              "the body of the request was in an unknown format"))
        body = json.loads(raw or b"{}")
        with st.cv:
            st.patches.append((url.path, body))
        obj = st.patch_status(RESOURCES[collection][0], parts[5], parts[7], body)
        if obj is None:
            return self.send_json(404, status(404, "NotFound", f"{parts[7]} not found"))
        self.send_json(200, obj)

    def chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def watch(self, resource, kind, api, q):
        st = self.state
        since = int(q.get("resourceVersion", "0") or 0)
        timeout = float(q.get("timeoutSeconds", "300"))
        bookmarks = q.get("allowWatchBookmarks") == "true"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.time() + timeout
        last_bookmark = time.time()
        with st.cv:
            cut_gen, bad_gen = st.cut_generation, st.malformed_generation
            if since and since < st.compacted:
                expired = True
            else:
                expired = False
        try:
            if expired:
                ev = {"type": "ERROR", "object": status(
                    410, "Expired", f"too old resource version: {since} ({st.compacted})")}
                self.chunk(json.dumps(ev).encode() + b"\n")
                self.chunk(b"")
                return
            sent = since
            while time.time() < deadline:
                with st.cv:
                    if st.hang:  # a hung server sends nothing at all, nor ends the watch
                        st.cv.wait(0.1)
                        deadline = max(deadline, time.time() + 1)
                        continue
                    pending = [e for e in st.history if e[0] > sent and e[1] == resource]
                    if not pending and st.cut_generation == cut_gen and \
                            st.malformed_generation == bad_gen:
                        st.cv.wait(0.1)
                        pending = [e for e in st.history if e[0] > sent and e[1] == resource]
                    cut = st.cut_generation != cut_gen
                    bad = st.malformed_generation != bad_gen
                    bad_gen = st.malformed_generation
                    rv_now = st.rv
                if bad:
                    self.chunk(b'{"type": "ADDED", "object": {not json at all\n')
                for rv, _, typ, obj in pending:
                    line = json.dumps({"type": typ, "object": obj}).encode() + b"\n"
                    if cut:
                        # Half an event, then the connection drops.
                        self.chunk(line[: len(line) // 2])
                        raise ConnectionAbortedError
                    self.chunk(line)
                    sent = rv
                if cut:
                    raise ConnectionAbortedError
                with st.cv:
                    gone = resource in st.unserved and \
                        not [e for e in st.history if e[0] > sent and e[1] == resource]
                if gone:
                    break
                if bookmarks and time.time() - last_bookmark >= st.bookmark_interval:
                    last_bookmark = time.time()
                    sent = max(sent, rv_now)
                    ev = {"type": "BOOKMARK", "object": {
                        "kind": kind, "apiVersion": api,
                        "metadata": {"resourceVersion": str(sent)}}}
                    self.chunk(json.dumps(ev).encode() + b"\n")
            self.chunk(b"")
        except (ConnectionAbortedError, BrokenPipeError, ConnectionResetError, ssl.SSLError):
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.close_connection = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--bookmark-interval", type=float, default=1.0)
    args = ap.parse_args()
    Handler.state = State(args.token, args.bookmark_interval)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
