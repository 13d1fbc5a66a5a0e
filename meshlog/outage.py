"""A broker outage logged as a few lines instead of a flood.

While Kafka is away aiokafka logs every failed connect, metadata refresh and
fetch at ERROR (measured: ~37 lines/s in the projector and in a gateway
during a 39 s outage, ~1,450 lines each), and our own retry loops add theirs.
Here every such failure is counted instead, and the outage is logged:

- once when it starts, with the first failure;
- again at a backoff while it lasts (after ``first_reminder`` seconds, then
  doubling up to ``max_reminder``), with the count and the latest failure;
- once when it ends, with its duration and the count.

Invariants:
- ``Outage`` is a pure state machine: the caller passes the clock and logs
  the line it returns (or nothing). An outage ends when no failure arrived
  for ``quiet`` seconds; aiokafka retries every ~100 ms while the broker is
  away, so a quiet window of seconds means it answers again. Its duration is
  first to last failure.
- ``KafkaOutageLog`` attaches one ``logging.Filter`` to aiokafka's loggers:
  their WARNING-and-above records become failures and are not logged
  themselves (the first one is quoted in the "started" line, a later one in
  each reminder); records below WARNING pass untouched. The end is noticed by
  a timer on the running event loop, so no loop has to poll for it.
- Every failure text is quoted through ``events.printable`` (bounded, control
  characters escaped): broker error strings are not ours either.
- Used by every long-running Kafka reader (projector, gateway view tail,
  health checker): one place decides how an outage reads in the logs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import aiokafka  # noqa: F401 - imported so its loggers exist when a filter is attached

from events.printable import printable

__all__ = ["Outage", "KafkaOutageLog"]

_DETAIL_MAX = 300


class Outage:
    """Failures in, at most a few lines out: started, still failing (at a backoff), ended."""

    def __init__(self, what: str, *, quiet: float = 5.0, first_reminder: float = 5.0, max_reminder: float = 60.0):
        if quiet <= 0 or first_reminder <= 0 or max_reminder < first_reminder:
            raise ValueError("quiet and first_reminder must be > 0 and max_reminder >= first_reminder")
        self.what = what
        self.quiet = quiet
        self.first_reminder = first_reminder
        self.max_reminder = max_reminder
        self._started: float | None = None
        self._last = 0.0
        self._count = 0
        self._gap = first_reminder
        self._next_reminder = 0.0

    @property
    def ongoing(self) -> bool:
        return self._started is not None

    @property
    def failures(self) -> int:
        """Failures counted in the current outage (0 when none is ongoing)."""
        return self._count

    def ends_at(self) -> float | None:
        """When the outage ends if no further failure arrives (``None``: no outage)."""
        return None if self._started is None else self._last + self.quiet

    def failure(self, now: float, detail: str) -> str | None:
        """Count one failure; return the line to log now, if any."""
        if self._started is None:
            self._started = self._last = now
            self._count = 1
            self._gap = self.first_reminder
            self._next_reminder = now + self._gap
            return (f"{self.what} failing: {printable(detail, _DETAIL_MAX)} "
                    "(repeats are counted, not logged, until it recovers)")
        self._count += 1
        self._last = max(self._last, now)
        if now < self._next_reminder:
            return None
        self._gap = min(self._gap * 2, self.max_reminder)
        self._next_reminder = now + self._gap
        return (f"{self.what} still failing after {now - self._started:.0f}s: {self._count} errors so far; "
                f"latest: {printable(detail, _DETAIL_MAX)}")

    def check(self, now: float) -> str | None:
        """The "ended" line once ``quiet`` seconds passed without a failure (then the outage is over)."""
        if self._started is None or now - self._last < self.quiet:
            return None
        errors = f"{self._count} error" + ("" if self._count == 1 else "s")
        line = f"{self.what} recovered: the outage ended after {self._last - self._started:.1f}s ({errors})"
        self._started = None
        self._count = 0
        return line


# aiokafka's log templates (unformatted) of routine group membership changes, logged by it as warnings
_GROUP_ROUTINE = ("Heartbeat failed for group %s because it is rebalancing",)


class KafkaOutageLog(logging.Filter):
    """Routes aiokafka's error records (and our retry loops' failures) through one ``Outage``.

    ``with KafkaOutageLog("Kafka at host:port", log):`` around a component's
    life; inside, call ``failure(detail)`` where a retry loop would log.
    """

    def __init__(self, what: str, logger: logging.Logger, *, quiet: float = 5.0, first_reminder: float = 5.0,
                 max_reminder: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.outage = Outage(what, quiet=quiet, first_reminder=first_reminder, max_reminder=max_reminder)
        self.log = logger
        self.clock = clock
        self._loggers: list[logging.Logger] = []
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ lifetime

    def attach(self) -> "KafkaOutageLog":
        names = [n for n in list(logging.root.manager.loggerDict) if n == "aiokafka" or n.startswith("aiokafka.")]
        for name in names:
            logger = logging.getLogger(name)
            logger.addFilter(self)
            self._loggers.append(logger)
        return self

    def detach(self) -> None:
        for logger in self._loggers:
            logger.removeFilter(self)
        self._loggers.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __enter__(self) -> "KafkaOutageLog":
        return self.attach()

    def __exit__(self, *exc_info) -> None:
        self.detach()

    # ------------------------------------------------------------ failures in

    def failure(self, detail: str) -> None:
        line = self.outage.failure(self.clock(), detail)
        if line is not None:
            self.log.warning("%s", line)
        self._arm_timer()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        if isinstance(record.msg, str) and record.msg.startswith(_GROUP_ROUTINE):
            # a consumer group rebalancing (a member joined, left or was replaced) is the group working, not
            # Kafka failing: projector workers and checkers see one on every start and stop of a peer
            record.levelno, record.levelname = logging.INFO, "INFO"
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record still counts as a failure
            message = str(record.msg)
        self.failure(f"{record.name}: {message}")
        return False

    # ------------------------------------------------------------ the end

    def _arm_timer(self) -> None:
        if self._timer is not None:
            return
        ends_at = self.outage.ends_at()
        if ends_at is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a failure from outside the loop: the next one on the loop arms it
            return
        self._timer = loop.call_later(max(0.0, ends_at - self.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        line = self.outage.check(self.clock())
        if line is not None:
            self.log.info("%s", line)
        else:
            self._arm_timer()  # a failure arrived meanwhile: look again when the new quiet window ends
