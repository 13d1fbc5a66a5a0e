"""Hysteresis for central health checks: when is a transition due? (pure, sans-I/O)

Invariants:
- Per tracked instance it keeps the *logged* status (what the log says, as
  folded by ``projector.fold``: no health record means "healthy"), the counts
  of consecutive probe failures and successes since the last logged change,
  and a pending status (a transition this checker decided on and is
  appending, not yet read back).
- ``record`` returns a ``Transition`` only when the status would change:
  to "unhealthy" after ``fall`` consecutive failures while the logged status
  is "healthy"; to "healthy" after ``rise`` consecutive successes while it is
  "unhealthy". Any other result returns None. A success resets the failure
  count and vice versa, so a flapping instance never reaches either count.
- "draining" is never touched: the instance's sidecar is shutting down and
  will deregister; probes of it never transition.
- At most one transition per instance is in flight: while one is pending no
  other is returned. The pending one ends when the log is read back
  (``logged`` with a different status, or ``settled`` once the reader has
  passed the appended offset) or when the append failed (``append_failed``;
  the next probe result may then return it again).
- A change of the logged status (ours read back, or anyone else's event, or
  a re-registration resetting it to healthy) resets both counts: a checker
  that takes over never re-appends a status that is already in the log.
- No clock, no I/O, no randomness: the same calls give the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
DRAINING = "draining"
STATUSES = (HEALTHY, UNHEALTHY, DRAINING)


@dataclass(frozen=True, slots=True)
class Transition:
    key: str
    previous: str
    status: str
    count: int  # the consecutive failures (to unhealthy) or successes (to healthy) that decided it
    detail: str  # what the last probe saw, e.g. "HTTP 503 on /healthz"

    @property
    def reason(self) -> str:
        what = "failures" if self.status == UNHEALTHY else "successes"
        return f"{self.count} consecutive {what} ({self.detail})"

    def describe(self) -> str:
        what = "failures" if self.status == UNHEALTHY else "successes"
        return f"{self.key} {self.previous} -> {self.status} after {self.count} {what} ({self.detail})"


@dataclass(slots=True)
class Tracked:
    logged: str = HEALTHY
    failures: int = 0  # consecutive, since the last logged change
    successes: int = 0
    pending: str | None = None
    probes: int = 0  # total results recorded
    failed: int = 0  # total failures recorded
    last_ok: bool | None = None
    last_detail: str = ""

    def as_dict(self) -> dict:
        return {
            "logged": self.logged,
            "pending": self.pending,
            "believed": self.pending or self.logged,
            "consecutive_failures": self.failures,
            "consecutive_successes": self.successes,
            "probes": self.probes,
            "failures_total": self.failed,
            "last_ok": self.last_ok,
            "last_detail": self.last_detail,
        }


@dataclass(slots=True)
class Hysteresis:
    fall: int = 3
    rise: int = 2
    _tracked: dict[str, Tracked] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.fall < 1 or self.rise < 1:
            raise ValueError("fall and rise must be at least 1")

    # ------------------------------------------------------------ membership

    def track(self, key: str, logged: str) -> None:
        """Start tracking ``key`` (or refresh its logged status if tracked already)."""
        if key in self._tracked:
            self.logged(key, logged)
        else:
            _check(logged)
            self._tracked[key] = Tracked(logged=logged)

    def forget(self, key: str) -> None:
        self._tracked.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._tracked

    def keys(self) -> list[str]:
        return list(self._tracked)

    def get(self, key: str) -> Tracked | None:
        return self._tracked.get(key)

    # ------------------------------------------------------------ what the log says

    def logged(self, key: str, status: str) -> None:
        """The log (as folded) now says ``status`` for ``key``."""
        _check(status)
        t = self._tracked.get(key)
        if t is None:
            return
        if status != t.logged:
            t.logged = status
            t.failures = t.successes = 0
            t.pending = None

    def settled(self, key: str) -> None:
        """The reader has passed our appended record: whatever ``logged`` says now is the truth."""
        t = self._tracked.get(key)
        if t is not None:
            t.pending = None

    def append_failed(self, key: str) -> None:
        t = self._tracked.get(key)
        if t is not None:
            t.pending = None

    # ------------------------------------------------------------ probe results

    def record(self, key: str, ok: bool, detail: str) -> Transition | None:
        t = self._tracked.get(key)
        if t is None:
            return None
        t.probes += 1
        t.last_ok = ok
        t.last_detail = detail
        if ok:
            t.successes += 1
            t.failures = 0
        else:
            t.failed += 1
            t.failures += 1
            t.successes = 0
        if t.pending is not None or t.logged == DRAINING:
            return None
        if t.logged == HEALTHY and t.failures >= self.fall:
            t.pending = UNHEALTHY
            return Transition(key, HEALTHY, UNHEALTHY, t.failures, detail)
        if t.logged == UNHEALTHY and t.successes >= self.rise:
            t.pending = HEALTHY
            return Transition(key, UNHEALTHY, HEALTHY, t.successes, detail)
        return None


def _check(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown health status {status!r}")
