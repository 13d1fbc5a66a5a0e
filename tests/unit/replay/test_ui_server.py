"""The console's HTTP API over a fake console: parameters checked first, errors named, the page locked down."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from replay.cli import main as replay_main
from replay.engine import BrokerDown, NotFound, OutOfRange
from replay.ui.server import HostGuard, build_app, hosts_for

STATIC = Path(__file__).resolve().parents[3] / "replay" / "ui" / "static"
HOSTILE = "<script>alert(1)</script>\u2028\"'&"


class FakeConsole:
    """Records what it was asked; answers with canned documents or raises what the test set."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.raise_: Exception | None = None
        self.index = type("I", (), {"first_ms": 1, "last_ms": 2, "count": 2})()
        self.stats: dict = {}

    def _answer(self, *call) -> dict:
        self.calls.append(call)
        if self.raise_ is not None:
            raise self.raise_
        return {"call": list(call), "hostile": HOSTILE}

    async def refresh(self, force: bool = False) -> None:
        pass

    async def timeline(self, from_ms, to_ms, buckets):
        return self._answer("timeline", from_ms, to_ms, buckets)

    async def mesh(self, at_ms):
        return self._answer("mesh", at_ms)

    async def node(self, at_ms, node):
        return self._answer("node", at_ms, node)

    async def diff(self, from_ms, to_ms, node):
        return self._answer("diff", from_ms, to_ms, node)

    async def events(self, from_ms, to_ms, *, kind, service, limit):
        return self._answer("events", from_ms, to_ms, kind, service, limit)


async def client_for(console: FakeConsole, guard: HostGuard | None = None) -> TestClient:
    client = TestClient(TestServer(build_app(console, guard)))
    await client.start_server()
    return client


async def get(path: str, console: FakeConsole | None = None, **kw):
    console = console or FakeConsole()
    client = await client_for(console)
    try:
        res = await client.get(path, **kw)
        return res.status, orjson.loads(await res.read()), console, res.headers
    finally:
        await client.close()


async def test_good_requests_reach_the_console_with_parsed_instants():
    status, doc, console, headers = await get("/api/diff?from=@1000&to=2020-01-01T00:00:01Z&node=web-1")
    assert status == 200 and console.calls == [("diff", 1000, 1577836801000, "web-1")]
    assert headers["Content-Type"].startswith("application/json")
    assert doc["hostile"] == HOSTILE  # JSON carries log strings intact; the page shows them as text
    status, doc, console, _ = await get("/api/timeline?from=@0&to=@99")
    assert console.calls == [("timeline", 0, 99, 200)]
    status, doc, console, _ = await get("/api/events?from=@5&to=@6&kind=dead_letter&limit=3")
    assert console.calls == [("events", 5, 6, "dead_letter", None, 3)]


@pytest.mark.parametrize("path, field", [
    ("/api/mesh?at=yesterday-ish", "at"),
    ("/api/mesh", "at"),
    ("/api/mesh?at=@1&at=@2", "at"),
    ("/api/mesh?at=@1&nod=web", "nod"),
    ("/api/node?at=@1", "node"),
    ("/api/node?at=@1&node=" + "n" * 300, "node"),
    ("/api/node?at=@1&node=a%0Ab", "node"),
    ("/api/diff?from=@5&to=@4", "from"),
    ("/api/timeline?from=@0&to=@9&buckets=0", "buckets"),
    ("/api/timeline?from=@0&to=@9&buckets=ten", "buckets"),
    ("/api/timeline?from=@0&to=@9&buckets=999999", "buckets"),
    ("/api/events?from=@0&to=@9&limit=-1", "limit"),
    ("/api/mesh?at=@99999999999999999999", "at"),
])
async def test_a_bad_parameter_is_a_400_naming_it_and_nothing_is_asked(path, field):
    status, doc, console, _ = await get(path)
    assert status == 400, doc
    assert doc["field"] == field and doc["error"].startswith(f"{field}: ")
    assert console.calls == []


@pytest.mark.parametrize("exc, status", [
    (OutOfRange("at 2001 is before the first event"), 416),
    (NotFound("node 'x' has no registered instance"), 404),
    (BrokerDown("Kafka at h:1 did not answer"), 503),
])
async def test_engine_errors_map_to_statuses_with_their_message(exc, status):
    console = FakeConsole()
    console.raise_ = exc
    got, doc, _, _ = await get("/api/node?at=@1&node=x", console)
    assert got == status and str(exc) in doc["error"]


async def test_a_foreign_host_header_is_refused():
    console = FakeConsole()
    client = await client_for(console, HostGuard(hosts_for("127.0.0.1", 8123)))
    try:
        res = await client.get("/api/mesh?at=@1", headers={"Host": "attacker.example:8123"})
        assert res.status == 403 and console.calls == []
        res = await client.get("/api/mesh?at=@1", headers={"Host": "localhost:8123"})
        assert res.status == 200
    finally:
        await client.close()


def test_hosts_for_every_address_is_unguarded():
    assert hosts_for("0.0.0.0", 80) is None
    assert "127.0.0.1:80" in hosts_for("localhost", 80)


async def test_the_page_is_served_with_a_policy_that_forbids_inline_script():
    client = await client_for(FakeConsole())
    try:
        res = await client.get("/?at=@1&node=<b>")
        html = await res.text()
        assert res.status == 200 and "script-src 'self'" in res.headers["Content-Security-Policy"]
        assert "'unsafe-inline'" not in res.headers["Content-Security-Policy"]
        assert res.headers["X-Content-Type-Options"] == "nosniff"
        assert "<b>" not in html  # the page is static: the query string is read by the script, as text
        res = await client.get("/static/app.js")
        assert res.status == 200 and res.headers["Content-Type"].startswith("text/javascript")
        assert (await client.get("/api/mesh?at=@1", allow_redirects=False)).status == 200
        assert (await client.post("/api/mesh?at=@1")).status == 405  # read-only
    finally:
        await client.close()


def test_the_page_never_turns_strings_into_html():
    """Log strings reach the DOM through textContent only: no HTML-parsing sink in the script."""
    js = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js, sink
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)  # no inline script for the CSP to allow
    assert not re.search(r"\son[a-z]+\s*=", html, re.I)  # no inline event handlers either


@pytest.mark.parametrize("port", ["70000", "-1", "http", "65536"])
def test_replay_ui_refuses_a_port_outside_1_to_65535(port, capsys):
    with pytest.raises(SystemExit) as exited:
        replay_main(["ui", f"--port={port}"])
    assert exited.value.code == 2
    assert "--port" in capsys.readouterr().err
