"""Small HTTP apps for data-plane tests and benchmarks, and a keep-alive client.

- ``App``: a threaded ``http.server`` app (HTTP/1.1, keep-alive) that answers
  every GET with ``{"service", "instance", "version", "path"}`` as JSON and
  counts the requests it served. Run it in-process (``App(...).start()``) or
  as a process (``python -m tests.support.apps --port P --instance I``).
- ``serve_fast``: an asyncio HTTP/1.1 responder with a fixed tiny body, for
  benchmarks where the upstream's own cost should be small and steady
  (``python -m tests.support.apps --fast --port P``).
- ``KeepAliveClient``: one persistent connection (``http.client``) that
  reconnects once when the server closed it; returns (status, body).

Everything binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive by default
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms Nagle/delayed-ACK stall

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        app: App = self.server.app  # type: ignore[attr-defined]
        body = json.dumps({"service": app.service, "instance": app.instance_id, "version": app.version,
                           "path": self.path}).encode()
        with app.lock:
            app.served += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class App:
    def __init__(self, instance_id: str, version: str = "v1", service: str = "app", port: int = 0):
        self.instance_id = instance_id
        self.version = version
        self.service = service
        self.lock = threading.Lock()
        self.served = 0
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.app = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> "App":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"app-{self.instance_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "App":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class KeepAliveClient:
    """One keep-alive HTTP/1.1 connection to ``127.0.0.1:port`` (not thread-safe: one per thread)."""

    def __init__(self, port: int, timeout: float = 5.0):
        self.port = port
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._reused = False
        self.reconnects = 0  # idle keep-alive connections found closed by the server (request re-sent)

    def get(self, host: str, path: str = "/") -> tuple[int, bytes]:
        """GET once. Only a *reused* connection that the server closed while idle (no response byte read)
        is retried, once, on a new connection — what every keep-alive client does; any other error raises."""
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
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


# ---------------------------------------------------------------- fast asyncio responder (benchmarks)

FAST_BODY = b'{"ok":true}'
_FAST_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                  + str(len(FAST_BODY)).encode() + b"\r\n\r\n" + FAST_BODY)


async def _fast_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:].strip())
            if length:
                await reader.readexactly(length)
            writer.write(_FAST_RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def serve_fast(port: int, ready: "callable | None" = None) -> None:
    server = await asyncio.start_server(_fast_conn, "127.0.0.1", port, backlog=256)
    if ready is not None:
        ready(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="a small HTTP app on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--instance", default="app-1")
    parser.add_argument("--version", default="v1")
    parser.add_argument("--service", default="app")
    parser.add_argument("--fast", action="store_true", help="asyncio responder with a fixed body (benchmarks)")
    args = parser.parse_args()
    if args.fast:
        asyncio.run(serve_fast(args.port, ready=lambda p: print(json.dumps({"port": p}), flush=True)))
        return
    app = App(args.instance, args.version, args.service, args.port)
    print(json.dumps({"port": app.port}), flush=True)
    app._server.serve_forever()


if __name__ == "__main__":
    main()
