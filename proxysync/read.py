"""Reading ``meshlog.sync`` and the membership view back from Kafka (the I/O half of ``meshlog status``).

Invariants:
- Read-only and from the log alone: no gateway is asked anything.
- Sync records decode through ``events.codec`` (``events.record_decoder``); one that
  does not is counted and skipped, never folded and never fatal.
- ``until_ms`` cuts both topics at a broker time (LogAppendTime: a prefix of
  each partition), so replay can ask for "as of T".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import TopicPartition

from events import topics
from events.envelope import Logged
from events.errors import EventValidationError
from projector.publisher import parse_membership_value
from proxysync.table import SyncTable
from events.record_decoder import RecordDecoder
from replay.source import read_range


@dataclass(slots=True)
class ViewEntry:
    resources: dict[str, dict[str, str]]  # type_url -> name -> version
    changed_ms: int  # broker time of the membership record


@dataclass(slots=True)
class SyncSnapshot:
    table: SyncTable
    views: dict[str, ViewEntry] = field(default_factory=dict)
    undecodable: int = 0
    bad_views: int = 0


async def _records(consumer, topic: str, until_ms: int | None) -> list:
    spec = topics.BY_NAME[topic]
    tps = [TopicPartition(topic, p) for p in range(spec.partitions)]
    starts = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    if until_ms is not None:
        cut = await consumer.offsets_for_times({tp: until_ms + 1 for tp in tps})
        ends = {tp: (cut[tp].offset if cut.get(tp) is not None else ends[tp]) for tp in tps}
    out: list = []
    for tp in tps:
        out += await read_range(consumer, tp, starts[tp], ends[tp])
    out.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
    return out


async def read_sync_records(consumer, until_ms: int | None = None) -> tuple[list[Logged], int]:
    """The decoded ``meshlog.sync`` events (up to ``until_ms``) in log order, and how many did not decode."""
    if topics.SYNC not in await consumer.topics():
        return [], 0  # a log from before the sync topic existed
    decode = RecordDecoder()
    out: list[Logged] = []
    bad = 0
    for record in await _records(consumer, topics.SYNC, until_ms):
        try:
            out.append(decode(record))
        except EventValidationError:
            bad += 1
    return out, bad


async def read_sync(consumer, until_ms: int | None = None) -> tuple[SyncTable, int]:
    """The sync table folded from ``meshlog.sync`` (up to ``until_ms``), and how many records did not decode."""
    records, bad = await read_sync_records(consumer, until_ms)
    return SyncTable().apply_all(records), bad


async def read_views(consumer) -> tuple[dict[str, ViewEntry], int]:
    """Every node's current membership (the compacted view topic read to its end)."""
    views: dict[str, ViewEntry] = {}
    bad = 0
    for record in await _records(consumer, topics.VIEW_MEMBERSHIP, None):
        try:
            node = record.key.decode()
        except (AttributeError, UnicodeDecodeError):
            bad += 1
            continue
        if record.value is None:
            views.pop(node, None)
            continue
        try:
            _node, resources = parse_membership_value(record.value)
            views[node] = ViewEntry({u: dict(names) for u, names in resources.items()}, record.timestamp)
        except (ValueError, KeyError, TypeError, AttributeError):
            bad += 1
    return views, bad


async def read_snapshot(consumer) -> SyncSnapshot:
    table, undecodable = await read_sync(consumer)
    views, bad_views = await read_views(consumer)
    return SyncSnapshot(table, views, undecodable, bad_views)
