"""One health probe: an HTTP GET or a TCP connect, bounded in time (asyncio).

Invariants:
- ``probe`` never raises for a network outcome and never takes longer than
  ``timeout`` (plus scheduling noise): every failure — refused, reset,
  timeout, a malformed or non-2xx/3xx answer — becomes
  ``ProbeResult(ok=False, detail=...)`` whose detail says what failed, e.g.
  ``HTTP 503 on /healthz`` or ``connection refused by 127.0.0.1:15006``.
- HTTP passes on a 2xx or 3xx status line; only the status line is needed,
  the body is not read. Requests say ``Connection: close`` and carry a
  ``User-Agent`` naming the checker, so a target can tell who probed it.
- TCP (protocols ``tcp`` and ``grpc``) passes when the connection is
  accepted; it is closed at once.
- With ``tls`` (the target's sidecar requires a mesh client certificate:
  ``projector.mesh_tls``) the probe speaks TLS presenting the checker's
  certificate, and a failed handshake is a failed probe naming why. Every
  inbound listener admits ``spiffe://<domain>/checker/...``.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    detail: str


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (OSError, asyncio.CancelledError):  # the peer may already have reset it
        pass


def mesh_client_context(cert_file: str, key_file: str, ca_file: str) -> ssl.SSLContext:
    """TLS to a sidecar's inbound listener: our certificate, theirs chaining to the mesh root.

    Sidecar certificates name a SPIFFE id (URI SAN), not a host name: the chain
    is verified, the host name is not.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.check_hostname = False
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


async def _tcp(host: str, port: int, tls: ssl.SSLContext | None = None) -> ProbeResult:
    _reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    await _close(writer)
    return ProbeResult(True, f"TCP connect to {_where(host, port)} accepted")


async def _http(host: str, port: int, path: str, user_agent: str, tls: ssl.SSLContext | None = None) -> ProbeResult:
    reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    try:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {_where(host, port)}\r\nUser-Agent: {user_agent}\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode("latin-1"))
        await writer.drain()
        line = await reader.readline()
    finally:
        await _close(writer)
    if not line:
        return ProbeResult(False, f"connection closed without an answer on {path}")
    parts = line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return ProbeResult(False, f"not an HTTP answer on {path}: {line[:40]!r}")
    status = int(parts[1])
    return ProbeResult(200 <= status < 400, f"HTTP {status} on {path}")


async def probe(
    host: str,
    port: int,
    protocol: str,
    *,
    http_path: str = "/healthz",
    timeout: float = 1.0,
    user_agent: str = "meshlog-healthcheck",
    tls: ssl.SSLContext | None = None,
) -> ProbeResult:
    """Probe ``host:port``: HTTP GET ``http_path`` for ``http``, a TCP connect for ``tcp``/``grpc``."""
    where = _where(host, port)
    try:
        if protocol == "http":
            return await asyncio.wait_for(_http(host, port, http_path, user_agent, tls), timeout)
        return await asyncio.wait_for(_tcp(host, port, tls), timeout)
    except asyncio.TimeoutError:
        return ProbeResult(False, f"no answer from {where} within {timeout:g}s")
    except ConnectionRefusedError:
        return ProbeResult(False, f"connection refused by {where}")
    except ConnectionResetError:
        return ProbeResult(False, f"connection reset by {where}")
    except ssl.SSLError as exc:
        return ProbeResult(False, f"TLS handshake with {where} failed: {exc.reason or type(exc).__name__}")
    except OSError as exc:
        return ProbeResult(False, f"{where}: {exc.strerror or type(exc).__name__}")
