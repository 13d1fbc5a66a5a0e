"""The console's questions, answered by replay's own engine over one Kafka reader.

- ``mesh(at)`` is ``replay at --json``'s document, ``node(at, n)`` is
  ``replay at --node n --full --accepted --json``'s, ``diff(a, b, n)`` is ``replay diff
  [--node n] --json``'s: the same ``rebuild``/``walk`` (``replay.engine``) and
  the same document builders (``replay.report``); nothing here folds or
  renders by other means.
- ``timeline`` answers from a ``TimelineIndex`` of every event's time, kind and
  service — the event topics, rejected rules (``meshlog.rejections``),
  identity events (``meshlog.identities``) and the proxies' ACKs/NACKs and
  streams (``meshlog.sync``, filed under their node), where the log has them — built by one scan
  of the log at start and extended by reading only what was appended since
  (at most once per ``refresh_s``).
- ``events(from, to)`` reads the window's records (bounded by ``limit``) for
  the details behind the timeline's marks; with ``kind``/``service`` only
  those rows.

Invariants: one consumer, used by one question at a time (an asyncio lock:
aiokafka's assign/seek are not for concurrent readers); rebuilt states are
cached by instant (a few, LRU) — safe because the fold and ``render_all``
never modify a state or a previous render. Read-only: nothing here produces
to Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from datetime import datetime, timezone

from aiokafka import AIOKafkaConsumer, TopicPartition

from events import topics
from events.codec import decode_record
from events.errors import EventValidationError
from projector.render import render
from proxysync.read import read_sync
from proxysync.status_cli import proxy_row
from replay.acceptance import diff_sync_docs, sync_records_for
from replay import report
from events.record_decoder import RecordDecoder
from replay.engine import (
    Dropped, NotFound, OutOfRange, Rebuilt, check_instant, if_changes_something, iso, node_versions, rebuild, walk,
)
from replay.source import Cut, existing_topics, iter_cut, plan_cut, read_range, read_window
from replay.timeparse import to_ms
from replay.ui.timeline import DEAD_LETTER, REJECTED, TimelineIndex, event_kind, event_service

log = logging.getLogger(__name__)

EVENTS_LIMIT = 500
# facts about the mesh logged outside the event topics: rejected rules, identities, what the proxies ACKed/NACKed
SUPPORT_TOPICS = (topics.REJECTIONS, topics.IDENTITIES, topics.SYNC)
CACHED_INSTANTS = 6


def now_ms() -> int:
    return to_ms(datetime.now(timezone.utc))


class Console:
    def __init__(self, consumer: AIOKafkaConsumer, *, use_snapshot: bool = True, refresh_s: float = 1.0,
                 verify_events: bool = True) -> None:
        self.consumer = consumer
        self.use_snapshot = use_snapshot
        self.verify_events = verify_events  # fold as the projector does (False: --insecure-events)
        self.refresh_s = refresh_s
        self.index = TimelineIndex()
        self.lock = asyncio.Lock()
        self._decoder = RecordDecoder()
        self._stops: dict[str, int] = {}  # "topic/partition" -> next event offset to index
        self._support_next: dict[TopicPartition, int] = {}  # rejections/identities -> next offset to index
        self._refreshed_at = float("-inf")
        self._cache: OrderedDict[int, Rebuilt] = OrderedDict()
        self._docs: OrderedDict[tuple, dict] = OrderedDict()  # (question, instant, node) -> document
        self.stats: dict[str, float] = {}

    async def _verifier(self):
        """The identities logged so far, as a verifier (None in insecure mode); they answer by log time, so a
        state cached for an earlier instant stays right as identities are added."""
        if not self.verify_events:
            return None
        from replay.identities import load_verifier

        return await load_verifier(self.consumer, now_ms())

    # ------------------------------------------------------------ the timeline index

    async def refresh(self, *, force: bool = False) -> None:
        """Index what was appended since the last refresh (everything, the first time)."""
        async with self.lock:
            if not force and time.monotonic() - self._refreshed_at < self.refresh_s:
                return
            t0 = time.perf_counter()
            have = await existing_topics(self.consumer)
            if all(spec.name in have for spec in topics.EVENT_TOPICS):
                cut = await plan_cut(self.consumer, now_ms(), start_after=self._stops)
                await self._index_events(cut)
                self._stops = cut.stops_by_key()
            for topic in SUPPORT_TOPICS:
                if topic in have:
                    await self._index_support(topic)
            self._refreshed_at = time.monotonic()
            self.stats["last_refresh_s"] = round(time.perf_counter() - t0, 4)

    async def _index_events(self, cut: Cut) -> None:
        index = self.index
        async for batch in iter_cut(self.consumer, cut, decoder=self._decoder):
            for lg in batch.events:
                payload = lg.envelope.payload
                index.add(lg.timestamp_ms, event_kind(payload, lg.envelope.type), event_service(payload),
                          lg.topic, lg.partition, lg.offset)
            for topic, partition, offset, ts, _reason in batch.undecodable:
                index.add(ts, DEAD_LETTER, "", topic, partition, offset)

    async def _index_support(self, topic: str) -> None:
        spec = topics.BY_NAME[topic]
        tps = [TopicPartition(topic, p) for p in range(spec.partitions)]
        ends = await self.consumer.end_offsets(tps)
        for tp in tps:
            for record in await read_range(self.consumer, tp, self._support_next.get(tp, 0), ends[tp]):
                kind_service = _support_kind(record)
                if kind_service is not None:
                    self.index.add(record.timestamp, *kind_service, record.topic, record.partition, record.offset)
            self._support_next[tp] = ends[tp]

    async def timeline(self, from_ms: int, to_ms_: int, buckets: int) -> dict:
        await self.refresh()
        t0 = time.perf_counter()
        doc = self.index.window(from_ms, to_ms_, buckets)
        doc["from"], doc["to"] = iso(from_ms), iso(to_ms_)
        doc["compute_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        return doc

    # ------------------------------------------------------------ the mesh, a node, a diff (replay's engine)

    async def _rebuilt(self, at_ms: int, *, what: str) -> Rebuilt:
        """The state at ``at_ms`` (cached); the caller holds the lock."""
        first = await check_instant(self.consumer, at_ms, now_ms(), what=what)
        hit = self._cache.get(at_ms)
        if hit is None:
            hit = await rebuild(self.consumer, at_ms, use_snapshot=self.use_snapshot, verifier=await self._verifier())
            hit.decoder = None  # a cached instant does not keep its decoder's memo alive (tens of MB on a long log)
            self._cache[at_ms] = hit
            while len(self._cache) > CACHED_INSTANTS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(at_ms)
        hit.first_ms = first
        return hit

    def _remember(self, key: tuple, doc: dict) -> dict:
        self._docs[key] = doc
        while len(self._docs) > 4 * CACHED_INSTANTS:
            self._docs.popitem(last=False)
        return doc

    async def mesh(self, at_ms: int) -> dict:
        """``replay at --at T --json``."""
        async with self.lock:
            rebuilt = await self._rebuilt(at_ms, what="at")
        hit = self._docs.get(("mesh", at_ms, None))
        if hit is not None:
            return hit
        return self._remember(("mesh", at_ms, None), report.mesh_document(
            rebuilt.state, rebuilt.rendered(bodies=False), at_ms=at_ms, source=rebuilt.source()))

    async def node(self, at_ms: int, node: str) -> dict:
        """``replay at --at T --node N --full --json``."""
        async with self.lock:
            rebuilt = await self._rebuilt(at_ms, what="at")
        hit = self._docs.get(("node", at_ms, node))
        if hit is not None:
            return hit
        state = rebuilt.state
        if state.node_instance(node) is None:
            raise NotFound(f"node {node!r} has no registered instance at {iso(at_ms)}")
        async with self.lock:
            sync_table = (await read_sync(self.consumer, until_ms=at_ms))[0]
        versions = node_versions(state, node)
        doc = report.node_document(state, node, versions, at_ms=at_ms, source=rebuilt.source(),
                                   bodies=render(state, node))
        # what the proxy had ACKed by then, matched as `meshlog status` matches (replay at --accepted)
        doc["accepted"] = {**proxy_row(node, sync_table.proxies.get(node), versions, None), "as_of_ms": at_ms}
        return self._remember(("node", at_ms, node), doc)

    async def diff(self, from_ms: int, to_ms_: int, node: str | None) -> dict:
        """``replay diff --from A --to B [--node N] --json``."""
        if from_ms > to_ms_:
            raise OutOfRange(f"from {iso(from_ms)} is after to {iso(to_ms_)}")
        undecodable: list = []
        async with self.lock:
            await check_instant(self.consumer, to_ms_, now_ms(), what="to")
            base = self._cache.get(from_ms)
            verifier = await self._verifier()
            if base is None:
                base = await rebuild(self.consumer, from_ms, use_snapshot=self.use_snapshot, verifier=verifier)
            dropped = Dropped()
            walker, steps, _cut = await walk(self.consumer, base, to_ms_, node=node, on_undecodable=undecodable.append,
                                             keep=if_changes_something, dropped=dropped, verifier=verifier)
            sync_records = await sync_records_for(self.consumer, to_ms_)
        if node and not walker.start_membership and not walker.membership():
            raise NotFound(f"node {node!r} has no registered instance at {iso(from_ms)} nor at {iso(to_ms_)}")
        return report.diff_document(
            from_ms=from_ms, to_ms=to_ms_, node=node,
            start_versions=walker.start_versions, end_versions=walker.versions(),
            start_membership=walker.start_membership, end_membership=walker.membership(),
            steps=steps, undecodable=[{**report.dead_letter_doc(u, None), "recorded": None} for u in undecodable],
            **diff_sync_docs(steps, sync_records, node), dropped=dropped,
        )

    # ------------------------------------------------------------ the records behind the marks

    async def events(self, from_ms: int, to_ms_: int, *, kind: str | None = None, service: str | None = None,
                     limit: int = EVENTS_LIMIT) -> dict:
        """The window's events (``report.event_ref`` + payload), rejections and undecodable records, oldest first."""
        out: list[dict] = []
        more = False
        async with self.lock:
            have = await existing_topics(self.consumer)
            if all(spec.name in have for spec in topics.EVENT_TOPICS):
                start = (await plan_cut(self.consumer, from_ms - 1)).stops_by_key()
                cut = await plan_cut(self.consumer, to_ms_, start_after=start)
                async for batch in iter_cut(self.consumer, cut, decoder=self._decoder):
                    for lg in batch.events:
                        payload = lg.envelope.payload
                        if (kind is None or event_kind(payload, lg.envelope.type) == kind) and (
                                service is None or event_service(payload) == service):
                            out.append({"kind": event_kind(payload, lg.envelope.type),
                                        "service": event_service(payload), **report.event_ref(lg),
                                        "payload": payload.model_dump(mode="json")})
                    for topic, partition, offset, ts, reason in batch.undecodable:
                        if kind in (None, DEAD_LETTER) and service in (None, ""):
                            out.append({"kind": DEAD_LETTER, "service": "", "time": iso(ts), "timestamp_ms": ts,
                                        "topic": topic, "partition": partition, "offset": offset, "reason": reason})
                    if len(out) > limit:
                        more = True
                        break
            for topic in SUPPORT_TOPICS:
                if topic not in have or more:
                    continue
                for record in await read_window(self.consumer, topic, from_ms, to_ms_):
                    kind_service = _support_kind(record)
                    if kind_service is None or kind not in (None, kind_service[0]) or service not in (
                            None, kind_service[1]):
                        continue
                    lg = decode_record(record)
                    if topic == topics.REJECTIONS:
                        doc = report.rejection_doc(None, lg.payload, record.timestamp)
                    else:
                        doc = {**report.event_ref(lg), "payload": lg.payload.model_dump(mode="json")}
                    out.append({"kind": kind_service[0], "service": kind_service[1], **doc})
        out.sort(key=lambda e: (e["timestamp_ms"], e.get("topic", ""), e.get("offset", 0)))
        if len(out) > limit:
            out, more = out[:limit], True
        return {"from": iso(from_ms), "from_ms": from_ms, "to": iso(to_ms_), "to_ms": to_ms_,
                "filter": {k: v for k, v in (("kind", kind), ("service", service)) if v is not None},
                "events": out, "truncated": more, "limit": limit}


def _support_kind(record) -> tuple[str, str] | None:
    """A rejections/identities record's timeline row (kind, service); None if it does not decode (the topics'
    own readers report those)."""
    try:
        lg = decode_record(record)
    except EventValidationError:
        return None
    if record.topic == topics.REJECTIONS:
        # a refused rule names the rule; a refused subscription names the subscribing service
        return REJECTED, getattr(lg.payload, "name", None) or getattr(lg.payload, "service", "")
    if record.topic == topics.SYNC:
        return lg.envelope.type, f"node {lg.envelope.key}"  # a proxy's fact: filed under its node
    return event_kind(lg.payload, lg.envelope.type), event_service(lg.payload)
