"""Deadlines on the streams' writes: one checking task for all of them, not a timer per write.

A write is the gateway's most frequent await (one per response, 10,000s of
streams), and ``asyncio.timeout`` around each one made and cancelled a timer
handle in the event loop's heap per response. Here a write in progress is one
dict entry (its task and its deadline), and one task looks at the entries
every ``timeout_s / CHECKS_PER_TIMEOUT`` seconds.

Invariants:
- ``write`` raises ``TimeoutError`` when the write has not completed
  ``timeout_s`` after it began: no earlier, and no later than one check period
  after (plus the event loop's own lag). The write is cancelled as
  ``asyncio.timeout`` cancels it (its task is cancelled while it waits in it).
- Only this watch's own cancellation becomes ``TimeoutError``; any other
  (grpc cancelling the handler when the client resets) passes through as
  ``CancelledError``. A cancellation that raced a completed write is taken
  back (``uncancel``), so it never surfaces at the stream's next await.
- Entries are in the order writes began and share one timeout, so their
  deadlines are in order too: a check reads only the expired entries and the
  first live one.
- The checking task runs only while some write is in progress (it ends at the
  first check that finds none), so an idle gateway keeps no timer.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["WriteDeadlines", "CHECKS_PER_TIMEOUT"]

#: How often per ``timeout_s`` the writes in progress are checked (so a write ends at most 25 % late).
CHECKS_PER_TIMEOUT = 4


class WriteDeadlines:
    """``await deadlines.write(context, payload, task)``: ``context.write(payload)`` within ``timeout_s``.

    ``task`` is the task awaiting the write (the stream's handler, looked up once per stream: on Python 3.11
    ``asyncio.current_task`` costs a ``getpid`` system call per call); None looks it up.
    """

    def __init__(self, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"write timeout must be positive, got {timeout_s}")
        self.timeout_s = timeout_s
        self._period = timeout_s / CHECKS_PER_TIMEOUT
        self._writing: dict[asyncio.Task, float] = {}  # task -> deadline (monotonic), in the order writes began
        self._expired: set[asyncio.Task] = set()  # tasks this watch cancelled, until their write returns
        self._checker: asyncio.Task | None = None

    async def write(self, context, payload, task: asyncio.Task | None = None) -> None:
        if task is None:
            task = asyncio.current_task()
        self._writing[task] = time.monotonic() + self.timeout_s
        if self._checker is None:
            self._checker = asyncio.get_running_loop().create_task(self._check(), name="write-deadlines")
        try:
            await context.write(payload)
        except asyncio.CancelledError:
            if task in self._expired:
                self._expired.discard(task)
                task.uncancel()
                raise TimeoutError(f"write not completed within {self.timeout_s:g} s") from None
            raise
        finally:
            self._writing.pop(task, None)
        if self._expired and task in self._expired:
            # the write completed, and the cancellation came too late to interrupt it: take it back
            self._expired.discard(task)
            task.uncancel()

    def in_progress(self) -> int:
        """Writes waiting to complete."""
        return len(self._writing)

    async def _check(self) -> None:
        try:
            while True:
                await asyncio.sleep(self._period)
                if not self._writing:
                    return
                now = time.monotonic()
                late = []
                for task, deadline in self._writing.items():
                    if deadline > now:
                        break
                    late.append(task)
                for task in late:
                    del self._writing[task]  # cancelled once, however long its cancellation takes to land
                    if not task.done():
                        self._expired.add(task)
                        task.cancel()
        finally:
            self._checker = None
