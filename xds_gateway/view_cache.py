"""The gateway's view cache: the projector's compacted view topics, in memory.

Invariants:
- Filled by reading ``meshlog.views.resources`` and ``meshlog.views.membership``
  from the beginning with no consumer group (every replica reads everything;
  a gateway holds no state of its own), then tailing them.
- ``ready`` is set only once every partition has been read up to the end
  offsets seen at start: a gateway never serves a half-built view.
- Each resource body is wrapped once in a ``VersionedResource`` and shared by
  every stream; its version is the one the projector published with it
  (header ``meshlog-version``: for a shared body the hash of its render
  inputs, ``projector.versioning``), else the hash of its bytes — the same on
  every replica either way.
- Applying a batch never waits for a stream: it computes which nodes changed
  and calls the registered listeners, which only set flags (diff, then
  publish; a slow stream can never hold the tail back).
- ``node_view`` hands out one shared, never-mutated mapping per node (type URL
  -> name -> resource). When a change touches some types of a node, the next
  call returns a new outer mapping that reuses the per-type mappings of the
  types that did not change (the same objects): the stream machines compare
  per-type mappings by identity, so a change of one type makes them diff that
  type only, and the per-type mappings are built once per change, not once
  per stream.
- A node the view does not know (a proxyless gRPC client that never
  registered) may fetch by name only *shared* resources — those whose name
  carries no node id (``~``), such as a gRPC service's API listener, route,
  clusters and endpoints — and nothing by wildcard. Per-node resources are
  never handed to another node.
- Membership may name a body that has not arrived (it never should: the
  projector publishes bodies first); such names are left out of the node's
  view until the body arrives, and the node is notified then.
- A node sees a body at the version its membership names. The projector
  publishes a batch's bodies before its memberships, so a changed body (a
  route now pointing at new subset clusters) arrives before the membership
  that adds those clusters; serving it at once would hand Envoy a route to
  clusters it does not have yet (503 until they arrive). So the body a
  membership names is kept while a newer one waits for the membership to
  move (the cache keeps the latest and the one before it per name; for a
  versionless type, named at ``LATEST``, the one before only if some
  membership names it by version when it is replaced), and the
  node's view changes when its membership does: clusters and the routes that
  use them change together, and the stream machine orders them. A membership
  naming a version the cache no longer has gets the latest body.
- A membership names a ClusterLoadAssignment without a version (``""``,
  ``projector.publisher.LATEST``): the node holds the latest body of that
  name, so a new one wakes every node naming it at once (an endpoint change
  is one body record, no membership moves). A ClusterLoadAssignment is a
  leaf: nothing is sent to a proxy that could name a version of it.
- Every node's view is in memory all the time: ``hold``/``loaded`` (what the
  shell calls when a stream opens) do nothing here; ``LazyViewCache``
  (``xds_gateway.lazy_view``) overrides ``_apply_record`` and them to decode
  only held nodes.
- A broker outage is logged by ``meshlog.outage`` (started, at a backoff,
  ended with its duration), not as aiokafka's line per failed retry.
- ``source_ms(node)``: the broker time of the newest event behind the node's
  current view (the ``meshlog-source-ms`` header of its membership, or of a
  body that reached it without one: a ClusterLoadAssignment), for measuring
  append-to-ACK; None when the records carry none.
- Each membership record names the node's owner, the (service, instance)
  whose registration the projector rendered as the node; ``owner_of`` gives
  it to the gateway's authorization (which holds the rule; the cache only
  carries the fact). A change of owner alone is a change of the node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Callable, Iterable, Mapping

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from events import topics
from events.printable import printable
from meshlog.outage import KafkaOutageLog
from events.kafka_security import connection_kwargs
from projector.publisher import LATEST, record_version, source_ms_of
from projector.versioning import VERSIONLESS_TYPES
from xds_gateway import metrics
from xds_gateway.protocol.resources import VersionedResource, make_resource

log = logging.getLogger(__name__)

# per-node resource names carry the node id after this separator (projector.naming)
_PER_NODE_MARK = "~"

NodeView = Mapping[str, Mapping[str, VersionedResource]]
Listener = Callable[[set[str]], None]


def _nothing() -> None:
    return None


class ViewCache:
    """What every node should hold right now, kept current from the view topics."""

    def __init__(self) -> None:
        self._resources: dict[tuple[str, str], VersionedResource] = {}
        # the body each name had before its latest one, while memberships may still name it
        self._previous: dict[tuple[str, str], VersionedResource] = {}
        self._membership: dict[str, dict[str, dict[str, str]]] = {}
        self._source_ms: dict[str, int] = {}  # node -> append time of the newest event behind its view
        self._owners: dict[str, tuple[str, str]] = {}
        # (type_url, name) -> nodes whose membership names it: lets a body change find its nodes in O(k)
        self._referenced_by: dict[tuple[str, str], set[str]] = defaultdict(set)
        self._shared: dict[str, dict[str, VersionedResource]] = defaultdict(dict)
        # node -> its current view, built on demand; a type whose content changed is left out (and
        # the outer mapping replaced, never mutated) until the next node_view builds it again
        self._views: dict[str, dict[str, dict[str, VersionedResource]]] = {}
        self._shared_view: dict[str, dict[str, VersionedResource]] | None = None
        self.shared_changed = False  # set when a shared body changed in the last apply_records
        self._listeners: list[Listener] = []
        self.ready = asyncio.Event()
        self.last_record_timestamp_ms: int = 0
        self.records_applied = 0

    # ------------------------------------------------------------ reading

    def nodes(self) -> list[str]:
        return list(self._membership)

    def knows_node(self, node_id: str) -> bool:
        return node_id in self._membership

    def told_versions(self, node_id: str, type_url: str) -> Mapping[str, str]:
        """The versions the node is told of one type (name -> version): those its membership names, a name
        it holds at the latest body (``LATEST``) at that body's (``LATEST`` while there is none)."""
        named = self._membership.get(node_id, {}).get(type_url, {})
        if LATEST not in named.values():
            return named
        latest = self._resources
        told = {}
        for name, version in named.items():
            if version == LATEST:
                body = latest.get((type_url, name))
                version = LATEST if body is None else body.version
            told[name] = version
        return told

    def source_ms(self, node_id: str) -> int | None:
        return self._source_ms.get(node_id)
    def owner_of(self, node_id: str) -> tuple[str, str] | None:
        """(service, instance id) of the registration the node stands for; None if unknown or unnamed."""
        return self._owners.get(node_id)

    def node_view(self, node_id: str) -> dict[str, dict[str, VersionedResource]]:
        """The node's view: type URL -> name -> resource (shared: do not mutate it)."""
        membership = self._membership.get(node_id)
        if membership is None:
            return {}
        view = self._views.get(node_id)
        if view is not None and len(view) == len(membership):
            return view  # every type is current (a stale type is left out; types only ever leave with it)
        fresh = {}
        latest, previous = self._resources, self._previous
        for type_url, names in membership.items():
            present = view.get(type_url) if view is not None else None
            if present is None:
                present = {}
                for name, version in names.items():
                    # self._resolve, inlined: this runs for every name of a changed type of every node it reaches
                    ident = (type_url, name)
                    resource = latest.get(ident)
                    if resource is not None:
                        if resource.version != version:
                            before = previous.get(ident)
                            if before is not None and before.version == version:
                                resource = before
                        present[name] = resource
            fresh[type_url] = present
        self._views[node_id] = fresh
        return fresh

    def _type_changed(self, node_id: str, type_url: str) -> None:
        """One type of the node's view changed: drop it from the cached view (a new outer mapping)."""
        view = self._views.get(node_id)
        if view is not None and type_url in view:
            self._views[node_id] = {t: v for t, v in view.items() if t != type_url}

    def _resolve(self, ident: tuple[str, str], version: str | None) -> VersionedResource | None:
        """The body a membership naming ``version`` sees: that version if still held, else the latest."""
        latest = self._resources.get(ident)
        if latest is None or latest.version == version:
            return latest
        previous = self._previous.get(ident)
        return previous if previous is not None and previous.version == version else latest

    def shared_view(self) -> dict[str, dict[str, VersionedResource]]:
        """What an unknown node may name: every shared (not per-node) resource (shared: do not mutate it)."""
        if self._shared_view is None:
            self._shared_view = {type_url: dict(names) for type_url, names in self._shared.items()}
        return self._shared_view

    def proxyless_allowed(self, type_url: str, name: str) -> bool:
        return _PER_NODE_MARK not in name

    def hold(self, node_id: str) -> Callable[[], None]:
        """A stream of the node opened: keep its view in memory until the returned release is called.

        This cache holds every node's view all the time, so there is nothing to do; ``LazyViewCache``
        (``xds_gateway.lazy_view``) loads the node's records here and drops them after the last release.
        """
        return _nothing

    async def loaded(self, node_id: str) -> None:
        """Returns once the node's view (as of its ``hold``) is in memory: at once here."""

    def forget_node(self, node_id: str, per_node: Iterable[tuple[str, str]]) -> None:
        """Drop a node's membership and its per-node bodies ``per_node`` from memory, telling nobody.

        Only for a node no stream watches (a lazy cache evicting it); its records stay in the topics.
        """
        self.apply_membership(node_id.encode(), None, set())
        self._source_ms.pop(node_id, None)
        for ident in per_node:
            self._resources.pop(ident, None)
            self._previous.pop(ident, None)
            if not self._referenced_by.get(ident, True):
                del self._referenced_by[ident]

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # ------------------------------------------------------------ applying records

    def apply_resource(self, key: bytes, value: bytes | None, changed: set[str], version: str | None = None,
                       source_ms: int | None = None) -> None:
        """Apply one body record; ``version``: the one published with it (None: the hash of ``value``);
        ``source_ms``: its ``meshlog-source-ms``, which becomes that of every node the body reaches."""
        type_url, sep, name = key.decode().partition("|")
        if not sep:
            log.warning("ignoring view resource with malformed key %s", printable(repr(key), 200))
            return
        ident = (type_url, name)
        shared = _PER_NODE_MARK not in name
        if value is None:
            self._previous.pop(ident, None)
            if self._resources.pop(ident, None) is not None:
                for node in self._referenced_by.get(ident, ()):
                    changed.add(node)
                    self._type_changed(node, type_url)
                if shared:
                    self._shared[type_url].pop(name, None)
                    self.shared_changed = True
                    self._shared_view = None
            return
        current = self._resources.get(ident)
        resource = make_resource(type_url, name, value, version)
        if current is not None and current.version == resource.version:
            return  # a re-publication of the same bytes
        self._resources[ident] = resource
        if shared:
            self._shared[type_url][name] = resource
            self.shared_changed = True
            self._shared_view = None
        source = self._source_ms
        named = False  # does some membership name the body just replaced?
        for node in self._referenced_by.get(ident, ()):
            # a node whose membership names the body just replaced keeps it until its membership moves
            if current is None or self._membership[node][type_url].get(name) != current.version:
                changed.add(node)
                self._type_changed(node, type_url)
                if source_ms is not None and source_ms > source.get(node, 0):
                    source[node] = source_ms
            else:
                named = True
        # the body before is kept for memberships that name it. Those of a versionless type (endpoints) name
        # ``LATEST``: their body before is kept only if one names it by version when it is replaced (a projector
        # from before ``VERSIONLESS_TYPES``), so an endpoint's every change no longer leaves a second body in memory
        if current is not None and (named or type_url not in VERSIONLESS_TYPES):
            self._previous[ident] = current
        else:
            self._previous.pop(ident, None)

    def apply_membership(self, key: bytes, value: bytes | None, changed: set[str]) -> None:
        node = key.decode()
        new = None
        owner = None
        if value is not None:
            try:
                doc = orjson.loads(value)
                new = doc["resources"]  # a fresh dict of fresh dicts (orjson): kept as it is, not copied
                if type(new) is not dict or not all(type(names) is dict for names in new.values()):
                    raise TypeError("resources must map each type URL to an object of name -> version")
                named = doc.get("owner")
                if named is not None:
                    owner = (named["service"], named["instance"])
                    if not all(isinstance(x, str) for x in owner):
                        raise TypeError("owner service and instance must be strings")
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                log.error("ignoring malformed membership for node %s: %s", printable(node, 256), printable(str(exc), 200))
                return
        if self._owners.get(node) != owner:
            if owner is None:
                self._owners.pop(node, None)
            else:
                self._owners[node] = owner
            changed.add(node)
        old = self._membership.get(node)
        if old is not None and new is not None and old.keys() == new.keys():
            moved = []  # types whose versions moved (the same names): the usual change, one type of one node
            for type_url, names in new.items():
                before = old[type_url]
                if before == names:
                    continue  # the usual case for all types but one (compared in C, not name by name)
                if before.keys() != names.keys():
                    break  # names came or went: re-indexed below
                moved.append(type_url)
            else:
                # only versions moved: nothing to re-index; the node's view changes if a name now
                # resolves to another body (it moved on to a body that arrived before it)
                self._membership[node] = new
                for type_url in moved:
                    before = old[type_url]
                    for name, version in new[type_url].items():
                        if before[name] != version and (
                                self._resolve((type_url, name), before[name]) is not self._resolve((type_url, name), version)):
                            changed.add(node)
                            self._type_changed(node, type_url)
                            break
                return
        if new is None:
            self._views.pop(node, None)
        elif old is not None:
            for type_url in old.keys() | new.keys():
                if old.get(type_url) != new.get(type_url):
                    self._type_changed(node, type_url)
        if old is not None:
            del self._membership[node]
            for type_url, names in old.items():
                for name in names:
                    self._referenced_by[(type_url, name)].discard(node)
        if new is not None:
            self._membership[node] = new
            for type_url, names in new.items():
                for name in names:
                    self._referenced_by[(type_url, name)].add(node)
        if old != new:
            changed.add(node)

    def _apply_record(self, record, changed: set[str]) -> None:
        """Apply one view record (a subclass may keep some out of memory, see ``xds_gateway.lazy_view``)."""
        if record.topic == topics.VIEW_RESOURCES:
            headers = getattr(record, "headers", None)
            version = record_version(record.value, headers) if headers and record.value is not None else None
            self.apply_resource(record.key, record.value, changed, version, source_ms_of(headers))
        elif record.topic == topics.VIEW_MEMBERSHIP:
            self.apply_membership(record.key, record.value, changed)
            source = source_ms_of(getattr(record, "headers", None))
            node = record.key.decode(errors="replace")
            if source is not None and record.value is not None:
                self._source_ms[node] = source
            else:
                self._source_ms.pop(node, None)

    def apply_records(self, records: Iterable) -> set[str]:
        """Apply consumer records (any order across the two topics); return the nodes whose view changed."""
        changed: set[str] = set()
        self.shared_changed = False
        for record in records:
            self._apply_record(record, changed)
            self.last_record_timestamp_ms = max(self.last_record_timestamp_ms, record.timestamp)
            self.records_applied += 1
        if (changed or self.shared_changed) and self.ready.is_set():
            for listener in list(self._listeners):
                listener(changed)
        return changed


def _note_applied(batch: Mapping[TopicPartition, list]) -> None:
    """Export when a batch was applied and how old it was (each partition's last record is its newest)."""
    newest = [rs[-1] for rs in batch.values() if rs]
    metrics.VIEW_APPLIED_AT.set(time.time())
    metrics.VIEW_APPLIED_RECORD.set(max(r.timestamp for r in newest) / 1000)
    metrics.VIEW_APPLIED_SOURCE.set(max((source_ms_of(getattr(r, "headers", None)) or 0) for r in newest) / 1000)


class ViewTail:
    """Reads the view topics into a ViewCache: catch up, mark ready, then tail until stopped."""

    def __init__(self, cache: ViewCache, bootstrap: str, *, poll_ms: int = 100, max_records: int = 5000):
        self.cache = cache
        self.bootstrap = bootstrap
        self.poll_ms = poll_ms
        self.max_records = max_records
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        with KafkaOutageLog(f"Kafka at {self.bootstrap} (view tail)", log):
            await self._run()

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            **connection_kwargs(self.bootstrap),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            # the tail's fetch waits up to fetch_max_wait_ms (500) only while there is nothing to read: with
            # fetch_min_bytes=1 the broker answers as soon as a view record lands (as for the projector's
            # consumer, bench/e2e_propagation.py); a larger fetch_min_bytes would park a lone change that long
            fetch_min_bytes=1,
        )
        self._consumer = consumer
        await consumer.start()
        try:
            partitions = []
            for topic in (topics.VIEW_RESOURCES, topics.VIEW_MEMBERSHIP):
                spec = topics.BY_NAME[topic]
                partitions += [TopicPartition(topic, p) for p in range(spec.partitions)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            targets = await consumer.end_offsets(partitions)
            started = time.monotonic()
            log.info("catching up on view topics up to %s", {f"{tp.topic}[{tp.partition}]": o for tp, o in targets.items()})
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=self.poll_ms, max_records=self.max_records)
                records = [r for rs in batch.values() for r in rs]
                if records:
                    changed = self.cache.apply_records(records)
                    _note_applied(batch)
                    if self.cache.ready.is_set():
                        log.debug("applied %d view records; %d nodes changed", len(records), len(changed))
                if not self.cache.ready.is_set():
                    # compare positions, not offsets seen: compaction leaves gaps
                    positions = {tp: await consumer.position(tp) for tp in partitions}
                    if all(positions[tp] >= targets[tp] for tp in partitions):
                        self.cache.ready.set()
                        log.info(
                            "view cache ready after %.2fs: %d nodes, %d records",
                            time.monotonic() - started,
                            len(self.cache.nodes()),
                            self.cache.records_applied,
                        )
        finally:
            await consumer.stop()

    def stop(self) -> None:
        self._stopping.set()
