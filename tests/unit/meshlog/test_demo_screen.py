"""The demo's live screen fits the terminal and shows every check or counts the hidden ones (issue 11, item 12).

Rendered with a fake demo (no processes) into consoles of fixed sizes; every string that comes from
the log is shown escaped.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pytest
from rich.console import Console

from events import types as t
from events.envelope import Logged, new_event
from meshlog.demo.events_tail import SeenEvent
from meshlog.demo.traffic import Window
from meshlog.demo.view import SPLIT_WINDOW_S, LiveReporter, convergence_lines, fit_rows


@dataclass
class FakeSidecar:
    service: str
    instance: str
    version: str


@dataclass
class FakeApp:
    failing: bool = False


@dataclass
class FakeStack:
    reviews: str = "reviews"
    sidecars: dict = field(default_factory=lambda: {
        name: FakeSidecar("reviews", name, name.split("-")[1]) for name in ("reviews-v1-a", "reviews-v1-b", "reviews-v2-a")
    } | {"web-1": FakeSidecar("web", "web-1", "v1")})
    apps: dict = field(default_factory=lambda: {"reviews-v1-b": FakeApp(failing=True)})

    def processes(self):
        names = ["kafka", "projector", "gateway-1", "gateway-2", "gateway-3", "checker-1", "checker-2",
                 "sidecar-reviews-v1-a", "sidecar-reviews-v1-b", "sidecar-reviews-v2-a", "sidecar-web-1"]
        return [(n, 1000 + i, "exited -9" if n == "gateway-1" else "running") for i, n in enumerate(names)]


class FakeTraffic:
    def recent(self, seconds):
        return Window(120, 0, {"v1": 100, "v2": 20}, {"reviews-v1-a": 50, "reviews-v1-b": 50, "reviews-v2-a": 20}, {})

    def total(self):
        return 4000, 24


CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
RULE_MS = 1_767_225_600_000  # when the rule below was appended


def sync_record(payload, ms: int, offset: int) -> Logged:
    at = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return Logged(new_event(payload, producer="gw", occurred_at=at), "meshlog.sync", 0, offset, ms)


def a_rule_reaching(nodes: dict[str, int | None], rule_key: str = "reviews"):
    """(seen, views, sync): a rule at RULE_MS telling every node cluster x v2; each ACKs after its delay (ms)."""
    seen = [SeenEvent(RULE_MS / 1000, "meshlog.rules", "route_rule.upserted", rule_key, "rev 2: v1=90 v2=10", "p",
                      None)]
    views = [(RULE_MS, node, {CDS: {"x": "v2"}}) for node in nodes]
    sync, offset = [], 0
    for node in nodes:
        sync.append(sync_record(t.ProxyStreamOpened(node=node, gateway="gw", stream_id=node, kind="delta",
                                                    peer="ipv4:127.0.0.1:1"), RULE_MS - 5_000, offset := offset + 1))
    for node, delay in sorted(nodes.items(), key=lambda kv: kv[1] or 0):
        if delay is not None:
            sync.append(sync_record(t.ProxyAcked(node=node, gateway="gw", stream_id=node, type_url=CDS, nonce="n",
                                                 held={"x": "v2"}), RULE_MS + delay, offset := offset + 1))
    return seen, views, sync


class FakeTail:
    def __init__(self, key="reviews/reviews-v1-a", summary="10.0.0.1:9080 version=v1", converged=None):
        self.health = {"reviews/reviews-v1-b": "unhealthy"}
        self.errors = ["meshlog.health@7: undecodable ([red]x[/] \x1b[2J)"]
        self.events = [SeenEvent(time.time(), "meshlog.registrations", "instance.registered", key, summary, "p", None)
                       for _ in range(14)]
        self.converged = converged or a_rule_reaching({"web-1": 84, "reviews-v1-a": 20, "reviews-v2-a": None})

    def last(self, n):
        return self.events[-n:]

    def convergence_inputs(self):
        return self.converged


@dataclass
class FakeDemo:
    stack: FakeStack = field(default_factory=FakeStack)
    traffic: FakeTraffic = field(default_factory=FakeTraffic)
    tail: FakeTail = field(default_factory=FakeTail)


def screen(width: int, height: int, checks: int = 10, tail: FakeTail | None = None) -> tuple[list[str], str]:
    out = io.StringIO()
    console = Console(file=out, width=width, height=height, color_system=None, force_terminal=True,
                      legacy_windows=False)
    reporter = LiveReporter(console)
    reporter.demo = FakeDemo(tail=tail or FakeTail())
    reporter._route_seen = (time.monotonic() + 3600, "reviews|v1 100%")  # no Envoy admin to ask
    reporter.scene("canary", "route rule v1/v2 = 90/10")
    for i in range(8):
        reporter.step(f"step {i}: web's Envoy holds the new route 0.2{i} s after the append")
    for i in range(checks):
        reporter.check(f"check-{i}", i != 3, f"detail of check {i}: 240 requests, 0 errors " * 3)
    console.print(reporter)
    text = out.getvalue()
    return text.rstrip("\n").split("\n"), text


@pytest.mark.parametrize("width, height", [(80, 24), (80, 40), (100, 50), (120, 60), (200, 80), (60, 30)])
def test_the_screen_never_needs_more_lines_than_the_terminal_has(width, height):
    lines, _ = screen(width, height)
    assert len(lines) <= height - 1  # Live keeps its cursor on the last line
    assert all(len(line) <= width for line in lines)
    for line in lines:  # no box is cut at the edge of the screen or of its grid cell
        assert line.count("┏") == line.count("┓") and line.count("└") == line.count("┘"), line
        assert line.count("╭") == line.count("╮") and line.count("╰") == line.count("╯"), line


@pytest.mark.parametrize("height", [60, 80])
def test_a_60_row_terminal_shows_all_ten_checks(height):
    _, text = screen(120, height)
    assert all(f"check-{i} " in text for i in range(10))
    assert "earlier checks not shown" not in text


def test_a_short_terminal_counts_the_checks_it_cannot_show():
    lines, text = screen(100, 26)
    shown = [i for i in range(10) if f"check-{i} " in text]
    assert shown and shown == list(range(10 - len(shown), 10))  # the latest ones
    hidden = 10 - len(shown)
    assert f"… {hidden} earlier checks not shown" in text
    assert ("(1 failed)" if 3 < hidden else "(0 failed)") in text


def test_the_split_says_which_window_it_covers():
    _, text = screen(200, 60)
    assert f"split over the last {SPLIT_WINDOW_S:g} s" in text
    assert "routes reviews to (now): reviews|v1 100%" in text


def test_text_from_the_log_is_shown_escaped():
    _, text = screen(200, 60, tail=FakeTail(key="[bold]k[/bold]\x1b]0;t\x07", summary="\u202eevil"))
    assert "\x1b]0;t" not in text and "\x07" not in text and "\u202e" not in text
    assert "[bold]k[/bold]\\x1b]0;t\\x07" in text and "\\u202eevil" in text
    assert "[red]x[/] \\x1b[2J" in text


def test_fit_rows_gives_checks_first_then_steps_then_events():
    tall = fit_rows(200, steps=6, events=10, checks=10, processes=11, instances=3)
    assert (tall.checks, tall.steps, tall.events, tall.processes) == (10, 6, 10, 11)
    short = fit_rows(40, steps=6, events=10, checks=10, processes=11, instances=3)
    assert short.checks == 10 and short.events < 10
    tiny = fit_rows(10, steps=6, events=10, checks=10, processes=11, instances=3)
    assert tiny.checks == tiny.steps == tiny.events == 0


def test_the_screen_shows_the_last_convergences_by_event_with_the_slowest_proxy():
    _, text = screen(200, 80)
    assert "convergence: from the event's append to the last affected proxy's ACK" in text
    assert "route_rule.upserted reviews" in text
    assert "reached 2 of 3 proxies (median 52 ms); slowest web-1 84 ms (1 not yet)" in text


def test_convergence_lines_keep_the_last_few_and_leave_out_changes_no_proxy_was_connected_for():
    seen, views, sync = a_rule_reaching({"web-1": 30})
    later = RULE_MS + 1_000
    views += [(later + 100 * i, "web-1", {CDS: {"x": f"v{3 + i}"}}) for i in range(4)]  # no event seen for these
    views.append((later + 1_000, "gone", {CDS: {"x": "v9"}}))  # no proxy: not a convergence
    sync += [sync_record(t.ProxyAcked(node="web-1", gateway="gw", stream_id="web-1", type_url=CDS, nonce="n",
                                      held={"x": f"v{3 + i}"}), later + 100 * i + 7, 100 + i) for i in range(4)]
    lines = convergence_lines(seen, views, sync, n=3)
    assert [ms for ms, _label, _summary in lines] == [later + 100, later + 200, later + 300]
    assert all(summary == "reached 1 of 1 proxies (median 7 ms); slowest web-1 7 ms" for _ms, _l, summary in lines)
    assert lines[0][1] == "events up to then"
    [(ms, label, summary)] = convergence_lines(*a_rule_reaching({"web-1": 30}), n=3)
    assert (ms, label) == (RULE_MS, "route_rule.upserted reviews")


def test_a_node_name_from_the_log_is_shown_escaped_in_the_convergences():
    _, text = screen(200, 80, tail=FakeTail(converged=a_rule_reaching({"[bold]w\x1b[2J": 5}, rule_key="\u202er")))
    assert "\x1b[2J" not in text and "\u202e" not in text
    assert "slowest [bold]w\\x1b[2J 5 ms" in text and "\\u202er" in text


def test_fit_rows_gives_convergences_room_after_the_steps_and_before_the_tail():
    tall = fit_rows(200, steps=6, events=10, checks=10, processes=11, instances=3, convergences=5)
    assert (tall.convergences, tall.events) == (3, 10)
    none_yet = fit_rows(200, steps=6, events=10, checks=10, processes=11, instances=3, convergences=0)
    assert none_yet.convergences == 0
    squeezed = fit_rows(45, steps=6, events=10, checks=10, processes=11, instances=3, convergences=3)
    assert squeezed.convergences == 3 and squeezed.events < 10


@dataclass
class Record:  # what aiokafka hands the tail
    topic: str
    value: bytes | None
    key: bytes = b"k"
    offset: int = 0
    partition: int = 0
    timestamp: int = RULE_MS
    headers: tuple = ()


def test_the_tail_keeps_sync_records_and_membership_views_for_the_convergences_and_skips_bad_ones():
    from events import topics
    from events.codec import encode
    from meshlog.demo.events_tail import EventTail
    from projector.publisher import membership_value, source_headers

    tail = EventTail("127.0.0.1:1", since=0)  # never started: records are handed to it
    _seen, _views, [opened, ack] = a_rule_reaching({"web-1": 84})
    tail._add(Record(topics.SYNC, encode(opened.envelope), offset=1, timestamp=opened.timestamp_ms))
    tail._add(Record(topics.SYNC, encode(ack.envelope), offset=2, timestamp=ack.timestamp_ms))
    tail._add(Record(topics.VIEW_MEMBERSHIP, membership_value("web-1", {CDS: {"x": "v2"}}),
                     headers=tuple(source_headers(RULE_MS))))
    tail._add(Record(topics.VIEW_MEMBERSHIP, b'{"node": "x", "resources": {"t": 3}}', offset=5,
                     headers=tuple(source_headers(RULE_MS))))
    tail._add(Record(topics.VIEW_MEMBERSHIP, None, offset=6))  # a node gone
    seen, views, sync = tail.convergence_inputs()
    assert seen == [] and views == [(RULE_MS, "web-1", {CDS: {"x": "v2"}})]
    assert [lg.envelope.type for lg in sync] == ["sync.stream_opened", "sync.acked"]
    assert tail.errors == [f"{topics.VIEW_MEMBERSHIP}@5: membership record does not parse"]
    [(_ms, _label, summary)] = convergence_lines(seen, views, sync)
    assert summary == "reached 1 of 1 proxies (median 84 ms); slowest web-1 84 ms"


def test_a_new_endpoints_body_is_a_view_told_to_every_node_holding_it_at_the_latest():
    """Memberships name endpoints without a version: a health flip reaches the tail as one body record."""
    from events import topics
    from meshlog.demo.events_tail import EventTail
    from projector.publisher import LATEST, VERSION_HEADER, membership_value, resource_key, source_headers

    EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
    V1, V2 = "a1" * 8, "b2" * 8

    def endpoints(version: str, ms: int) -> Record:
        return Record(topics.VIEW_RESOURCES, b"cla", key=resource_key(EDS, "reviews"),
                      headers=((VERSION_HEADER, version.encode()), *source_headers(ms)))

    tail = EventTail("127.0.0.1:1", since=0)
    tail._add(endpoints(V1, RULE_MS))  # no node holds it yet: no view
    holds = {CDS: {"reviews": "c1"}, EDS: {"reviews": LATEST}}
    for node in ("web-1", "web-2"):
        tail._add(Record(topics.VIEW_MEMBERSHIP, membership_value(node, holds), key=node.encode(),
                         headers=tuple(source_headers(RULE_MS))))
    tail._add(Record(topics.VIEW_MEMBERSHIP, membership_value("api-1", {CDS: {"reviews": "c1"}}), key=b"api-1",
                     headers=tuple(source_headers(RULE_MS))))
    tail._add(Record(topics.VIEW_RESOURCES, b"cluster", key=resource_key(CDS, "reviews"),
                     headers=tuple(source_headers(RULE_MS + 5))))  # a cluster: memberships name its version
    tail._add(endpoints(V2, RULE_MS + 10))
    _seen, views, _sync = tail.convergence_inputs()
    told = {CDS: {"reviews": "c1"}}
    assert views == [(RULE_MS, "web-1", {**told, EDS: {"reviews": V1}}), (RULE_MS, "web-2", {**told, EDS: {"reviews": V1}}),
                     (RULE_MS, "api-1", told),
                     (RULE_MS + 10, "web-1", {**told, EDS: {"reviews": V2}}),
                     (RULE_MS + 10, "web-2", {**told, EDS: {"reviews": V2}})]
    # web-2 is gone (its membership's tombstone): the next endpoints reach web-1 only
    tail._add(Record(topics.VIEW_MEMBERSHIP, None, key=b"web-2"))
    tail._add(endpoints("c3" * 8, RULE_MS + 20))
    assert tail.convergence_inputs()[1][5:] == [(RULE_MS + 20, "web-1", {**told, EDS: {"reviews": "c3" * 8}})]
