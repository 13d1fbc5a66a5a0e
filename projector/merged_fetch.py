"""A live reader's fetch in merge order: an aiokafka consumer's ``getmany`` through ``events.merge_gate``.

The I/O shell around the sans-I/O gate, shared by the live readers that fold the event topics: the projector
(``projector.service``) and the health checkers (``registrar.healthcheck.checker``). Both fold with
``projector.fold``, whose decisions that read another key (a node id claimed by two registrations on different
partitions, a run-time subscription to a service first registered on another partition) depend on the order;
replay folds its cut through the same gate (``replay.source.iter_cut``), so all of them decide alike.

Invariants:
- ``fetch`` returns records in ``events.topics.merge_order``, and records of a later call never sort before
  those of an earlier one, except for what no reader can order (``events.merge_gate``) and a partition passed
  for not moving (below).
- A partition ends, for the gate, at its high watermark: a partition short of it is *behind* and holds back
  what sorts after the last record it delivered. That includes a partition whose records past its last stable
  offset belong to an open transaction (``read_committed`` does not hand them over until it commits): they
  were logged before anything appended to another partition after them, and replay, reading later, folds
  them in that order, so the records of the other partitions that sort after them wait for the commit (or
  the abort). "Caught up" (``behind``) is still judged by the last stable offset: an open transaction is
  nothing to read yet.
- ``positions`` counts as read only what was released: per partition, the consumer's position, or the offset
  of its first record the gate still holds. A reader that says "caught up" or "folded past offset N" from
  these is never ahead of what it folded.
- Fetches go to the partitions that hold records back (``MergeGate.starving``) while there are some, so what
  is held stays about one fetch deep, not a partition's backlog.
- A partition that holds records back without moving for ``hold_s`` of fetching is passed (liveness over
  order) and that is logged once as a WARNING naming the reader, and once at INFO when it moves again. Only
  time spent in ``fetch`` counts (the gate's clock is this reader's fetch time): a reader busy with a long
  batch between two fetches gave no partition a chance to move, and passing one then folded a catch-up out
  of order (with the wall clock, one catch-up of 1,000,000 events passed 4 partitions).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from events.merge_gate import MergeGate
from projector.snapshots import tp_key


class MergedFetch:
    """``await fetch(...)``: the next records of ``tps`` that may be folded, in merge order."""

    def __init__(self, consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition], *, hold_s: float,
                 reader: str, logger: logging.Logger) -> None:
        self.consumer = consumer
        self.tps = list(tps)
        self.gate = MergeGate(hold_s)
        self.positions: dict[str, int] = {}  # per tp key: what counts as read (see the invariants)
        self.fetched_at: float | None = None  # time.time() when the last fetch returned records or an empty poll
        self._read: dict[str, int] = {}  # per tp key: the consumer's own position after the last fetch
        self._tp_of = {tp_key(tp.topic, tp.partition): tp for tp in self.tps}
        self._stalled_logged: set[str] = set()
        self._clock = 0.0  # seconds spent in fetch() before the current call: the gate's clock for hold_s
        self._started = 0.0  # time.monotonic() when the current fetch() began
        self._reader = reader
        self._log = logger

    @property
    def held(self) -> int:
        """Records fetched and not released yet (they wait for a partition behind them)."""
        return self.gate.held

    async def fetch(self, timeout_ms: int, max_records: int, stop: asyncio.Future | None = None) -> list:
        """Wait up to ``timeout_ms`` for records, then drain what the consumer has buffered, without waiting,
        until ``max_records`` are ready: from the partitions holding records back while there are some, else
        from all. Without waiting when held records may be released already. [] when ``stop`` completes
        first, or nothing may be released yet."""
        self._started = time.monotonic()
        try:
            return await self._fetch(timeout_ms, max_records, stop)
        finally:
            self._clock += time.monotonic() - self._started

    def _now(self) -> float:
        """The gate's clock: time spent in ``fetch`` so far."""
        return self._clock + (time.monotonic() - self._started)

    async def _fetch(self, timeout_ms: int, max_records: int, stop: asyncio.Future | None) -> list:
        consumer = self.consumer
        gate = self.gate
        ends = self._gate_ends()
        # what a batch's limit left releasable goes now: waiting for more records would only delay it
        ready: list = gate.take(self._read, ends, self._now(), max_records) if gate.held else []
        if len(ready) >= max_records:
            self._note_positions()
            return ready
        fetch = asyncio.ensure_future(consumer.getmany(*self._next_tps(ends), timeout_ms=0 if ready else timeout_ms,
                                                       max_records=max_records))
        waits = {fetch} if stop is None else {fetch, stop}
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if fetch not in done:
            fetch.cancel()
            try:
                await fetch
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping: its outcome changes nothing
                pass
            self._note_positions()
            return ready
        got = fetch.result()
        self.fetched_at = time.time()
        while True:
            for tp, records in got.items():
                gate.offer(tp_key(tp.topic, tp.partition), records)
            await self._read_positions()
            ends = self._gate_ends()
            ready += gate.take(self._read, ends, self._now(), max_records - len(ready))
            if not got or len(ready) >= max_records:
                break
            got = await consumer.getmany(*self._next_tps(ends), timeout_ms=0, max_records=max_records)
        self._note_positions()
        self._note_stalled()
        return ready

    async def update_positions(self) -> None:
        """Read the consumer's positions now (after a seek, say) into ``positions``."""
        await self._read_positions()
        self._note_positions()

    def _stable_ends(self) -> dict[str, int | None]:
        consumer = self.consumer
        return {k: consumer.last_stable_offset(tp) for k, tp in self._tp_of.items()}

    def _gate_ends(self) -> dict[str, int | None]:
        consumer = self.consumer
        return {k: consumer.highwater(tp) for k, tp in self._tp_of.items()}

    def behind(self) -> bool:
        """Whether some partition is short of its end (or its end is not known yet) as far as ``positions``
        say: records are visible that were not released."""
        ends = self._stable_ends()
        return any((end := ends[k]) is None or self.positions.get(k, 0) < end for k in self._tp_of)

    def _next_tps(self, ends: dict[str, int | None]) -> list[TopicPartition]:
        starving = self.gate.starving(self._read, ends)
        return [self._tp_of[k] for k in starving] if starving else self.tps

    async def _read_positions(self) -> None:
        for k, tp in self._tp_of.items():
            self._read[k] = await self.consumer.position(tp)

    def _note_positions(self) -> None:
        for k, pos in self._read.items():
            held = self.gate.first_held_offset(k)
            self.positions[k] = pos if held is None else min(pos, held)

    def _note_stalled(self) -> None:
        stalled = self.gate.stalled
        for k in stalled - self._stalled_logged:
            self._log.warning(
                "%s: %s is behind (records not delivered yet, or a transaction open on it) and has not moved for "
                "%.1fs of fetching: folding the other partitions past it (records it delivers later may sort "
                "before some already folded, so replay may decide them differently)",
                self._reader, k, self.gate.hold_s,
            )
        for k in self._stalled_logged - stalled:
            self._log.info("%s: %s is moving again: the fold waits for it as before", self._reader, k)
        self._stalled_logged = set(stalled)
