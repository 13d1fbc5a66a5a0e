"""Story: `replay ui`, the incident console, shows the log's history the way `replay` does — in a real browser.

Real parts: the session's Kafka broker, the `replay ui` and `replay` CLIs as
subprocesses, and Debian's headless Chromium (installed by ``./dev setup``)
driven over the DevTools protocol. The history is the demo's mesh and canary
(tests/support/ui_history.py) under names unique to this run; the broker is
shared with other tests, so assertions about the timeline are scoped to
those names, and documents are compared whole with what `replay` prints at
the same instants. Screenshots of each view are kept under
build/test-artefacts/ui/.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from events.admin import ensure_topics
from tests.support.browser import Chromium, find_chromium
from tests.support.ui_history import HOSTILE, append_history, names

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
RUN = uuid.uuid4().hex[:6]
ARTEFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artefacts" / "ui"


@pytest.fixture(scope="module")
def history(kafka_bootstrap):
    asyncio.run(ensure_topics(kafka_bootstrap))
    marks = asyncio.run(append_history(kafka_bootstrap, RUN))
    return kafka_bootstrap, marks


@pytest.fixture(scope="module")
def console(history, tmp_path_factory):
    """A running `replay ui` over the history; yields its base URL."""
    bootstrap, _marks = history
    ready = tmp_path_factory.mktemp("ui") / "ready.json"
    proc = subprocess.Popen([str(BIN / "replay"), "ui", "--bootstrap", bootstrap, "--port", "0",
                             "--ready-file", str(ready)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (ready.exists() and ready.read_text().strip()):
        assert proc.poll() is None, f"replay ui exited {proc.returncode}: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "replay ui never became ready"
        time.sleep(0.1)
    url = json.loads(ready.read_text())["url"]
    assert url.startswith("http://127.0.0.1:")
    try:
        yield url.rstrip("/")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def api(base: str, path: str, **params) -> tuple[int, dict]:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=120) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def replay_json(bootstrap: str, *args: str) -> dict:
    proc = subprocess.run([str(BIN / "replay"), "--bootstrap", bootstrap, *args, "--json"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def _without_source(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "source"}


def between(marks: dict, a: str, b: str) -> int:
    return (marks[a] + marks[b]) // 2


# ---------------------------------------------------------------- the JSON API against `replay`


def test_the_mesh_node_and_diff_at_the_cursors_are_what_replay_prints(history, console):
    bootstrap, marks = history
    n = names(RUN)
    at = f"@{between(marks, 'canary-90-10', 'canary-50-50')}"
    status, mesh = api(console, "/api/mesh", at=at)
    assert status == 200
    printed = replay_json(bootstrap, "at", "--at", at)
    # the same mesh; the provenance ("source": snapshot, cut, undecodable records met) is reported by each
    # from its own path (the console answers from its cached rebuild) and may differ in form
    assert _without_source(mesh) == _without_source(printed)
    assert [mesh["source"][k] for k in ("events_folded", "events_total")] == \
        [printed["source"][k] for k in ("events_folded", "events_total")]
    rule = next(r for r in mesh["route_rules"] if r["host"] == n["reviews"])
    assert [d["weight"] for d in rule["routes"][0]["destinations"]] == [90, 10]

    status, node = api(console, "/api/node", at=at, node=n["node"])
    assert status == 200
    printed_node = replay_json(bootstrap, "at", "--at", at, "--node", n["node"], "--full", "--accepted")
    assert _without_source(node) == _without_source(printed_node)
    assert node["source"]["events_folded"] == printed_node["source"]["events_folded"]
    assert node["accepted"]["node"] == n["node"] and not node["accepted"]["connected"]  # no proxy ever connected

    b = f"@{marks['canary-100-0']}"
    status, diff = api(console, "/api/diff", **{"from": at, "to": b, "node": n["node"]})
    assert status == 200
    assert diff == replay_json(bootstrap, "diff", "--from", at, "--to", b, "--node", n["node"])
    assert any(c["type"] == "route_rule.upserted" for e in diff["changed"] for c in e["caused_by"])


def test_the_timeline_counts_the_history_by_kind_and_service(history, console):
    _bootstrap, marks = history
    n = names(RUN)
    lo, hi = marks["registered"] - 1000, marks["canary-100-0"]
    status, doc = api(console, "/api/timeline", **{"from": f"@{lo}", "to": f"@{hi}", "buckets": 50})
    assert status == 200
    services = {r["service"]: r["total"] for r in doc["by_service"]}
    assert services[n["reviews"]] == 9 and services[n["web"]] == 1
    mine = [p for p in doc["points"] if p["service"] in (n["reviews"], n["web"])]
    assert [p["kind"] for p in mine if p["kind"].startswith("route_rule")] == ["route_rule.upserted"] * 3
    status, events = api(console, "/api/events", **{"from": f"@{marks['unhealthy']}", "to": f"@{marks['healthy']}",
                                                     "service": n["reviews"]})
    assert status == 200
    assert [e["kind"] for e in events["events"]] == ["instance.health_changed:unhealthy",
                                                     "instance.health_changed:healthy"]
    assert {e["producer"] for e in events["events"]} == {HOSTILE}


def test_bad_input_is_a_clear_error(history, console):
    _bootstrap, marks = history
    status, doc = api(console, "/api/mesh", at="2001-01-01T00:00")
    assert status == 416 and "before the first event" in doc["error"]
    status, doc = api(console, "/api/node", at=f"@{marks['canary-100-0']}", node="no-such-node")
    assert status == 404 and "no-such-node" in doc["error"]
    status, doc = api(console, "/api/mesh", at="2099-01-01")
    assert status == 416 and "future" in doc["error"]


def test_a_port_in_use_is_refused_with_a_clear_message(history, console):
    bootstrap, _marks = history
    port = urllib.parse.urlsplit(console).port
    proc = subprocess.run([str(BIN / "replay"), "ui", "--bootstrap", bootstrap, "--port", str(port)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr


def test_the_demo_stack_starts_the_console_and_stops_it(history, tmp_path):
    from meshlog.demo.stack import DemoStack

    bootstrap, _marks = history
    stack = DemoStack(tmp_path, bootstrap=bootstrap, say=lambda _line: None)
    try:
        url = stack.start_console()
        status, info = api(url.rstrip("/"), "/api/info")
        assert status == 200 and info["events"] >= 10
    finally:
        stack.stop()
    assert stack.console.proc.poll() is not None


# ---------------------------------------------------------------- a real browser

WEIGHTS = """(() => {
  const rule = document.querySelector('[data-rule="%s"]');
  if (!rule || document.body.dataset.busy !== '0') return null;
  const out = {};
  for (const w of rule.querySelectorAll('.weight')) {
    out[w.dataset.destination] = [Number(w.dataset.weight), Math.round(w.querySelector('.bar').getBoundingClientRect().width)];
  }
  return out;
})()"""

X_OF = """(() => {
  const svg = document.querySelector('#timeline svg'); const r = svg.getBoundingClientRect();
  const left = 240, plotW = r.width - left - 10, span = timeline.to_ms - timeline.from_ms + 1;
  return {x: r.left + left + (%d - timeline.from_ms) / span * plotW, y: r.top + 14};
})()"""


@pytest.fixture(scope="module")
def chromium():
    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium is not installed: `./dev setup` installs it as root (apt-get install -y chromium)")
    return exe


async def _scrub_to(page, ms: int, *, shift: bool = False) -> None:
    await page.call("Input.dispatchMouseEvent", type="mouseMoved", x=1, y=1)
    at = await page.js(X_OF % ms)
    await page.click(at["x"], at["y"], shift=shift)
    await asyncio.sleep(0.2)
    await page.settle()


def test_the_console_in_a_real_browser(history, console, chromium):
    asyncio.run(_browse(history, console, chromium))


async def _browse(history, base: str, exe: str) -> None:
    _bootstrap, marks = history
    n = names(RUN)
    reviews = n["reviews"]
    v1, v2 = f"{reviews}|v1", f"{reviews}|v2"
    window = {"from": f"@{marks['registered'] - 300}", "to": f"@{marks['canary-100-0'] + 300}"}
    shared = f"{base}/?" + urllib.parse.urlencode(
        {**window, "at": f"@{between(marks, 'canary-90-10', 'canary-50-50')}", "node": n["node"]})
    async with Chromium(exe) as browser:
        page = await browser.page()

        # a shared link opens the same view: the mesh at the cursor with its instances and the 90/10 weight bars
        await page.open(shared)
        weights = await page.wait_for(WEIGHTS % reviews)
        assert {k: w for k, (w, _px) in weights.items()} == {v1: 90, v2: 10}
        assert weights[v1][1] > 5 * weights[v2][1] > 0  # the bars are drawn to scale
        instances = await page.js(f"[...document.querySelectorAll('[data-service=\"{reviews}\"] [data-instance]')]"
                                  ".map(e => e.textContent)")
        assert instances == ["reviews-v1-a", "reviews-v1-b", "reviews-v2-a"]
        assert await page.js(f"!!document.querySelector('#node-panel [data-resource=\"{v1}\"]')")
        await page.screenshot(ARTEFACTS / "1-shared-link.png")

        # scrub the cursor across the canary rule's second edit: the bars follow
        await _scrub_to(page, between(marks, "canary-50-50", "unhealthy"))
        weights = await page.wait_for(WEIGHTS % reviews)
        assert {k: w for k, (w, _px) in weights.items()} == {v1: 50, v2: 50}
        assert "at=" in await page.js("location.search")
        await page.screenshot(ARTEFACTS / "2-scrubbed-50-50.png")

        # a node: its resources, and the events that last changed each one
        await page.click_selector(f"button.node-link[data-node=\"{n['node']}\"]")
        await page.settle()
        await page.click_selector("#load-causes")
        cause = await page.wait_for(
            f"(document.querySelector('[data-causes-for$=\"|{v2}\"]') || {{}}).textContent")
        assert "last changed by" in cause and "route_rule.upserted" in cause
        assert "meshlog.sync" in await page.js("document.querySelector('#accepted h3').textContent")
        await page.screenshot(ARTEFACTS / "3-node.png")

        # a diff: cursor B after the rollback; each change with its causing events
        await _scrub_to(page, marks["canary-100-0"] + 100, shift=True)
        rows = await page.wait_for("[...document.querySelectorAll('#diff tr[data-change]')].map(r => r.textContent)")
        assert any("route_rule.upserted" in r for r in rows)
        await page.screenshot(ARTEFACTS / "4-diff.png")

        # a string from the log with markup in it shows as text and runs nothing
        await page.open(f"{base}/?" + urllib.parse.urlencode(
            {**window, "at": f"@{marks['healthy']}"}))
        mark = await page.js(f"""(() => {{
            const m = [...document.querySelectorAll('#timeline rect.mark')]
              .find(e => e.textContent.includes('unhealthy') && e.textContent.includes('{reviews}'));
            const r = m.getBoundingClientRect(); return {{x: r.left + r.width / 2, y: r.top + r.height / 2}}; }})()""")
        await page.click(mark["x"], mark["y"])
        texts = await page.wait_for("(() => { const rows = [...document.querySelectorAll('#events tr[data-event-kind]')]"
                                    ".map(r => r.textContent); return rows.length ? rows : null; })()")
        assert [t for t in texts if "unhealthy" in t] and all(HOSTILE in t for t in texts if "unhealthy" in t)
        assert await page.js("window.__pwned === undefined && document.querySelectorAll('main script, main img').length === 0")
        await page.screenshot(ARTEFACTS / "5-hostile-text.png")

        # a relative view ("the last hour, now") is pinned in the address bar, so the link stays the same view
        await page.open(f"{base}/?from=-1h&to=now&at=now")
        pinned = await page.wait_for("(() => { const q = new URLSearchParams(location.search); "
                                     "return q.get('at') !== 'now' && q.get('to') !== 'now' && q.get('from') !== '-1h' "
                                     "? Object.fromEntries(q) : null; })()")
        assert all(pinned[k].endswith("Z") for k in ("from", "to", "at")), pinned

        # bad input shows a clear message in the page, never a blank page
        await page.open(f"{base}/?" + urllib.parse.urlencode({**window, "at": "2001-01-01T00:00", "node": "no-such-node"}))
        text = await page.wait_for("document.querySelector('#mesh-panel .error')?.textContent")
        assert "before the first event" in text
        await page.open(f"{base}/?" + urllib.parse.urlencode({**window, "at": f"@{marks['healthy']}", "node": "no-such-node"}))
        text = await page.wait_for("document.querySelector('#node-panel .error')?.textContent")
        assert "no-such-node" in text and "no registered instance" in text
        await page.open(f"{base}/?" + urllib.parse.urlencode({**window, "at": "yesterday-ish", "bogus": "1"}))
        text = await page.wait_for("document.querySelector('#error:not([hidden])')?.textContent")
        assert "not a time" in text and "bogus" in text
        assert "not a time" in await page.wait_for("document.querySelector('#mesh-panel .error')?.textContent")
        await page.screenshot(ARTEFACTS / "6-bad-input.png")
