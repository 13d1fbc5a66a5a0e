"""Sharing work through a Kafka consumer group on a record-less topic.

Used by ``registrar healthcheck`` (``meshlog.healthcheck.shards``) and by
``projector run --group`` (``meshlog.projector.shards``): each process joins
one consumer group on a topic that never carries a record, and the group's
partition assignment is the work split: partition i is shard i, and a key
belongs to shard ``shard_of(key, partitions)``.

Invariants:
- ``shard_of`` is ``crc32(key) % partitions``: stable across processes, hosts
  and Python versions (never ``hash()``, which is salted per process), so
  every member computes the same owner from the same assignment.
- The group hands each partition to exactly one live member; during a
  rebalance briefly to none. ``on_revoked`` is awaited by the group before
  the partitions move on (aiokafka awaits the listener before rejoining), so
  a member can finish what it was doing for them first.
- A member that stops cleanly leaves the group at once; one killed outright
  loses its shards to the others after ``session_timeout_ms`` (6 s, the
  broker's default ``group.min.session.timeout.ms``: the shortest allowed).
- ``ThreadedShardGroup`` keeps the member (and its heartbeats) in a thread of
  its own, for a process whose loop is busy with CPU work for seconds at a
  time: it is evicted only when the process really stops answering.
- Nothing is ever consumed: the member polls only to stay alive
  (``max.poll.interval.ms``); a broker outage is reported to the caller's
  ``meshlog.outage`` log and polling goes on.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import zlib
from typing import Any, Awaitable, Callable, Iterable

from aiokafka import AIOKafkaConsumer
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from events.admin import BrokerUnavailable
from events.kafka_security import connection_kwargs

log = logging.getLogger(__name__)

SESSION_TIMEOUT_MS = 6000  # the broker's default group.min.session.timeout.ms: the shortest allowed
HEARTBEAT_INTERVAL_MS = 2000

ShardsCallback = Callable[[set[int]], "Awaitable[None] | None"]


def shard_of(key: str, partitions: int) -> int:
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    return zlib.crc32(key.encode("utf-8")) % partitions


def owned(keys: Iterable[str], shards: Iterable[int], partitions: int) -> set[str]:
    mine = set(shards)
    return {k for k in keys if shard_of(k, partitions) in mine}


async def _call(callback: ShardsCallback, shards: set[int]) -> None:
    got = callback(shards)
    if inspect.isawaitable(got):
        await got


class _Listener(ConsumerRebalanceListener):
    def __init__(self, group: "ShardGroup") -> None:
        self._group = group

    async def on_partitions_revoked(self, revoked) -> None:
        await _call(self._group.on_revoked, {tp.partition for tp in revoked if tp.topic == self._group.topic})

    async def on_partitions_assigned(self, assigned) -> None:
        await _call(self._group.on_assigned, {tp.partition for tp in assigned if tp.topic == self._group.topic})


class ShardGroup:
    """One member of the group ``group`` on ``topic``: ``start()``, then ``poll_forever()`` as a task, ``stop()``.

    ``on_assigned(shards)`` gets the member's whole new assignment, ``on_revoked(shards)`` what it gives up
    (before the others get it); either may be a coroutine function.
    """

    def __init__(self, bootstrap: str, topic: str, group: str, *, client_id: str, on_assigned: ShardsCallback,
                 on_revoked: ShardsCallback, outage: Any, timeout_s: float = 10.0,
                 session_timeout_ms: int = SESSION_TIMEOUT_MS,
                 heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS) -> None:
        self.bootstrap, self.topic, self.group = bootstrap, topic, group
        self.on_assigned, self.on_revoked = on_assigned, on_revoked
        self._outage = outage
        self._timeout_s = timeout_s
        self._consumer = AIOKafkaConsumer(
            **connection_kwargs(bootstrap), group_id=group, client_id=client_id,
            enable_auto_commit=False, auto_offset_reset="latest",
            session_timeout_ms=session_timeout_ms, heartbeat_interval_ms=heartbeat_interval_ms,
        )

    async def start(self) -> None:
        """Connect and subscribe (raises ``BrokerUnavailable``); the first assignment arrives while polling."""
        try:
            await asyncio.wait_for(self._consumer.start(), self._timeout_s)
        except (asyncio.TimeoutError, KafkaError, OSError) as exc:
            raise BrokerUnavailable(
                f"Kafka at {self.bootstrap} did not answer within {self._timeout_s:g}s ({type(exc).__name__})"
            ) from None
        self._consumer.subscribe([self.topic], listener=_Listener(self))

    async def poll_forever(self) -> None:
        while True:  # nothing is ever written: polling keeps us a live member (max.poll.interval)
            try:
                await self._consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:
                self._outage.failure(f"group {self.group}: {exc}; retrying")
                await asyncio.sleep(1.0)

    async def stop(self, timeout_s: float) -> bool:
        """Leave the group (its shards move at once); False if that did not finish in time."""
        try:
            await asyncio.wait_for(self._consumer.stop(), timeout_s)  # sends LeaveGroup
        except Exception as exc:  # noqa: BLE001 - shutting down: report, go on
            log.warning("leaving group %s: %s (its shards move after the session timeout)", self.group, exc)
            return False
        log.info("left group %s", self.group)
        return True


class _RelayedOutage:
    """The caller's ``meshlog.outage`` log, told from the member's thread."""

    def __init__(self, outage: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._outage, self._loop = outage, loop

    def failure(self, text: str) -> None:
        self._loop.call_soon_threadsafe(self._outage.failure, text)


class ThreadedShardGroup:
    """A ``ShardGroup`` whose member lives in its own thread and event loop: for a process whose loop does
    long stretches of CPU work (the projector renders for seconds on a loaded host).

    aiokafka heartbeats from the loop that runs the consumer; a loop held longer than the session timeout
    gets the member evicted while it still believes it owns its shards, and another member is given them
    meanwhile. Here the heartbeats run in a thread that only needs the GIL now and then, and the callbacks
    run on the caller's loop (``on_revoked`` still awaited before the shards move on).
    """

    def __init__(self, bootstrap: str, topic: str, group: str, *, client_id: str, on_assigned: ShardsCallback,
                 on_revoked: ShardsCallback, outage: Any, timeout_s: float = 10.0,
                 session_timeout_ms: int = SESSION_TIMEOUT_MS,
                 heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS) -> None:
        self._args = dict(bootstrap=bootstrap, topic=topic, group=group, client_id=client_id, timeout_s=timeout_s,
                          session_timeout_ms=session_timeout_ms, heartbeat_interval_ms=heartbeat_interval_ms)
        self._on_assigned, self._on_revoked, self._outage = on_assigned, on_revoked, outage
        self.group = group
        self._caller: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ended: asyncio.Future | None = None  # on the caller's loop: the member's thread ended by itself

    def _relay(self, callback: ShardsCallback) -> ShardsCallback:
        async def in_caller(shards: set[int]) -> None:
            await _call(callback, shards)

        async def relayed(shards: set[int]) -> None:  # runs on the member's loop: wait for the caller's
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(in_caller(shards), self._caller))

        return relayed

    async def start(self) -> None:
        """Start the member's thread; raises ``BrokerUnavailable`` if it cannot join."""
        self._caller = asyncio.get_running_loop()
        started: asyncio.Future = self._caller.create_future()
        self._ended = self._caller.create_future()

        def ended(exc: BaseException) -> None:
            if not self._ended.done():
                self._ended.set_exception(exc)

        def report(exc: BaseException | None) -> None:
            if started.done():
                return
            if exc is not None:
                started.set_exception(exc)
            else:
                started.set_result(None)

        async def member() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            group = ShardGroup(**self._args, on_assigned=self._relay(self._on_assigned),
                               on_revoked=self._relay(self._on_revoked),
                               outage=_RelayedOutage(self._outage, self._caller))
            try:
                await group.start()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                self._caller.call_soon_threadsafe(report, exc)
                return
            self._caller.call_soon_threadsafe(report, None)
            poll = asyncio.ensure_future(group.poll_forever())
            stopping = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait([poll, stopping], return_when=asyncio.FIRST_COMPLETED)
            if poll.done() and not poll.cancelled():  # polling never ends by itself: the member is lost
                exc = poll.exception() or RuntimeError("polling ended")
                self._caller.call_soon_threadsafe(ended, RuntimeError(f"group {self.group}: member lost ({exc!r})"))
            stopping.cancel()
            poll.cancel()
            await asyncio.gather(poll, stopping, return_exceptions=True)
            await group.stop(self._args["timeout_s"])

        self._thread = threading.Thread(target=asyncio.run, args=(member(),), name=f"group {self.group}", daemon=True)
        self._thread.start()
        await started

    async def poll_forever(self) -> None:
        """Nothing to do on the caller's loop: the member polls in its thread. Raises if the member is lost
        (its owner must then stop publishing for the shards it thinks it has)."""
        await self._ended

    async def stop(self, timeout_s: float) -> bool:
        """Leave the group and end the thread (bounded)."""
        if self._thread is None:
            return True
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        await asyncio.to_thread(self._thread.join, timeout_s)
        return not self._thread.is_alive()
