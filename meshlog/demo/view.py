"""How the demo shows itself: a live rich screen, or plain lines for logs and tests.

Both reporters record every check; ``failed`` lists the ones that failed so
the demo can exit non-zero. The live screen re-reads the traffic, the event
tail and the process table on each refresh; it never blocks the scenes. It
fits the terminal's height (``fit_rows``; what does not fit is counted, never
silently dropped), and shows text from the log escaped (``events.printable``).
The last few convergences (an event's append to the last affected proxy's
ACK) are ``proxysync.convergence``'s, from the views and sync records the
event tail keeps (``convergence_lines``, pure).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from rich.console import Console, ConsoleOptions, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from events.printable import printable
from proxysync.convergence import convergences, summary_text


class PlainReporter:
    """One line per step and check (``--headless``): what CI logs and tests read."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.t0 = time.monotonic()
        self.checks: list[tuple[str, bool, str]] = []

    block_width = 200  # columns the blocks (replay's tables) are printed in: wide, for logs

    def _line(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {printable(text, 2000)}", file=self.out, flush=True)

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
            print(f"      {printable(line, 2000)}", file=self.out)
        self.out.flush()

    @property
    def failed(self) -> list[tuple[str, bool, str]]:
        return [c for c in self.checks if not c[1]]

    def start(self, demo) -> None:
        pass

    def stop(self) -> None:
        pass


SPLIT_WINDOW_S = 5.0  # the traffic table's window: long enough for a stable share at 40 requests/s
MAX_STEPS = 6
MAX_EVENTS = 10
MAX_CONVERGENCES = 3
TABLE_CHROME = 5  # title, top border, header, header rule, bottom border


@dataclass(frozen=True)
class Rows:
    """How many rows each part of the live screen shows (the rest is summarised in a caption)."""

    steps: int
    events: int
    checks: int
    processes: int
    show_tail: bool = True  # the event tail table at all (left out on a very short terminal)
    convergences: int = 0  # rows of the convergence table (0: the table is left out)


def fit_rows(height: int, *, steps: int, events: int, checks: int, processes: int, instances: int,
             convergences: int = 0) -> Rows:
    """Rows per part so the whole screen fits ``height`` terminal lines (pure; every row is one line).

    Priority: every check, then the scene's steps, then the last convergences (a table only when
    there are some and at least one row fits), then the event tail (left out entirely when not even
    its frame fits), then processes beyond what fits beside the traffic table. Captions
    ("N more ...") have a line reserved.
    """
    traffic_height = TABLE_CHROME + instances + 2  # two caption lines
    left = max(0, height - (1 + 3 + traffic_height + TABLE_CHROME + 1))  # Live's cursor, header, grid, checks
    shown_checks = min(checks, left)
    left -= shown_checks
    shown_steps = min(steps, MAX_STEPS, left)
    left -= shown_steps
    conv_chrome = TABLE_CHROME  # no caption
    shown_convergences = min(convergences, MAX_CONVERGENCES, left - conv_chrome) if left > conv_chrome else 0
    left -= conv_chrome + shown_convergences if shown_convergences else 0
    show_tail = left > TABLE_CHROME + 1
    shown_events = min(events, MAX_EVENTS, left - TABLE_CHROME - 1) if show_tail else 0
    left -= TABLE_CHROME + 1 + shown_events if show_tail else 0
    beside_traffic = max(0, traffic_height - TABLE_CHROME - 1)  # processes that do not make the grid taller
    shown_processes = min(processes, beside_traffic + left)
    return Rows(shown_steps, shown_events, shown_checks, shown_processes, show_tail, shown_convergences)


def convergence_lines(seen, views, sync, n: int = MAX_CONVERGENCES) -> list[tuple[int, str, str]]:
    """The last ``n`` view changes some proxy was affected by: (event ms, which event, how far it reached).

    ``views`` are (``meshlog-source-ms``, node, resources) of membership records: the views one event
    (the newest of a projector batch) caused; ``sync`` the meshlog.sync events; ``seen`` names the event.
    """
    caused: dict[int, dict] = {}
    for source_ms, node, resources in views:
        caused.setdefault(source_ms, {})[node] = resources
    results = convergences([(ms, ms, nodes) for ms, nodes in caused.items()], sync)
    by_ms = {round(e.log_time * 1000): e for e in seen}  # the last event of that instant: the newest folded
    out = []
    for ms in sorted(ms for ms, c in results.items() if c.proxies)[-n:]:
        event = by_ms.get(ms)
        label = f"{event.type} {event.key}" if event is not None else "events up to then"
        out.append((ms, label, summary_text(results[ms].as_dict())))
    return out


def _line(text: str, style: str = "") -> Text:
    """One terminal line of text from anywhere (the log, a check's detail): escaped, never wrapped."""
    return Text(printable(text, 400), style=style, no_wrap=True, overflow="ellipsis")


class LiveReporter(PlainReporter):
    """The interactive screen: traffic split, events, processes and checks, refreshed 4 times a second.

    The screen always fits the terminal (``fit_rows``): what does not fit is counted in a caption, so
    the live area never scrolls out of the terminal and the blocks printed above it stay intact.
    """

    def __init__(self, console: Console | None = None):
        super().__init__()
        self.console = console or Console()
        self.demo = None
        self.current = ("starting", "")
        self.steps: list[str] = []
        self.live: Live | None = None
        self._route_seen = (0.0, "")  # (when read, what web's Envoy holds): read at most once a second
        self._converged: tuple[tuple[int, int, int], list] = ((0, 0, 0), [])  # (inputs' sizes, lines)

    @property
    def block_width(self) -> int:
        return max(40, self.console.width - 4)  # a block's panel borders and padding

    def say(self, text: str) -> None:
        if self.live is None:
            self.console.print(Text.assemble(("· ", "dim"), printable(text)))
        else:
            self.step(text)

    def scene(self, name: str, title: str) -> None:
        self.current = (name, title)
        self.steps = []

    def step(self, text: str) -> None:
        self.steps = (self.steps + [text])[-MAX_STEPS:]

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))

    def block(self, title: str, text: str) -> None:
        printer = self.live.console if self.live else self.console
        body = Text("\n".join(printable(line, 1000) for line in text.rstrip().splitlines()), no_wrap=True,
                    overflow="crop")
        printer.print(Panel(body, title=Text(printable(title)), title_align="left"))

    def start(self, demo) -> None:
        self.demo = demo
        self.live = Live(self, console=self.console, refresh_per_second=4, transient=False,
                         vertical_overflow="crop")
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

    def _convergences(self, tail) -> list[tuple[int, str, str]]:
        seen, views, sync = tail.convergence_inputs()
        sizes = (len(seen), len(views), len(sync))
        if sizes != self._converged[0]:  # recomputed only when the log moved, not 4 times a second
            self._converged = (sizes, convergence_lines(seen, views, sync))
        return self._converged[1]

    def __rich_console__(self, console: Console, options: ConsoleOptions):
        demo = self.demo
        instances = [s for s in demo.stack.sidecars.values() if s.service == demo.stack.reviews]
        processes = demo.stack.processes()
        events = demo.tail.last(MAX_EVENTS)
        converged = self._convergences(demo.tail)
        rows = fit_rows(options.max_height or console.height, steps=len(self.steps), events=len(events),
                        checks=len(self.checks), processes=len(processes), instances=len(instances),
                        convergences=len(converged))

        name, title = self.current
        lines = [Text.assemble((name, "bold"), f": {title}" if title else "", no_wrap=True, overflow="ellipsis")]
        lines += [_line(f"  {step}") for step in self.steps[len(self.steps) - rows.steps:]] if rows.steps else []
        header = Panel(Group(*lines), title="meshlog demo — Ctrl-C stops everything", title_align="left")

        window_label = f"last {SPLIT_WINDOW_S:g} s"
        traffic = Table(title=_line(f"web → reviews: split over the {window_label} (as the client saw it)"),
                        expand=True)
        for column in ("instance", "version", "in the log", "requests", "share"):
            traffic.add_column(column, no_wrap=True, overflow="ellipsis")
        window = demo.traffic.recent(SPLIT_WINDOW_S)
        ok_total = max(1, sum(window.by_instance.values()))
        for sidecar in instances:
            n = window.by_instance.get(sidecar.instance, 0)
            app = demo.stack.apps.get(sidecar.instance)
            instance = Text(sidecar.instance)
            if app is not None and app.failing:
                instance.append(" (failing)", style="red")
            logged = demo.tail.health.get(f"{sidecar.service}/{sidecar.instance}", "?")
            traffic.add_row(instance, sidecar.version, _line(logged, "" if logged == "healthy" else "red"), str(n),
                            f"{n / ok_total:>4.0%} " + "█" * round(10 * n / ok_total))
        total, errors = demo.traffic.total()
        traffic.caption = Group(
            _line(f"errors in the {window_label}: {window.errors} · since start: {total} requests, {errors} errors"),
            _line(f"web's Envoy routes {demo.stack.reviews} to (now): {self._envoy_route(demo)}"))

        procs = Table(title=_line("processes"), expand=True)
        for column in ("name", "pid", "state"):
            procs.add_column(column, no_wrap=True, overflow="ellipsis")
        # processes not running first: they are the news when there is no room for all
        ordered = sorted(processes, key=lambda p: p[2] == "running")
        for pname, pid, state in ordered[:rows.processes]:
            procs.add_row(pname, str(pid or ""), _line(state, "" if state == "running" else "red"))
        if len(processes) > rows.processes:
            hidden = ordered[rows.processes:]
            running = sum(1 for p in hidden if p[2] == "running")
            procs.caption = _line(f"… {len(hidden)} more ({running} running)")

        tail = Table(title=_line("event log (tail)"), expand=True)
        for column in ("time", "event", "key", "what"):
            tail.add_column(column, no_wrap=True, overflow="ellipsis")
        if demo.tail.errors:
            tail.caption = _line(demo.tail.errors[-1], "red")
        for event in events[len(events) - rows.events:] if rows.events else []:
            tail.add_row(time.strftime("%H:%M:%S", time.localtime(event.log_time)), _line(event.type),
                         _line(event.key), _line(event.summary))

        reached = Table(title=_line("convergence: from the event's append to the last affected proxy's ACK"),
                        expand=True)
        for column in ("time", "event", "reached"):
            reached.add_column(column, no_wrap=True, overflow="ellipsis", ratio=2 if column == "reached" else None)
        for ms, label, summary in converged[len(converged) - rows.convergences:] if rows.convergences else []:
            reached.add_row(time.strftime("%H:%M:%S", time.localtime(ms / 1000)), _line(label), _line(summary))

        checks = Table(title=_line("checks"), expand=True)
        checks.add_column("", no_wrap=True)
        checks.add_column("check", no_wrap=True, overflow="ellipsis")
        checks.add_column("detail", no_wrap=True, overflow="ellipsis", ratio=1)
        for cname, ok, detail in self.checks[len(self.checks) - rows.checks:] if rows.checks else []:
            checks.add_row(Text("✓", style="green") if ok else Text("✗", style="red"), _line(cname), _line(detail))
        if len(self.checks) > rows.checks:
            failed = sum(1 for c in self.checks[:len(self.checks) - rows.checks] if not c[1])
            checks.caption = _line(f"… {len(self.checks) - rows.checks} earlier checks not shown ({failed} failed); "
                                   "a taller terminal shows them", "red" if failed else "")
        grid = Table.grid(expand=True)
        grid.add_column(ratio=3)
        grid.add_column(ratio=2)
        grid.add_row(traffic, procs)
        yield Group(header, grid, *([reached] if rows.convergences else []), *([tail] if rows.show_tail else []),
                    checks)
