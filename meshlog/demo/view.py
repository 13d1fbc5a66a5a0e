"""How the demo shows itself: a live rich screen, or plain lines for logs and tests.

Both reporters record every check; ``failed`` lists the ones that failed so
the demo can exit non-zero. The live screen re-reads the traffic, the event
tail and the process table on each refresh; it never blocks the scenes.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text


class PlainReporter:
    """One line per step and check (``--headless``): what CI logs and tests read."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.t0 = time.monotonic()
        self.checks: list[tuple[str, bool, str]] = []

    def _line(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", file=self.out, flush=True)

    def say(self, text: str) -> None:
        self._line(text)

    def scene(self, name: str, title: str) -> None:
        self._line(f"== scene {name}: {title}")

    def step(self, text: str) -> None:
        self._line(f"   {text}")

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))
        self._line(f"   {'PASS' if ok else 'FAIL'} {name}: {detail}")

    def block(self, title: str, text: str) -> None:
        self._line(title)
        for line in text.rstrip().splitlines():
            print(f"      {line}", file=self.out)
        self.out.flush()

    @property
    def failed(self) -> list[tuple[str, bool, str]]:
        return [c for c in self.checks if not c[1]]

    def start(self, demo) -> None:
        pass

    def stop(self) -> None:
        pass


class LiveReporter(PlainReporter):
    """The interactive screen: traffic split, events, processes and checks, refreshed 4 times a second."""

    def __init__(self):
        super().__init__()
        self.console = Console()
        self.demo = None
        self.current = "starting"
        self.steps: list[str] = []
        self.live: Live | None = None
        self._route_seen = (0.0, "")  # (when read, what web's Envoy holds): read at most once a second

    def say(self, text: str) -> None:
        if self.live is None:
            self.console.print(f"[dim]·[/] {text}")
        else:
            self.step(text)

    def scene(self, name: str, title: str) -> None:
        self.current = f"[bold]{name}[/]: {title}"
        self.steps = []

    def step(self, text: str) -> None:
        self.steps = (self.steps + [text])[-6:]

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))

    def block(self, title: str, text: str) -> None:
        printer = self.live.console if self.live else self.console
        printer.print(Panel(Text(text.rstrip()), title=title, title_align="left"))

    def start(self, demo) -> None:
        self.demo = demo
        self.live = Live(self, console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _envoy_route(self, demo) -> str:
        when, text = self._route_seen
        if time.monotonic() - when >= 1.0:
            from meshlog.demo.scenes import envoy_route_weights

            try:
                weights = envoy_route_weights(demo.web, demo.stack.reviews) or {}
                text = ", ".join(f"{name} {weight}%" for name, weight in sorted(weights.items())) or "(no route)"
            except (OSError, ValueError) as exc:
                text = f"(admin not answering: {type(exc).__name__})"
            self._route_seen = (time.monotonic(), text)
        return text

    def __rich__(self):
        demo = self.demo
        header = Panel(Text.from_markup(self.current + "\n" + "\n".join(f"  {s}" for s in self.steps)),
                       title="meshlog demo — Ctrl-C stops everything", title_align="left")
        traffic = Table(title="web → reviews, last 5 s (as the client saw it)", expand=True)
        for column in ("instance", "version", "in the log", "requests", "share", ""):
            traffic.add_column(column)
        window = demo.traffic.recent(5.0)
        ok_total = max(1, sum(window.by_instance.values()))
        for sidecar in demo.stack.sidecars.values():
            if sidecar.service != demo.stack.reviews:
                continue
            n = window.by_instance.get(sidecar.instance, 0)
            app = demo.stack.apps.get(sidecar.instance)
            state = " [red](failing)[/]" if app is not None and app.failing else ""
            logged = demo.tail.health.get(f"{sidecar.service}/{sidecar.instance}", "?")
            logged = logged if logged == "healthy" else f"[red]{logged}[/]"
            traffic.add_row(sidecar.instance + state, sidecar.version, logged, str(n), f"{n / ok_total:.0%}",
                            "█" * round(30 * n / ok_total))
        total, errors = demo.traffic.total()
        traffic.caption = (f"errors in the last 5 s: {window.errors} · since start: {total} requests, {errors} errors"
                           f"\nweb's Envoy routes {demo.stack.reviews} to: {self._envoy_route(demo)}")
        events = Table(title="event log (tail)", expand=True)
        for column in ("time", "event", "key", "what"):
            events.add_column(column, overflow="fold")
        if demo.tail.errors:
            events.caption = Text(demo.tail.errors[-1], style="red")  # text from the log: never markup
        for event in demo.tail.last(10):
            events.add_row(time.strftime("%H:%M:%S", time.localtime(event.log_time)), event.type, Text(event.key),
                           Text(event.summary))
        procs = Table(title="processes", expand=True)
        for column in ("name", "pid", "state"):
            procs.add_column(column)
        for name, pid, state in demo.stack.processes():
            procs.add_row(name, str(pid or ""), state if state == "running" else f"[red]{state}[/]")
        checks = Table(title="checks", expand=True)
        checks.add_column("")
        checks.add_column("check")
        checks.add_column("detail", overflow="fold")
        for name, ok, detail in self.checks[-8:]:
            checks.add_row("[green]✓[/]" if ok else "[red]✗[/]", name, detail)
        grid = Table.grid(expand=True)
        grid.add_column(ratio=1)
        grid.add_column(ratio=1)
        grid.add_row(traffic, procs)
        return Group(header, grid, events, checks)
