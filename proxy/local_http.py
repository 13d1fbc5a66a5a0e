"""A minimal HTTP/1.1 server on 127.0.0.1 for the sidecar's local endpoints (status, subscriptions).

Invariants:
- Binds 127.0.0.1 only: these endpoints are for the app and scripts on the same host.
- Reads the request line and at most 64 header lines, each within 5 s; a body is never read.
- One request per connection (``Connection: close``); the handler's reply is written whole.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Awaitable, Callable

# (method, path) -> (status, content type, body)
Handler = Callable[[str, str], Awaitable[tuple[int, str, bytes]]]

_LINE_TIMEOUT_S = 5
_MAX_HEADER_LINES = 64


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def serve(handler: Handler, port: int) -> asyncio.AbstractServer:
    """Serve ``handler`` on 127.0.0.1:``port`` (0 picks one: read it from the server's socket)."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), _LINE_TIMEOUT_S)
            for _ in range(_MAX_HEADER_LINES):
                if (await asyncio.wait_for(reader.readline(), _LINE_TIMEOUT_S)) in (b"\r\n", b"\n", b""):
                    break
            parts = line.decode("latin-1").split()
            if len(parts) >= 2:
                status, content_type, body = await handler(parts[0], parts[1])
            else:
                status, content_type, body = 400, "text/plain", b"bad request line\n"
            writer.write(f"HTTP/1.1 {status} {_phrase(status)}\r\nContent-Length: {len(body)}\r\n"
                         f"Content-Type: {content_type}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, OSError, ValueError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(connection, "127.0.0.1", port)
