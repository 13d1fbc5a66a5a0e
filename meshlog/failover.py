"""Appends at a steady rate through a broker failure, and what they show.

One copy for everyone who kills a broker under load (issue 15): the demo's ``broker-kill`` scene,
``bench/kafka_failover.py`` and the cluster fault tests.

- :class:`SteadyAppends` appends events made by a factory on a fixed clock (``rate`` per second),
  whatever the acknowledgement latency: appends overlap, at most ``max_in_flight`` at once, so a
  stalled cluster holds the clock back instead of receiving a burst later. It keeps, per acknowledged
  event, when the acknowledgement came and where (partition, offset) it said the event is; an append
  not acknowledged in time is counted apart (outcome unknown: never counted as acknowledged).
- :func:`figures` (pure) turns acknowledgement times and the kill instant into the numbers a reader
  wants: the stall (the longest time without an acknowledgement) and acknowledgements per second
  before, during and after the failover.
- :func:`partition_leaders`, :func:`end_offsets` and :func:`logged_events` read the cluster: who leads
  each partition of a topic and which replicas are in sync; where each partition ends; every committed
  event since given offsets (event id -> partition, offset), to count what the log holds.

Nothing here decides what a failure is: the caller kills and restarts brokers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from events.admin import BrokerUnavailable
from events.codec import decode
from events.envelope import Envelope
from events.kafka_security import KafkaSecurity, connection_kwargs
from events.producer import EventProducer

#: how long after a kill counts as "during" the failover in :func:`figures` (seconds)
DURING_S = 5.0


@dataclass
class SteadyAppends:
    """``await SteadyAppends(bootstrap, make, rate=100).run(seconds)``; ``make(n)`` returns the n-th event."""

    bootstrap: str
    make: Callable[[int], Envelope]
    rate: float = 100.0
    max_in_flight: int = 200
    timeout_s: float = 30.0
    security: KafkaSecurity | None = None  # None: this process's settings
    acked: dict[str, float] = field(default_factory=dict)  # event id -> monotonic time of its acknowledgement
    where: dict[str, tuple[int, int]] = field(default_factory=dict)  # event id -> (partition, offset) acknowledged
    failed: int = 0  # appends not acknowledged in time: outcome unknown
    next_n: int = 0
    started_at: float | None = None  # monotonic time of the first run's start

    async def run(self, seconds: float, stop: asyncio.Event | None = None) -> None:
        """Append for ``seconds`` (or until ``stop`` is set), then wait for every append in flight."""
        async with EventProducer(self.bootstrap, timeout_s=self.timeout_s, security=self.security) as producer:
            slots = asyncio.Semaphore(self.max_in_flight)
            pending: set[asyncio.Task] = set()

            async def append(env: Envelope) -> None:
                try:
                    appended = await producer.append(env)
                    self.acked[env.event_id] = time.monotonic()
                    self.where[env.event_id] = (appended.partition, appended.offset)
                except BrokerUnavailable:
                    self.failed += 1
                finally:
                    slots.release()

            start = time.monotonic()
            if self.started_at is None:
                self.started_at = start
            sent = 0
            while time.monotonic() - start < seconds and not (stop and stop.is_set()):
                await slots.acquire()
                env = self.make(self.next_n)
                self.next_n += 1
                sent += 1
                task = asyncio.create_task(append(env))
                pending.add(task)
                task.add_done_callback(pending.discard)
                await asyncio.sleep(max(0.0, start + sent / self.rate - time.monotonic()))
            if pending:
                await asyncio.wait(pending)

    def ack_times(self) -> list[float]:
        return sorted(self.acked.values())


async def run_through(appends: SteadyAppends, seconds: float, fault_after: float,
                      fault: Callable[[], object]) -> float | None:
    """``appends.run(seconds)`` with ``fault()`` (blocking: a kill, a cut) called in a thread ``fault_after``
    seconds in, on its own clock (a stalled append must not delay it); the monotonic time the fault
    returned, or None if it did not run (an append error ended the run first)."""
    done: list[float] = []

    async def at_its_time() -> None:
        await asyncio.sleep(fault_after)
        await asyncio.to_thread(fault)
        done.append(time.monotonic())

    await asyncio.gather(appends.run(seconds), at_its_time())
    return done[0] if done else None


@dataclass(frozen=True)
class Figures:
    acked: int
    stall_s: float  # the longest time between two acknowledgements (or from the start/kill to the next one)
    first_ack_after_kill_s: float | None  # None: nothing was acknowledged after the kill
    rate_before: float  # acknowledgements per second from the start to the kill
    rate_during: float  # ... in the ``during_s`` seconds after the kill
    rate_after: float  # ... from then to the end (0 if the run ended sooner)
    per_second: tuple[int, ...]  # acknowledgements in each second from the start

    def text(self) -> str:
        first = "none" if self.first_ack_after_kill_s is None else f"{self.first_ack_after_kill_s:.2f} s"
        return (f"stall {self.stall_s:.2f} s (first acknowledgement after the kill: {first}); acknowledged/s "
                f"before {self.rate_before:.0f}, during {self.rate_during:.0f}, after {self.rate_after:.0f}")


def figures(acks: Sequence[float], start: float, kill_at: float, end: float, during_s: float = DURING_S) -> Figures:
    """Acknowledgement times (monotonic, any order) of a run from ``start`` to ``end`` with a kill at ``kill_at``."""
    if not start <= kill_at <= end:
        raise ValueError(f"kill_at {kill_at} is not within the run [{start}, {end}]")
    times = sorted(a for a in acks if start <= a <= end)
    # the start and the kill bound a gap too: nothing acknowledged for 4 s after a kill is a 4 s stall even if
    # the previous acknowledgement came just before it
    marks = sorted([start, *times])
    gaps = [b - a for a, b in zip(marks, marks[1:])]
    after_kill = [a for a in times if a > kill_at]
    before_kill = [a for a in times if a <= kill_at]
    first_after = after_kill[0] - kill_at if after_kill else None
    if first_after is not None:
        gaps.append(after_kill[0] - (before_kill[-1] if before_kill else start))
    else:
        gaps.append(end - kill_at)
    during_end = min(end, kill_at + during_s)

    def rate(lo: float, hi: float, inclusive_lo: bool = False) -> float:
        n = sum(1 for a in times if (lo <= a if inclusive_lo else lo < a) and a <= hi)
        return n / (hi - lo) if hi > lo else 0.0

    seconds = int(end - start) + 1
    per_second = [0] * seconds
    for a in times:
        per_second[min(seconds - 1, int(a - start))] += 1
    return Figures(acked=len(times), stall_s=max(gaps) if gaps else end - start, first_ack_after_kill_s=first_after,
                   rate_before=rate(start, kill_at, inclusive_lo=True), rate_during=rate(kill_at, during_end),
                   rate_after=rate(during_end, end), per_second=tuple(per_second))


async def _admin(bootstrap: str, security: KafkaSecurity | None) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(**connection_kwargs(bootstrap, security), request_timeout_ms=5000)
    await admin.start()
    return admin


async def partition_leaders(bootstrap: str, topic: str,
                            security: KafkaSecurity | None = None) -> dict[int, tuple[int, list[int]]]:
    """Partition -> (leader node id, sorted in-sync replica ids) of ``topic`` (leader -1: none elected)."""
    admin = await _admin(bootstrap, security)
    try:
        [described] = await admin.describe_topics([topic])
        return {p["partition"]: (p["leader"], sorted(p["isr"])) for p in described["partitions"]}
    finally:
        await admin.close()


async def end_offsets(bootstrap: str, topic: str, security: KafkaSecurity | None = None) -> dict[int, int]:
    """Partition -> the offset the next record of ``topic`` will get (committed or not)."""
    consumer = AIOKafkaConsumer(**connection_kwargs(bootstrap, security), enable_auto_commit=False,
                                request_timeout_ms=10000)
    await consumer.start()
    try:
        parts = await _partitions(topic, bootstrap, security)
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(parts)).items()}
    finally:
        await consumer.stop()


async def _partitions(topic: str, bootstrap: str, security: KafkaSecurity | None) -> list[TopicPartition]:
    # from the cluster's answer, not the consumer's metadata cache (empty in a fresh client)
    found = await partition_leaders(bootstrap, topic, security)
    if not found:
        raise BrokerUnavailable(f"topic {topic} has no partitions at {bootstrap}")
    return [TopicPartition(topic, p) for p in sorted(found)]


async def logged_events(bootstrap: str, topic: str, since: dict[int, int] | None = None, *,
                        keys: Callable[[str], bool] = lambda key: True,
                        security: KafkaSecurity | None = None) -> list[tuple[str, str, int, int]]:
    """(event id, key, partition, offset) of every committed event of ``topic`` whose key ``keys`` accepts,
    from ``since`` (partition -> offset; default: the beginning) to the end as of the call, in log order per
    partition. An event appended twice (no idempotence) is listed twice."""
    consumer = AIOKafkaConsumer(**connection_kwargs(bootstrap, security), enable_auto_commit=False,
                                isolation_level="read_committed", request_timeout_ms=10000)
    await consumer.start()
    try:
        parts = await _partitions(topic, bootstrap, security)
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, (since or {}).get(tp.partition, 0))
        ends = await consumer.end_offsets(parts)  # read_committed: the last stable offset
        out: list[tuple[str, str, int, int]] = []
        for tp in parts:
            while await consumer.position(tp) < ends[tp]:
                for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    key = record.key.decode(errors="replace") if record.key else ""
                    if record.offset < ends[tp] and keys(key):
                        out.append((decode(record.value).event_id, key, tp.partition, record.offset))
        return out
    finally:
        await consumer.stop()
