"""The demo's client app: steady keep-alive traffic through its sidecar, every request recorded.

Invariants:
- Each worker thread owns one ``KeepAliveClient`` and paces itself to its
  share of ``rate``; a failed request is recorded, never retried, and the
  connection is reopened for the next one.
- ``records`` is append-only (time, ok, version, instance-or-error); windows
  are read by time, so a scene can count exactly the requests *started*
  after a given instant (e.g. after a health event's log time).
"""

from __future__ import annotations

import collections
import http.client
import threading
import time
from dataclasses import dataclass

from meshlog.demo_app import KeepAliveClient, classify


@dataclass(frozen=True)
class Sample:
    started: float  # wall clock (time.time()), comparable with broker log times
    ok: bool
    version: str
    instance: str  # the answering instance, or the error
    finished: float = 0.0  # wall clock when its answer (or failure) arrived


@dataclass(frozen=True)
class Window:
    requests: int
    errors: int
    by_version: dict[str, int]
    by_instance: dict[str, int]
    error_kinds: dict[str, int]

    def share(self, version: str) -> float:
        ok = sum(self.by_version.values())
        return self.by_version.get(version, 0) / ok if ok else 0.0


class Traffic:
    def __init__(self, port: int, host: str, rate: float = 40.0, threads: int = 2):
        self.port, self.host = port, host
        self.rate = rate
        self.records: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(threads,), name=f"traffic-{i}", daemon=True)
                         for i in range(threads)]

    def start(self) -> "Traffic":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self, threads: int) -> None:
        client = KeepAliveClient(self.port, timeout=3)
        gap = threads / self.rate
        next_send = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now < next_send:
                self._stop.wait(next_send - now)
                continue
            next_send = max(next_send + gap, now - gap)  # after a stall, resume the rate without a burst
            started = time.time()
            try:
                ok, version, instance = classify(*client.get(self.host))
            except (OSError, http.client.HTTPException) as exc:
                ok, version, instance = False, "", type(exc).__name__
                client.close()
            finished = time.time()
            with self._lock:
                self.records.append(Sample(started, ok, version, instance, finished))
        client.close()

    def window(self, since: float, until: float | None = None) -> Window:
        until = until if until is not None else time.time() + 1
        with self._lock:
            # records are in start order per thread, nearly in order overall: scan from the end
            chosen = []
            for sample in reversed(self.records):
                if sample.started < since - 5:
                    break
                if since <= sample.started < until:
                    chosen.append(sample)
        by_version: collections.Counter = collections.Counter()
        by_instance: collections.Counter = collections.Counter()
        errors: collections.Counter = collections.Counter()
        for sample in chosen:
            if sample.ok:
                by_version[sample.version] += 1
                by_instance[sample.instance] += 1
            else:
                errors[sample.instance] += 1
        return Window(len(chosen), sum(errors.values()), dict(by_version), dict(by_instance), dict(errors))

    def recent(self, seconds: float = 5.0) -> Window:
        return self.window(time.time() - seconds)

    def total(self) -> tuple[int, int]:
        with self._lock:
            return len(self.records), sum(1 for s in self.records if not s.ok)

    def wait_for(self, predicate, timeout: float, seconds: float = 2.0) -> Window | None:
        """Poll ``recent(seconds)`` until ``predicate(window)``; the window, or None at the timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            window = self.recent(seconds)
            if predicate(window):
                return window
            time.sleep(0.2)
        return None
