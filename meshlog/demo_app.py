"""The demo's app and traffic client: ``meshlog demo-app`` and ``meshlog demo-client``.

- ``DemoApp``: a threaded HTTP/1.1 app (keep-alive) that answers every GET
  with ``{"service", "instance", "version", "path"}`` as JSON, except
  ``GET /healthz``: ``200 ok`` while healthy, ``503`` once failed.
  ``POST /admin/fail`` makes the instance sick (every request then gets 503,
  the health check included); ``POST /admin/recover`` heals it. The demo and
  tests flip ``failing`` in-process instead.
- ``KeepAliveClient``: one persistent connection that re-sends a request once
  only when a *reused* idle connection turned out closed by the server.
- ``demo-client``: calls its sidecar's outbound port at a steady rate naming
  the destination service in the Host header, and prints one JSON line per
  report interval (requests, errors, counts by version and by instance).

Invariants: ``DemoApp.served`` counts every request answered 200 by the app;
a failing app never answers 200. Nothing here knows about Kafka or Envoy.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from meshlog import argtypes

HEALTH_PATH = "/healthz"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive by default
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms Nagle/delayed-ACK stall

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        app: DemoApp = self.server.app  # type: ignore[attr-defined]
        if app.failing:
            with app.lock:
                app.refused += 1
            self._reply(503, b"instance is failing\n", "text/plain")
            return
        if self.path == HEALTH_PATH:
            self._reply(200, b"ok\n", "text/plain")
            return
        body = json.dumps({"service": app.service, "instance": app.instance_id, "version": app.version,
                           "path": self.path}).encode()
        with app.lock:
            app.served += 1
        self._reply(200, body)

    def do_POST(self) -> None:  # noqa: N802
        app: DemoApp = self.server.app  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path == "/admin/fail":
            app.failing = True
        elif self.path == "/admin/recover":
            app.failing = False
        else:
            self._reply(404, b"POST /admin/fail or /admin/recover\n", "text/plain")
            return
        self._reply(200, json.dumps({"instance": app.instance_id, "failing": app.failing}).encode())

    def log_message(self, *args) -> None:  # request lines would drown the demo's own output
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:
        # a client (Envoy, a health checker) closing its connection is routine, not a traceback on stderr
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class DemoApp:
    def __init__(self, instance_id: str, version: str = "v1", service: str = "app", port: int = 0,
                 listen: str = "127.0.0.1"):
        self.instance_id = instance_id
        self.version = version
        self.service = service
        self.failing = False
        self.lock = threading.Lock()
        self.served = 0
        self.refused = 0
        self._server = _Server((listen, port), _Handler)
        self._server.app = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> "DemoApp":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"app-{self.instance_id}", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "DemoApp":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class KeepAliveClient:
    """One keep-alive HTTP/1.1 connection to ``127.0.0.1:port`` (not thread-safe: one per thread)."""

    def __init__(self, port: int, timeout: float = 5.0, host: str = "127.0.0.1"):
        self.port = port
        self.address = host
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._reused = False
        self.reconnects = 0  # idle keep-alive connections found closed by the server (request re-sent)

    def get(self, host: str, path: str = "/") -> tuple[int, bytes]:
        """GET once. Only a *reused* connection that the server closed while idle (no response byte read)
        is retried, once, on a new connection — what every keep-alive client does; any other error raises."""
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.address, self.port, timeout=self.timeout)
                self._reused = False
            try:
                self._conn.request("GET", path, headers={"Host": host})
                response = self._conn.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                reused = self._reused
                self.close()
                if attempt or not reused:
                    raise
                self.reconnects += 1
                continue
            self._reused = True
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            return response.status, body
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def classify(status: int, body: bytes) -> tuple[bool, str, str]:
    """(ok, version, instance) of one response; a non-200 is (False, "", "HTTP <status>: <start of body>")."""
    if status != 200:
        detail = body[:60].decode(errors="replace").strip()
        return False, "", f"HTTP {status}" + (f": {detail}" if detail else "")
    try:
        doc = json.loads(body)
        return True, str(doc.get("version", "?")), str(doc.get("instance", "?"))
    except ValueError:
        return False, "", "not JSON"


# ---------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    app = subparsers.add_parser("demo-app", help="the demo's HTTP app (answers with its version; /healthz)",
                                description="An HTTP app for the demo: every GET answers JSON naming the service, "
                                "instance and version; GET /healthz answers 200 until POST /admin/fail, "
                                "after which every request gets 503 until POST /admin/recover.")
    app.add_argument("--service", required=True, help="service name, e.g. reviews")
    app.add_argument("--instance-id", required=True, help="instance id, e.g. reviews-v1")
    app.add_argument("--version", default="v1", help="version reported in each answer (default v1)")
    app.add_argument("--port", type=argtypes.port, default=9080, help="port to listen on (default 9080)")
    app.add_argument("--listen", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    app.set_defaults(func=run_app)

    client = subparsers.add_parser("demo-client", help="steady traffic through a sidecar, reporting the split",
                                   description="Sends GETs to 127.0.0.1:PORT (the local sidecar's outbound "
                                   "port) with Host: HOST at a steady rate and prints one JSON line per report "
                                   "interval: requests, errors, counts by version and by instance.")
    client.add_argument("--port", type=argtypes.port, required=True, help="the local sidecar's outbound port")
    client.add_argument("--host", required=True, help="the destination service, sent as the Host header")
    client.add_argument("--rate", type=argtypes.number(0.01, 10_000), default=10.0, help="requests per second (default 10)")
    client.add_argument("--duration", type=argtypes.seconds(0, 10**7, low_inclusive=True), default=0.0, help="seconds to run; 0 = until stopped (default)")
    client.add_argument("--report-every", type=argtypes.seconds(0, 86_400), default=5.0, help="seconds between reports (default 5)")
    client.set_defaults(func=run_client)


def run_app(args: argparse.Namespace) -> int:
    try:
        app = DemoApp(args.instance_id, args.version, args.service, args.port, args.listen)
    except OSError as exc:
        print(f"demo-app: cannot listen on {args.listen}:{args.port}: {exc}", flush=True)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=app.stop, daemon=True).start())
    print(json.dumps({"service": app.service, "instance": app.instance_id, "version": app.version,
                      "listen": args.listen, "port": app.port}), flush=True)
    try:
        app.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def run_client(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client = KeepAliveClient(args.port, timeout=5)
    gap = 1.0 / args.rate
    started = time.monotonic()
    next_report = started + args.report_every
    window = {"requests": 0, "errors": 0, "by_version": collections.Counter(), "by_instance": collections.Counter()}
    next_send = started
    try:
        while not stop.is_set():
            now = time.monotonic()
            if args.duration and now - started >= args.duration:
                break
            if now >= next_report:
                print(json.dumps({"t": round(time.time(), 3), **window}), flush=True)
                window = {"requests": 0, "errors": 0, "by_version": collections.Counter(),
                          "by_instance": collections.Counter()}
                next_report += args.report_every
            if now < next_send:
                stop.wait(next_send - now)
                continue
            next_send += gap
            window["requests"] += 1
            try:
                ok, version, instance = classify(*client.get(args.host))
            except (OSError, http.client.HTTPException) as exc:
                ok, version, instance = False, "", type(exc).__name__
                client.close()
            if ok:
                window["by_version"][version] += 1
                window["by_instance"][instance] += 1
            else:
                window["errors"] += 1
                window["by_instance"][instance] += 1
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    if window["requests"]:
        print(json.dumps({"t": round(time.time(), 3), **window}), flush=True)
    return 0
