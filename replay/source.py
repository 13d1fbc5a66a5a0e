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
  ``iter_cut`` streams that order through ``events.merge_gate``, the live
  projector's own merge (a record is released once no unfinished partition
  can still deliver an earlier one), so memory stays bounded by what is
  fetched ahead, not by the length of the log.
- A record that does not decode is reported, not folded, and never stops a
  read: it is skipped as every reader skips it (``events.undecodable``).
  Decoding follows ``events.codec`` exactly (``events.record_decoder``), topic check
  included; whether the live projector dead-lettered a record is a separate
  question (``replay.deadletters``).
"""

from __future__ import annotations

import bisect
import logging
import math
import operator
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from events import topics
from events.admin import partitions_of
from events.envelope import Logged
from events.kafka_security import connection_kwargs
from events.errors import EventValidationError
from events.merge_gate import MergeGate
from events.undecodable import Undecodable, UndecodableLog
from events.record_decoder import RecordDecoder
from replay.attested_runs import AttestedRuns
from projector.snapshots import tp_key

log = logging.getLogger(__name__)

TOPIC_RANK = topics.EVENT_TOPIC_RANK


class ReadStalled(RuntimeError):
    """A partition of a cut stopped advancing (the broker went away mid-read)."""


@dataclass(slots=True)
class Cut:
    """Where reading starts and stops for each event partition (stop is exclusive)."""

    start: dict[TopicPartition, int]
    stop: dict[TopicPartition, int]

    @property
    def total(self) -> int:
        return sum(max(0, self.stop[tp] - self.start.get(tp, 0)) for tp in self.stop)

    def stops_by_key(self) -> dict[str, int]:
        return {f"{tp.topic}/{tp.partition}": off for tp, off in sorted(self.stop.items())}


@dataclass(slots=True)
class ReadResult:
    events: list[Logged] = field(default_factory=list)
    undecodable: list[Undecodable] = field(default_factory=list)
    first_timestamp_ms: int | None = None


@dataclass(slots=True)
class Batch:
    """A slice of the merged order: events to fold, and records that did not decode."""

    events: list[Logged]
    undecodable: list[Undecodable]
    records: int  # records consumed for this batch (for progress)


async def event_partitions(consumer: AIOKafkaConsumer) -> list[TopicPartition]:
    """Every partition the broker has for the event topics: a log created before ``events.topics`` raised a
    count keeps its own (asking for a partition that does not exist would time out, and one the spec does
    not list would be missed)."""
    have = await partitions_of(consumer, [t.name for t in topics.EVENT_TOPICS])
    return [TopicPartition(t.name, p) for t in topics.EVENT_TOPICS for p in have.get(t.name, range(t.partitions))]


def merge_key(e: Logged) -> tuple[int, int, int, int]:
    return topics.merge_order(e.timestamp_ms, e.topic, e.partition, e.offset)


def _tp_order(tp: TopicPartition) -> tuple[int, str, int]:
    return (TOPIC_RANK.get(tp.topic, 99), tp.topic, tp.partition)


_OFFSET = operator.attrgetter("offset")


async def existing_topics(consumer: AIOKafkaConsumer) -> set[str]:
    return set(await consumer.topics())


async def first_event_ms(consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition] | None = None) -> int | None:
    """Broker timestamp of the earliest record on the event topics, or None if they are empty."""
    tps = list(partitions or await event_partitions(consumer))
    found = await consumer.offsets_for_times({tp: 0 for tp in tps})
    stamps = [hit.timestamp for hit in found.values() if hit is not None]
    return min(stamps) if stamps else None


async def plan_cut(
    consumer: AIOKafkaConsumer,
    at_ms: int,
    start_after: Mapping[str, int] | None = None,
    partitions: Iterable[TopicPartition] | None = None,
) -> Cut:
    """``start_after`` maps "topic/partition" to the next offset to read (from a snapshot, or an earlier cut)."""
    tps = list(partitions or await event_partitions(consumer))
    ends = await consumer.end_offsets(tps)
    # offsets_for_times mutates its argument (FIELD-NOTES): pass a fresh dict
    found = await consumer.offsets_for_times({tp: at_ms + 1 for tp in tps})
    beginnings = await consumer.beginning_offsets(tps)
    stop = {}
    start = {}
    for tp in tps:
        hit = found.get(tp)
        # read_committed end offsets are the last stable offsets: a transaction still open is not
        # history yet (and reading into it would wait for its outcome)
        stop[tp] = min(hit.offset, ends[tp]) if hit is not None else ends[tp]
        start[tp] = max(beginnings[tp], (start_after or {}).get(f"{tp.topic}/{tp.partition}", 0))
    return Cut(start=start, stop=stop)


async def iter_cut(
    consumer: AIOKafkaConsumer,
    cut: Cut,
    *,
    decoder: Callable[[object], Logged] | None = None,
    batch: int = 10_000,
    stall_s: float = 60.0,
    attested: AttestedRuns | None = None,
) -> AsyncIterator[Batch]:
    """The records of ``cut``, decoded, in merge order, as batches (each already in order).

    The merge is ``events.merge_gate``'s, the projector's own: a record is released once no unfinished
    partition can still deliver an earlier one. Replay never goes past a partition (``hold_s`` infinite): one
    that stops moving ends the read with ``ReadStalled``.

    ``attested``: the projector's runs replay believes. Each partition's records are matched against them as
    fetched, before the merge (``replay.attested_runs``), and ``decoder`` (a ``RecordDecoder``) is given this
    read's ``RunScreen``: the records of runs matched whole are decoded without their signature fields."""
    decode = decoder or RecordDecoder()
    screen = attested.screen() if attested else None
    if screen is not None:
        decode.attested = screen
    skipped = UndecodableLog(None, reader="replay")  # reported in the output, not logged
    todo = sorted((tp for tp in cut.stop if cut.stop[tp] > cut.start[tp]), key=_tp_order)
    if not todo:
        return
    consumer.assign(todo)
    for tp in todo:
        consumer.seek(tp, cut.start[tp])
    keys = {tp: tp_key(tp.topic, tp.partition) for tp in todo}
    gate = MergeGate(hold_s=math.inf)
    stops = {keys[tp]: cut.stop[tp] for tp in todo}  # a partition is behind until the cut's stop
    positions = {keys[tp]: cut.start[tp] for tp in todo}
    remaining = set(todo)
    last_progress = time.monotonic()
    while remaining or gate.held:
        count = 0
        if remaining:
            fetched = await consumer.getmany(*remaining, timeout_ms=1000, max_records=batch)
            for tp, records in fetched.items():
                stop = cut.stop[tp]
                if records and records[-1].offset >= stop:
                    records = records[:bisect.bisect_left(records, stop, key=_OFFSET)]
                count += len(records)
                gate.offer(keys[tp], records if screen is None else screen.offer(tp.topic, tp.partition, records))
            for tp in list(remaining):
                pos = await consumer.position(tp)
                if pos != positions[keys[tp]]:
                    positions[keys[tp]] = pos
                    last_progress = time.monotonic()
                if pos >= cut.stop[tp]:
                    remaining.discard(tp)
                    if screen is not None:  # a run the cut ends inside: its records go on, unmatched
                        gate.offer(keys[tp], screen.finish(tp.topic, tp.partition))
            if remaining and time.monotonic() - last_progress > stall_s:
                raise ReadStalled(
                    f"reading {', '.join(f'{tp.topic}/{tp.partition}' for tp in sorted(remaining, key=_tp_order))} "
                    f"made no progress for {stall_s:g}s (broker unavailable?)"
                )
        ready = gate.take(positions, stops, time.monotonic(), gate.held)
        events: list[Logged] = []
        bad: list[Undecodable] = []
        append = events.append
        for record in ready:  # ``decode_or_skip``, inline: this loop runs for every record of the cut
            try:
                append(decode(record))
            except EventValidationError as exc:
                bad.append(skipped.note(record, exc))
        if events or bad or count:
            yield Batch(events, bad, count)


async def read_cut(
    consumer: AIOKafkaConsumer, cut: Cut, progress: Callable[[int], None] | None = None, batch: int = 10_000
) -> ReadResult:
    """The whole cut in memory (``iter_cut`` streams it)."""
    result = ReadResult()
    async for b in iter_cut(consumer, cut, batch=batch):
        result.events.extend(b.events)
        result.undecodable.extend(b.undecodable)
        if progress and b.records:
            progress(b.records)
    if result.events:
        result.first_timestamp_ms = result.events[0].timestamp_ms
    return result


async def read_range(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    start: int,
    stop: int,
    *,
    until: Callable[[object], bool] | None = None,
    keep: Callable[[object], bool] | None = None,
) -> list:
    """Raw records of one partition with ``start <= offset < stop``, in order; stops early once ``until(record)``;
    with ``keep``, only the records it accepts are held (a reader of a few keys of a large topic)."""
    out: list = []
    if stop <= start:
        return out
    consumer.assign([tp])
    consumer.seek(tp, start)
    while await consumer.position(tp) < stop:
        fetched = await consumer.getmany(tp, timeout_ms=1000, max_records=500)
        for record in fetched.get(tp, ()):
            if record.offset >= stop:
                return out
            if keep is None or keep(record):
                out.append(record)
            if until is not None and until(record):
                return out
    return out


async def read_window(consumer: AIOKafkaConsumer, topic: str, from_ms: int, to_ms: int | None = None) -> list:
    """Raw records of every partition of a (support) topic logged in ``[from_ms, to_ms]`` (to the end if None)."""
    spec = topics.BY_NAME.get(topic)
    tps = [TopicPartition(topic, p) for p in range(spec.partitions if spec else 1)]
    ends = await consumer.end_offsets(tps)
    starts = await consumer.offsets_for_times({tp: max(0, from_ms) for tp in tps})
    stops = await consumer.offsets_for_times({tp: to_ms + 1 for tp in tps}) if to_ms is not None else {}
    out: list = []
    for tp in tps:
        first = starts.get(tp)
        if first is None:
            continue
        last = stops.get(tp)
        out += await read_range(consumer, tp, first.offset, last.offset if last is not None else ends[tp])
    return out


# Every event partition must get data in each fetch: the broker fills a fetch partition by partition up to
# fetch_max_bytes, so with 8 MiB per partition the first eight of the 13 took the whole 64 MiB, again and again,
# and the others delivered nothing until those were read to their end. ``iter_cut`` releases a record only once
# every partition has delivered past it, so it held every event read meanwhile: a cold 1M-event replay held
# ~780k decoded events (RSS 666 MB; 440 MB with every partition fed).
FETCH_MAX_BYTES = 64 * 1024 * 1024
PARTITION_FETCH_BYTES = 1024 * 1024


def new_consumer(bootstrap: str, *, request_timeout_ms: int = 15_000) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **connection_kwargs(bootstrap),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
        fetch_max_bytes=FETCH_MAX_BYTES,
        request_timeout_ms=request_timeout_ms,
        # metadata for a topic is fetched on first use and the request retried after this backoff:
        # the default 100 ms costs ~0.3 s per command before the first offset lookup answers
        retry_backoff_ms=10,
        # aiokafka answers an offset lookup (end_offsets, offsets_for_times) only after the fetch in flight
        # returns, and at the end of a partition that fetch waits fetch_max_wait_ms at the broker: with the
        # default 500 ms each lookup took 0.5-1 s, and `replay log` (a dozen lookups) spent 8 of its 9 s
        # there. 50 ms keeps an idle long-lived reader (replay ui, the CA's identity log) at ~1 % of a core.
        fetch_max_wait_ms=50,
    )
