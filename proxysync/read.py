"""Reading ``meshlog.sync`` and the membership view back from Kafka (the I/O half of ``meshlog status``).

Invariants:
- Read-only and from the log alone: no gateway is asked anything.
- What a node is told is its membership record, with each name it holds at
  the latest body (a ClusterLoadAssignment, ``projector.publisher.LATEST``)
  at the version of that body on ``meshlog.views.resources`` (so that topic
  is read too, keeping only those bodies' versions); the view changed when
  the later of the membership and those bodies was written.
- Sync records decode through ``events.codec`` (``events.record_decoder``); one that
  does not is counted and skipped, never folded and never fatal.
- ``until_ms`` cuts both topics at a broker time (LogAppendTime: a prefix of
  each partition), so replay can ask for "as of T".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from aiokafka import TopicPartition

from events import topics
from events.envelope import Logged
from events.errors import EventValidationError
from projector.publisher import LATEST, held_at_the_latest, latest_body, parse_membership_value, resolve_told
from proxysync.table import SyncTable
from events.record_decoder import RecordDecoder
from replay.source import read_range


@dataclass(slots=True)
class ViewEntry:
    resources: dict[str, dict[str, str]]  # type_url -> name -> version (resolved: ``resolve_told``)
    changed_ms: int  # broker time of the membership record, or of a later body it holds at the latest


@dataclass(slots=True)
class SyncSnapshot:
    table: SyncTable
    views: dict[str, ViewEntry] = field(default_factory=dict)
    undecodable: int = 0
    bad_views: int = 0


async def _records(consumer, topic: str, until_ms: int | None, keep: Callable[[object], bool] | None = None) -> list:
    spec = topics.BY_NAME[topic]
    tps = [TopicPartition(topic, p) for p in range(spec.partitions)]
    starts = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    if until_ms is not None:
        cut = await consumer.offsets_for_times({tp: until_ms + 1 for tp in tps})
        ends = {tp: (cut[tp].offset if cut.get(tp) is not None else ends[tp]) for tp in tps}
    out: list = []
    for tp in tps:
        out += await read_range(consumer, tp, starts[tp], ends[tp], keep=keep)
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


async def _latest_bodies(consumer) -> dict[tuple[str, str], tuple[str, int]]:
    """(type_url, name) -> (version, broker time) of the bodies a membership may hold at the latest."""
    bodies: dict[tuple[str, str], tuple[str, int]] = {}
    # the topic is mostly per-node bodies: none of them is held
    for record in await _records(consumer, topics.VIEW_RESOURCES, None, keep=held_at_the_latest):
        body = latest_body(record)
        if body is None:
            continue
        ident, version = body
        if version is None:
            bodies.pop(ident, None)
        else:
            bodies[ident] = (version, record.timestamp)
    return bodies


async def read_views(consumer) -> tuple[dict[str, ViewEntry], int]:
    """Every node's current view: its membership (the compacted view topic read to its end), resolved."""
    bodies = await _latest_bodies(consumer)
    versions = {ident: version for ident, (version, _ms) in bodies.items()}
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
            changed_ms = max([record.timestamp] + [bodies[(u, n)][1] for u, names in resources.items()
                                                   for n, v in names.items() if v == LATEST and (u, n) in bodies])
            views[node] = ViewEntry(resolve_told(resources, versions), changed_ms)
        except (ValueError, KeyError, TypeError, AttributeError):
            bad += 1
    return views, bad


async def read_snapshot(consumer) -> SyncSnapshot:
    table, undecodable = await read_sync(consumer)
    views, bad_views = await read_views(consumer)
    return SyncSnapshot(table, views, undecodable, bad_views)
