"""The demo's live screen fits the terminal and shows every check or counts the hidden ones (issue 11, item 12).

Rendered with a fake demo (no processes) into consoles of fixed sizes; every string that comes from
the log is shown escaped.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field

import pytest
from rich.console import Console

from meshlog.demo.events_tail import SeenEvent
from meshlog.demo.traffic import Window
from meshlog.demo.view import SPLIT_WINDOW_S, LiveReporter, fit_rows


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


class FakeTail:
    def __init__(self, key="reviews/reviews-v1-a", summary="10.0.0.1:9080 version=v1"):
        self.health = {"reviews/reviews-v1-b": "unhealthy"}
        self.errors = ["meshlog.health@7: undecodable ([red]x[/] \x1b[2J)"]
        self.events = [SeenEvent(time.time(), "meshlog.registrations", "instance.registered", key, summary, "p", None)
                       for _ in range(14)]

    def last(self, n):
        return self.events[-n:]


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
