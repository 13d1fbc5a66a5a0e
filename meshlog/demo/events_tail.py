"""Follow the event topics in a background thread, for the demo's "events" panel and its checks.

Invariants:
- Reads ``meshlog.registrations``, ``meshlog.health`` and ``meshlog.rules``
  with read_committed, from the given start time (the demo's start), with no
  consumer group: it never commits and never disturbs other readers.
- Undecodable records are skipped the way every reader skips them
  (``events.undecodable``): the tail never stops on one, and ``errors``
  keeps the last ``ERRORS_KEPT`` problems, each bounded and printable.
- ``seen`` holds every decoded event in arrival order, with its broker log
  time, so a scene can wait for "the checker logged reviews-v1-b unhealthy"
  and count requests from that instant.
- For the screen's convergences it also keeps, raw, what the gateways logged
  on ``meshlog.sync`` (``sync``) and each view a node was told as
  (``meshlog-source-ms``, node, resources) (``views``): one per membership
  record, and one per node holding a ClusterLoadAssignment at the latest
  (``projector.publisher.LATEST``) when a new body of it is logged; names held
  at the latest carry the version of the latest body the tail has seen
  (``resolve_told``). The matching is ``proxysync.convergence``'s
  (``meshlog.demo.view``), never done here. A membership record that does
  not parse is skipped like an undecodable one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from events import topics
from events.printable import printable
from events.undecodable import UndecodableLog, decode_or_skip
from events.kafka_security import connection_kwargs
from projector.publisher import LATEST, latest_body, parse_membership_value, resolve_told, source_ms_of

TAILED = (topics.REGISTRATIONS, topics.HEALTH, topics.RULES)
FOR_CONVERGENCE = (topics.SYNC, topics.VIEW_MEMBERSHIP, topics.VIEW_RESOURCES)  # kept raw, not in ``seen``
ERRORS_KEPT = 50


@dataclass(frozen=True)
class SeenEvent:
    log_time: float  # seconds since the epoch (broker LogAppendTime)
    topic: str
    type: str
    key: str
    summary: str
    producer: str
    payload: object


def summarize(payload) -> str:
    kind = type(payload).__name__
    if kind == "InstanceRegistered":
        labels = ",".join(f"{k}={v}" for k, v in sorted(payload.labels.items()))
        return f"{payload.address}:{payload.port} {labels}".strip()
    if kind == "InstanceHealthChanged":
        return f"{payload.status} ({payload.reason}) by {payload.observer}"
    if kind == "RouteRuleUpserted":
        parts = []
        for route in payload.routes:
            parts.append(" ".join(f"{d.subset or d.service or payload.host}={d.weight}" for d in route.destinations))
        return f"rev {payload.revision}: " + " | ".join(parts)
    if kind == "DestinationPolicyUpserted":
        return f"rev {payload.revision}: subsets " + ",".join(s.name for s in payload.subsets)
    if kind == "AccessPolicyUpserted":
        return f"rev {payload.revision}: allow {payload.allow}" + (f" also {','.join(payload.also)}" if payload.also else "")
    if kind == "InstanceDeregistered":
        return payload.reason
    return ""


class EventTail:
    def __init__(self, bootstrap: str, since: float):
        self.bootstrap = bootstrap
        self.since_ms = int(since * 1000)
        self.seen: list[SeenEvent] = []
        self.errors: list[str] = []  # the last ERRORS_KEPT problems (the screen shows the last few)
        self.skipped = UndecodableLog(None, reader="demo event tail")
        self.health: dict[str, str] = {}  # "<service>/<instance>" -> last logged status (registered = healthy)
        self.sync: list = []  # decoded meshlog.sync events (Logged), in log order
        self.views: list[tuple[int, str, dict]] = []  # (source ms, node, resources): views told, resolved
        self._memberships: dict[str, dict] = {}  # node -> its latest membership record's resources
        self._latest_bodies: dict[tuple[str, str], str] = {}  # (type_url, name) -> version, of VERSIONLESS_TYPES
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="event-tail", daemon=True)

    def start(self) -> "EventTail":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _main(self) -> None:
        try:
            asyncio.run(self._tail())
        except Exception as exc:  # noqa: BLE001 - reported at the end; the demo's health checks then fail visibly
            with self._lock:
                self.errors.append(f"event tail stopped: {exc!r}")

    async def _tail(self) -> None:
        consumer = AIOKafkaConsumer(**connection_kwargs(self.bootstrap), enable_auto_commit=False,
                                    isolation_level="read_committed", auto_offset_reset="earliest")
        await consumer.start()
        try:
            # every partition the broker has (registrations and health have several): an instance's events
            # land in the partition of its key, not in partition 0
            from events.admin import partitions_of

            names = (*TAILED, *FOR_CONVERGENCE)
            have = await partitions_of(consumer, names)
            parts = [TopicPartition(t, p) for t in names for p in have.get(t, [0])]
            consumer.assign(parts)
            found = await consumer.offsets_for_times({tp: self.since_ms for tp in parts})
            for tp in parts:
                if found.get(tp) is not None:
                    consumer.seek(tp, found[tp].offset)
                else:
                    await consumer.seek_to_end(tp)
            while not self._stop.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        self._add(record)
        finally:
            await consumer.stop()

    def _add(self, record) -> None:
        if record.topic == topics.VIEW_MEMBERSHIP:
            self._add_view(record)
            return
        if record.topic == topics.VIEW_RESOURCES:
            self._add_body(record)
            return
        logged = decode_or_skip(record, self.skipped)
        if logged is None:
            bad = self.skipped.last
            with self._lock:
                self.errors.append(f"{bad.topic}@{bad.offset}: undecodable ({bad.reason})")
                del self.errors[:-ERRORS_KEPT]
            return
        if record.topic == topics.SYNC:
            with self._lock:
                self.sync.append(logged)
            return
        envelope = logged.envelope
        payload = envelope.payload
        # the key is the writer's, not validated by the decoder: shown escaped, never decoded strictly
        key = printable(record.key.decode(errors="replace"), 200) if record.key else ""
        event = SeenEvent(record.timestamp / 1000, record.topic, payload.TYPE, key,
                          summarize(payload), envelope.producer, payload)
        with self._lock:
            self.seen.append(event)
            if event.type == "instance.health_changed":
                self.health[event.key] = payload.status
            elif event.type == "instance.registered":
                self.health.setdefault(event.key, "healthy")
            elif event.type == "instance.deregistered":
                self.health[event.key] = "deregistered"

    def _add_view(self, record) -> None:
        if record.value is None:  # a node gone: a later endpoints body tells it nothing
            if isinstance(record.key, bytes):
                with self._lock:
                    self._memberships.pop(record.key.decode(errors="replace"), None)
            return
        source_ms = source_ms_of(record.headers)
        if source_ms is None:
            return  # a record with no event behind it: nothing to converge to
        try:
            node, resources = parse_membership_value(record.value)
            if not isinstance(node, str) or not all(isinstance(names, dict) for names in resources.values()):
                raise TypeError("not a membership")
        except (ValueError, KeyError, TypeError, AttributeError):
            with self._lock:
                self.errors.append(f"{record.topic}@{record.offset}: membership record does not parse")
                del self.errors[:-ERRORS_KEPT]
            return
        with self._lock:
            self._memberships[node] = resources
            self.views.append((source_ms, node, resolve_told(resources, self._latest_bodies)))

    def _add_body(self, record) -> None:
        """A new body of a type memberships hold at the latest: every node holding it is told it now."""
        body = latest_body(record)
        if body is None:
            return  # a body memberships name with its version (they move with it), or not a body key
        ident, version = body
        with self._lock:
            if version is None:
                self._latest_bodies.pop(ident, None)
                return
            self._latest_bodies[ident] = version
            source_ms = source_ms_of(record.headers)
            if source_ms is None:
                return
            for node, resources in self._memberships.items():
                if resources.get(ident[0], {}).get(ident[1]) == LATEST:
                    self.views.append((source_ms, node, resolve_told(resources, self._latest_bodies)))

    def convergence_inputs(self) -> tuple[list[SeenEvent], list[tuple[int, str, dict]], list]:
        """Copies of (seen, views, sync) taken together, for ``meshlog.demo.view.convergence_lines``."""
        with self._lock:
            return list(self.seen), list(self.views), list(self.sync)

    def last(self, n: int) -> list[SeenEvent]:
        with self._lock:
            return self.seen[-n:]

    def wait_for(self, predicate, timeout: float) -> SeenEvent | None:
        deadline = time.monotonic() + timeout
        checked = 0
        while time.monotonic() < deadline:
            with self._lock:
                fresh = self.seen[checked:]
                checked = len(self.seen)
            for event in fresh:
                if predicate(event):
                    return event
            time.sleep(0.1)
        return None
