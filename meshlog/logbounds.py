"""How often a client (or the log) can make us write a log line.

(What a line may quote is bounded and escaped by ``events.printable``.)

Invariants:
- ``Throttle`` is a pure token bucket (the caller passes the clock): the first
  ``burst`` events pass, then one per ``interval`` seconds; every passing
  event learns how many were suppressed since the previous one, so a
  suppressed line is never silently lost, only counted.
- ``ThrottledLog`` is a logger's ``warning`` through one ``Throttle``: a line
  that passes after suppressed ones ends with their count.

It keeps nothing per client: a caller holds one ``Throttle`` per stream
(or per process), so the memory is bounded by what the caller already holds.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

__all__ = ["Throttle", "ThrottledLog"]


class Throttle:
    """Token bucket for repeated log lines: ``burst`` at once, then one per ``interval`` seconds."""

    __slots__ = ("burst", "interval", "_tokens", "_at", "_suppressed")

    def __init__(self, *, burst: int = 3, interval: float = 10.0) -> None:
        if burst < 1 or interval <= 0:
            raise ValueError("burst must be >= 1 and interval > 0")
        self.burst = burst
        self.interval = interval
        self._tokens = float(burst)
        self._at: float | None = None
        self._suppressed = 0

    def admit(self, now: float) -> int | None:
        """``None``: suppress this line. Else: log it, noting the returned count of lines suppressed before it."""
        if self._at is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) / self.interval)
        self._at = now
        if self._tokens < 1.0:
            self._suppressed += 1
            return None
        self._tokens -= 1.0
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed

    @property
    def suppressed(self) -> int:
        """Lines suppressed since the last one admitted (not yet reported)."""
        return self._suppressed


class ThrottledLog:
    """Warnings about one kind of trouble: ``burst`` lines at once, then one per ``interval`` seconds, with counts."""

    __slots__ = ("_logger", "_throttle", "_clock")

    def __init__(self, logger: logging.Logger, *, burst: int = 1, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._throttle = Throttle(burst=burst, interval=interval)
        self._clock = clock

    def warning(self, msg: str, *args: object) -> None:
        suppressed = self._throttle.admit(self._clock())
        if suppressed is None:
            return
        if suppressed:
            msg += f" ({suppressed} similar lines suppressed)"
        self._logger.warning(msg, *args)
