"""Read the event log up to an instant: a clean offset cut per partition.

Invariants:
- Event topics use LogAppendTime, so within a partition timestamps never go
  backwards and "every record at or before T" is a prefix: it ends at the
  first offset whose timestamp is > T (``offsets_for_times(T + 1 ms)``), or
  at the end of the partition.
- Reading stops by position, not by seeing a record at the stop offset:
  transaction markers (rules files are applied transactionally) and
  compaction leave offset gaps.
- Consumers read ``read_committed``: an aborted rules transaction is not
  history.
- Records are yielded merged across partitions in a deterministic order
  (broker timestamp, then topic, partition, offset); the fold is built not to
  depend on cross-topic order, and this order makes output reproducible.
- A record that does not decode is reported (it was dead-lettered live), not
  folded.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from events import topics
from events.codec import decode_record
from events.envelope import Logged
from events.errors import EventValidationError

log = logging.getLogger(__name__)

TOPIC_RANK = {t.name: i for i, t in enumerate(topics.EVENT_TOPICS)}


@dataclass(slots=True)
class Cut:
    """Where reading starts and stops for each event partition."""

    start: dict[TopicPartition, int]
    stop: dict[TopicPartition, int]

    @property
    def total(self) -> int:
        return sum(max(0, self.stop[tp] - self.start.get(tp, 0)) for tp in self.stop)


@dataclass(slots=True)
class ReadResult:
    events: list[Logged] = field(default_factory=list)
    undecodable: list[tuple[str, int, int, int, str]] = field(default_factory=list)  # topic, partition, offset, ts, reason
    first_timestamp_ms: int | None = None


def event_partitions() -> list[TopicPartition]:
    return [TopicPartition(t.name, p) for t in topics.EVENT_TOPICS for p in range(t.partitions)]


async def plan_cut(
    consumer: AIOKafkaConsumer,
    at_ms: int,
    start_after: Mapping[str, int] | None = None,
    partitions: Iterable[TopicPartition] | None = None,
) -> Cut:
    """``start_after`` maps "topic/partition" to the next offset to read (from a snapshot)."""
    tps = list(partitions or event_partitions())
    ends = await consumer.end_offsets(tps)
    # offsets_for_times mutates its argument (FIELD-NOTES): pass a fresh dict
    found = await consumer.offsets_for_times({tp: at_ms + 1 for tp in tps})
    beginnings = await consumer.beginning_offsets(tps)
    stop = {}
    start = {}
    for tp in tps:
        hit = found.get(tp)
        stop[tp] = hit.offset if hit is not None else ends[tp]
        start[tp] = max(beginnings[tp], (start_after or {}).get(f"{tp.topic}/{tp.partition}", 0))
    return Cut(start=start, stop=stop)


async def read_cut(
    consumer: AIOKafkaConsumer, cut: Cut, progress: Callable[[int], None] | None = None, batch: int = 10_000
) -> ReadResult:
    result = ReadResult()
    todo = [tp for tp in cut.stop if cut.stop[tp] > cut.start[tp]]
    per_partition: dict[TopicPartition, list[Logged]] = {tp: [] for tp in todo}
    if todo:
        consumer.assign(todo)
        for tp in todo:
            consumer.seek(tp, cut.start[tp])
        remaining = set(todo)
        while remaining:
            fetched = await consumer.getmany(*remaining, timeout_ms=1000, max_records=batch)
            count = 0
            for tp, records in fetched.items():
                stop = cut.stop[tp]
                for record in records:
                    if record.offset >= stop:
                        break
                    count += 1
                    try:
                        per_partition[tp].append(decode_record(record))
                    except EventValidationError as exc:
                        result.undecodable.append((record.topic, record.partition, record.offset, record.timestamp, str(exc)))
            if progress and count:
                progress(count)
            for tp in list(remaining):
                if await consumer.position(tp) >= cut.stop[tp]:
                    remaining.discard(tp)
    merged = heapq.merge(
        *per_partition.values(), key=lambda e: (e.timestamp_ms, TOPIC_RANK.get(e.topic, 99), e.partition, e.offset)
    )
    result.events = list(merged)
    return result


def new_consumer(bootstrap: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
