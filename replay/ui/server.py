"""The console's HTTP side: a read-only JSON API and one static page (aiohttp).

Endpoints (GET only; every answer is JSON, errors are ``{"error", "field"?}``):

- ``/api/timeline?from=T&to=T[&buckets=N]``  event counts per bucket by kind and service (+ the events when few)
- ``/api/mesh?at=T``                          ``replay at --at T --json``
- ``/api/node?at=T&node=N``                   ``replay at --at T --node N --full --json``
- ``/api/diff?from=T&to=T[&node=N]``          ``replay diff --from --to [--node] --json``
- ``/api/events?from=T&to=T[&kind=K][&service=S][&limit=N]``  the records behind the marks
- ``/api/info``                               the log's first/last event and the index size

Invariants:
- Parameters are parsed before any Kafka read; a bad one answers 400 naming
  the field; an instant outside the log 416, an unknown node 404, a broker
  that does not answer 503. Unknown parameters are refused (a typo in a
  shared link must not silently show another view).
- The page renders every string from the log with ``textContent`` (the log is
  attacker-influenced); the server adds a Content-Security-Policy without
  inline scripts, so markup smuggled into the log cannot run even if it were
  ever inserted as HTML. JSON is produced by orjson (strings escaped).
- Requests whose ``Host`` is not the address the console listens on are
  refused (a web page elsewhere cannot reach it through DNS rebinding).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from importlib import resources
from typing import Awaitable, Callable

import orjson
from aiohttp import web
from aiokafka.errors import KafkaError

from replay.engine import BrokerDown, NotFound, OutOfRange, ReplayError
from replay.source import ReadStalled
from replay.timeparse import BadTime, parse_instant, to_ms
from replay.ui.console import EVENTS_LIMIT, Console
from replay.ui.timeline import MAX_BUCKETS

log = logging.getLogger(__name__)

MAX_TEXT = 256  # node, service and kind parameters
STATIC = resources.files("replay.ui") / "static"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class BadParam(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


# ---------------------------------------------------------------- parameters (pure)


def _only(query, allowed: tuple[str, ...]) -> None:
    for name in query.keys():
        if name not in allowed:
            raise BadParam(name, f"unknown parameter (this endpoint takes {', '.join(allowed)})")
    for name in allowed:
        if len(query.getall(name, [])) > 1:
            raise BadParam(name, "given more than once")


def instant(query, name: str, now: datetime, *, default: str | None = None) -> int:
    text = query.get(name, default)
    if text is None or text == "":
        raise BadParam(name, "missing (an instant: ISO-8601, @epoch-ms, -15m, now)")
    if len(text) > 64:
        raise BadParam(name, "too long to be an instant")
    try:
        return to_ms(parse_instant(text, now))
    except BadTime as exc:
        raise BadParam(name, str(exc)) from None
    except (ValueError, OverflowError, OSError):
        raise BadParam(name, f"not a representable instant: {text[:64]!r}") from None


def integer(query, name: str, *, default: int, lo: int, hi: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text, 10)
    except ValueError:
        raise BadParam(name, f"not an integer: {text[:32]!r}") from None
    if not lo <= value <= hi:
        raise BadParam(name, f"must be {lo}..{hi}, got {value}")
    return value


def name_param(query, name: str, *, required: bool = False) -> str | None:
    text = query.get(name)
    if text is None or text == "":
        if required:
            raise BadParam(name, "missing")
        return None
    if len(text) > MAX_TEXT or not text.isprintable():
        raise BadParam(name, f"must be at most {MAX_TEXT} printable characters")
    return text


def window(query, now: datetime) -> tuple[int, int]:
    from_ms, to_ms_ = instant(query, "from", now), instant(query, "to", now)
    if from_ms > to_ms_:
        raise BadParam("from", "is after to")
    return from_ms, to_ms_


# ---------------------------------------------------------------- the app


def _json(doc: dict, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json",
                        headers=SECURITY_HEADERS)


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    doc = {"error": message[:2000], "status": status}
    if field is not None:
        doc["field"] = field
    return _json(doc, status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HostGuard:
    """Which ``Host`` headers are answered (None: any). Set once the port is known (``--port 0``)."""

    def __init__(self, allowed: frozenset[str] | None = None) -> None:
        self.allowed = allowed


def build_app(console: Console, hosts: HostGuard | None = None) -> web.Application:
    hosts = hosts or HostGuard()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if hosts.allowed is not None and request.host not in hosts.allowed:
            return _error(403, "this console answers only on the address it listens on (Host header refused)")
        try:
            return await handler(request)
        except BadParam as exc:
            return _error(400, str(exc), exc.field)
        except OutOfRange as exc:
            return _error(416, str(exc))
        except NotFound as exc:
            return _error(404, str(exc))
        except (BrokerDown, ReadStalled, KafkaError) as exc:
            return _error(503, f"Kafka did not answer: {type(exc).__name__}: {exc}")
        except ReplayError as exc:
            return _error(500, str(exc))

    now = lambda: datetime.now(timezone.utc)  # noqa: E731

    async def timeline(request: web.Request) -> web.Response:
        q = request.query
        _only(q, ("from", "to", "buckets"))
        from_ms, to_ms_ = window(q, now())
        buckets = integer(q, "buckets", default=200, lo=1, hi=MAX_BUCKETS)
        return _json(await console.timeline(from_ms, to_ms_, buckets))

    async def mesh(request: web.Request) -> web.Response:
        q = request.query
        _only(q, ("at",))
        return _json(await console.mesh(instant(q, "at", now())))

    async def node(request: web.Request) -> web.Response:
        q = request.query
        _only(q, ("at", "node"))
        at_ms = instant(q, "at", now())
        return _json(await console.node(at_ms, name_param(q, "node", required=True)))

    async def diff(request: web.Request) -> web.Response:
        q = request.query
        _only(q, ("from", "to", "node"))
        from_ms, to_ms_ = window(q, now())
        return _json(await console.diff(from_ms, to_ms_, name_param(q, "node")))

    async def events(request: web.Request) -> web.Response:
        q = request.query
        _only(q, ("from", "to", "kind", "service", "limit"))
        from_ms, to_ms_ = window(q, now())
        return _json(await console.events(from_ms, to_ms_, kind=name_param(q, "kind"),
                                          service=name_param(q, "service"),
                                          limit=integer(q, "limit", default=EVENTS_LIMIT, lo=1, hi=5000)))

    async def info(request: web.Request) -> web.Response:
        _only(request.query, ())
        await console.refresh()
        idx = console.index
        return _json({"first_ms": idx.first_ms, "last_ms": idx.last_ms, "events": idx.count,
                      "now_ms": to_ms(now()), "stats": console.stats})

    def static(name: str) -> Handler:
        body = (STATIC / name).read_bytes()
        ctype = CONTENT_TYPES[name[name.rindex("."):]]

        async def handler(request: web.Request) -> web.Response:
            # the page's own state lives in the query string; the HTML is the same for every view
            return web.Response(body=body, headers={**SECURITY_HEADERS, "Content-Type": ctype})

        return handler

    app = web.Application(middlewares=[guard])
    app.router.add_get("/", static("index.html"))
    app.router.add_get("/static/app.js", static("app.js"))
    app.router.add_get("/static/app.css", static("app.css"))
    app.router.add_get("/api/timeline", timeline)
    app.router.add_get("/api/mesh", mesh)
    app.router.add_get("/api/node", node)
    app.router.add_get("/api/diff", diff)
    app.router.add_get("/api/events", events)
    app.router.add_get("/api/info", info)
    return app


def hosts_for(listen: str, port: int) -> frozenset[str] | None:
    """The Host header values a browser sends for this console (None, any, when bound to every address)."""
    if listen in ("0.0.0.0", "::", ""):
        return None
    names = {listen, f"[{listen}]" if ":" in listen else listen}
    if listen in ("127.0.0.1", "::1", "localhost"):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    return frozenset(f"{n}:{port}" for n in names)
