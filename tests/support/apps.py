"""Small HTTP apps for data-plane tests and benchmarks, and a keep-alive client.

- ``App``: ``meshlog.demo_app.DemoApp``, a threaded ``http.server`` app
  (HTTP/1.1, keep-alive) that answers every GET with ``{"service",
  "instance", "version", "path"}`` as JSON and counts the requests it served. Run it in-process (``App(...).start()``) or
  as a process (``python -m tests.support.apps --port P --instance I``).
- ``serve_fast``: an asyncio HTTP/1.1 responder with a fixed tiny body, for
  benchmarks where the upstream's own cost should be small and steady
  (``python -m tests.support.apps --fast --port P``).
- ``KeepAliveClient``: ``meshlog.demo_app.KeepAliveClient``, one persistent
  connection that reconnects once when the server closed it.

Everything binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket

from meshlog.demo_app import DemoApp, KeepAliveClient  # noqa: F401 - re-exported for tests and benches


# The app and the client are the demo's own (one copy in the package); tests use them under these names.
App = DemoApp


# ---------------------------------------------------------------- fast asyncio responder (benchmarks)

FAST_BODY = b'{"ok":true}'
_FAST_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                  + str(len(FAST_BODY)).encode() + b"\r\n\r\n" + FAST_BODY)


async def read_message(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 message from ``reader``: its head is returned, its body (by Content-Length) read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:].strip())
    if length:
        await reader.readexactly(length)
    return head


async def _fast_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            await read_message(reader)
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
    app.serve_forever()


if __name__ == "__main__":
    main()
