"""The gateway's sync log: what its streams learn about their proxies, appended to ``meshlog.sync``.

The stream machines decide what an ACK or a NACK means and report it as plain
data (``take_learned``); this thin shell turns it into events
(``events.types.ProxyAcked`` and friends) and appends them with the events'
producer.

Invariants:
- Nothing here blocks a stream or the view tail: the stream calls plain
  methods that update a dict or a bounded queue and return at once; one
  writer task does the appending.
- Coalesced per stream and type: within one window (``window_s``) a stream
  yields at most one ACK record per type — the latest, carrying what the
  proxy holds then — and at most one NACK record per type (the latest); a
  NACK is never hidden by a later ACK, and both keep their order. Stream
  opened/closed records are never coalesced; a stream's pending ACK/NACK
  records go out before its closed record. Building and writing records
  yields to the event loop every ``slice_`` records, so a burst (every stream
  ACKing one change) never stalls the streams for long.
- Bounded: records wait in a queue of at most ``queue_size``; when it is full
  the new record is dropped and counted (``meshlog_sync_records_dropped_total``)
  with a rate-limited warning. A record that fails validation is dropped the
  same way (reason ``invalid``); so is a batch the broker does not take.
- The proxy's NACK reason is escaped and cut to size before it is recorded.
- ``close`` appends "closed (gateway_stopping)" for every stream still open
  and drains the queue, within a deadline.
- Second to the streams (``defer_while``): while the gateway says it is busy
  (fanning a view change out), a flush does not start, a started one does not
  build its next slice, and the writer does not hand over its next batch --
  for at most ``window_s`` per busy spell, flush and writer together (one
  mark, ``_busy_since``), so a gateway that is always busy still records
  everything, at most one window late, and the queue drains as fast as before
  once that window is over. ``close`` stops deferring. Building and appending the
  records of 1,000 ACKs takes tens of milliseconds of the one event loop; in
  the middle of a fan-out that is latency added to the proxies not yet sent
  the change.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Awaitable, Callable, Sequence

from events import types as t
from events.codec import validate_payload
from events.envelope import Envelope, new_event
from events.errors import EventValidationError
from events.printable import printable
from meshlog.logbounds import ThrottledLog
from xds_gateway import metrics
from xds_gateway.protocol.common import Acked, Nack

log = logging.getLogger(__name__)

Sink = Callable[[Sequence[Envelope]], Awaitable[None]]

#: how often a deferred flush or batch looks again whether the gateway is still busy (seconds)
BUSY_POLL_S = 0.005


@dataclass(slots=True)
class _Stream:
    node: str
    kind: str


class SyncLog:
    """``opened``/``learned``/``closed`` from streams; ``run`` appends; ``close`` finishes."""

    def __init__(self, sink: Sink, gateway: str, *, window_s: float = 1.0, queue_size: int = 10_000,
                 batch: int = 200, slice_: int = 200) -> None:
        self.gateway = gateway
        self.window_s = window_s
        self._sink = sink
        self._queue_size = queue_size
        self._batch = batch
        self._slice = slice_
        self._streams: dict[str, _Stream] = {}
        # stream_id -> {(type_url, "ack"|"nack"): (fact, when)}; within a stream, insertion order = order of
        # the latest fact (what matters: one stream's records keep their order)
        # (the time a fact was learned is kept as seconds since the epoch)
        self._coalesced: dict[str, dict[tuple[str, str], tuple[Acked | Nack, float]]] = {}
        self._flushing: dict[str, dict[tuple[str, str], tuple[Acked | Nack, float]]] = {}  # being flushed now
        self._queue: deque[Envelope] = deque()
        self._coalesce_wake = asyncio.Event()
        self._write_wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._warn = ThrottledLog(log)
        self._tasks: list[asyncio.Task] = []
        # event ids: a random 64-bit prefix per gateway process and a counter (a uuid4 per record cost
        # more than validating it, and these records are many)
        self._id_prefix = secrets.token_hex(8) + "-"
        self._ids = itertools.count(1)
        self._appended = {}  # event type -> its counter child, resolved once
        self._busy: Callable[[], bool] | None = None
        self._busy_since: float | None = None  # loop time the current busy spell was first seen

    def defer_while(self, busy: Callable[[], bool]) -> None:
        """Hold this log's work while ``busy()`` is true, up to ``window_s`` per busy spell (see the invariants)."""
        self._busy = busy

    async def _second_to_streams(self) -> None:
        """Wait while the gateway is busy, for at most ``window_s`` since this busy spell was first seen."""
        # self._busy read again each time: ``close`` clears it to end the wait
        while self._busy is not None and self._busy():
            now = asyncio.get_running_loop().time()
            if self._busy_since is None:
                self._busy_since = now
            elif now - self._busy_since >= self.window_s:
                return  # this spell has had its window: go on (the mark stays until the gateway is idle)
            await asyncio.sleep(BUSY_POLL_S)
        self._busy_since = None

    # ------------------------------------------------------------ from streams (never block)

    def opened(self, stream_id: str, node: str, kind: str, peer: str, identity: str | None = None) -> None:
        self._streams[stream_id] = _Stream(node, kind)
        self._enqueue(t.ProxyStreamOpened, dict(node=node, gateway=self.gateway, stream_id=stream_id, kind=kind,
                                                peer=printable(peer or "unknown", 256), identity=identity),
                      _now())

    def learned(self, stream_id: str, facts: Sequence[Acked | Nack]) -> None:
        now = time.time()  # a float per ACK; made a datetime only for the facts that become records
        pending = self._coalesced.get(stream_id)
        if pending is None:
            pending = self._coalesced[stream_id] = {}
        for fact in facts:
            key = (fact.type_url, "ack" if isinstance(fact, Acked) else "nack")
            if pending.pop(key, None) is not None:
                metrics.SYNC_COALESCED.inc()
            pending[key] = (fact, now)
        if facts:
            self._coalesce_wake.set()

    def closed(self, stream_id: str, reason: str) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._flush_stream(stream_id, stream)
        self._enqueue(t.ProxyStreamClosed, dict(node=stream.node, gateway=self.gateway, stream_id=stream_id,
                                                reason=reason), _now())

    # ------------------------------------------------------------ coalescing and writing

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._coalesce_loop(), name="sync-coalesce"),
                       asyncio.create_task(self._write_loop(), name="sync-write")]

    async def close(self, timeout_s: float = 5.0) -> None:
        """Record every open stream as closed by the gateway, then drain the queue (bounded in time)."""
        self._busy = None  # the streams are ending: nothing to give way to, and the drain has a deadline
        for stream_id in list(self._streams):
            self.closed(stream_id, "gateway_stopping")
        self._flush_all()
        try:
            await asyncio.wait_for(self._drained(), timeout_s)
        except asyncio.TimeoutError:
            log.warning("sync log: %d records not appended at shutdown", len(self._queue))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _drained(self) -> None:
        while self._queue or not self._idle.is_set():
            self._write_wake.set()
            await asyncio.sleep(0.01)

    async def _coalesce_loop(self) -> None:
        # leading edge: the first fact after a quiet spell goes out at once; then at most one flush per window
        while True:
            await self._coalesce_wake.wait()
            await self._second_to_streams()
            self._coalesce_wake.clear()
            self._flushing, self._coalesced = self._coalesced, {}
            done = 0
            for stream_id in list(self._flushing):
                pending = self._flushing.pop(stream_id, None)  # gone if its stream closed meanwhile (flushed then)
                stream = self._streams.get(stream_id)
                if pending is None or stream is None:
                    continue
                for fact, when in pending.values():
                    self._enqueue_fact(stream_id, stream, fact, when)
                done += len(pending)
                if done >= self._slice:
                    done = 0
                    await asyncio.sleep(0)
                    await self._second_to_streams()
            await asyncio.sleep(self.window_s)

    def _flush_all(self) -> None:
        for stream_id in list(self._flushing) + list(self._coalesced):
            stream = self._streams.get(stream_id)
            if stream is not None:
                self._flush_stream(stream_id, stream)
        self._flushing.clear()
        self._coalesced.clear()

    def _flush_stream(self, stream_id: str, stream: _Stream) -> None:
        for waiting in (self._flushing, self._coalesced):  # older first
            for fact, when in waiting.pop(stream_id, {}).values():
                self._enqueue_fact(stream_id, stream, fact, when)

    def _enqueue_fact(self, stream_id: str, stream: _Stream, fact: Acked | Nack, when_s: float) -> None:
        when = datetime.fromtimestamp(when_s, timezone.utc)
        common = dict(node=stream.node, gateway=self.gateway, stream_id=stream_id, type_url=fact.type_url)
        if isinstance(fact, Acked):
            held, truncated = _bounded(fact.held)
            self._enqueue(t.ProxyAcked, dict(common, nonce=fact.nonce, held=held, truncated=truncated), when)
        else:
            rejected, _ = _bounded(dict(fact.resources))
            self._enqueue(t.ProxyNacked, dict(common, nonce=fact.nonce or "unknown", rejected=rejected,
                                              removed=tuple(fact.removed[: t.MAX_SYNC_NAMES]), code=fact.code,
                                              reason=printable(fact.message or "(no reason given)", 2048)), when)

    def _enqueue(self, payload_type: type[t.Payload], data: dict, when: datetime) -> None:
        if len(self._queue) >= self._queue_size:
            metrics.SYNC_DROPPED.labels("queue_full").inc()
            self._warn.warning("sync log queue full (%d records): dropping %s records", self._queue_size,
                               payload_type.TYPE)
            return
        try:
            payload = validate_payload(payload_type, data)
        except EventValidationError as exc:
            metrics.SYNC_DROPPED.labels("invalid").inc()
            self._warn.warning("sync record %s not valid, dropped: %s", payload_type.TYPE, printable(str(exc), 500))
            return
        self._queue.append(new_event(payload, producer=self.gateway, occurred_at=when,
                                     event_id=f"{self._id_prefix}{next(self._ids)}"))
        self._write_wake.set()

    async def _write_loop(self) -> None:
        while True:
            await self._write_wake.wait()
            self._write_wake.clear()
            while self._queue:
                await self._second_to_streams()
                batch = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
                self._idle.clear()
                try:
                    await self._sink(batch)
                    by_type = Counter(env.type for env in batch)  # one counter update per type and batch
                    for kind, n in by_type.items():
                        counter = self._appended.get(kind)
                        if counter is None:
                            counter = self._appended[kind] = metrics.SYNC_RECORDS.labels(kind)
                        counter.inc(n)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a broker outage must not end the writer
                    metrics.SYNC_DROPPED.labels("append_failed").inc(len(batch))
                    self._warn.warning("sync log: %d records not appended: %s", len(batch),
                                       printable(f"{type(exc).__name__}: {exc}", 500))
                finally:
                    self._idle.set()


def _bounded(versions: dict[str, str]) -> tuple[dict[str, str], bool]:
    if len(versions) <= t.MAX_SYNC_NAMES:
        return versions, False
    names = sorted(versions)[: t.MAX_SYNC_NAMES]
    return {n: versions[n] for n in names}, True


def _now() -> datetime:
    return datetime.now(timezone.utc)
