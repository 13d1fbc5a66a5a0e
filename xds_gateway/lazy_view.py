"""A view cache whose memory follows the gateway's streams, not the mesh.

The whole-mesh ``ViewCache`` decodes and keeps every node's membership and
per-node bodies (Python objects: about 4x their bytes). ``LazyViewCache``
reads the same compacted view topics with the same ``ViewTail``, but keeps
only an index entry per node record and decodes a node's records only while
a stream of the node is open (``hold``). The index entry is either

- the record's undecoded value (``keep_bytes``, the gateway's default): a
  connect decodes the node's records from memory at once; or
- the record's position (partition and offset): a connect fetches the
  node's records by offset (``OffsetFetcher``: a second consumer that seeks
  and reads; every node waiting when a round starts is fetched in that one
  round) before its stream is served. Least memory, but a fetch reads whole
  producer batches (the broker's unit), thousands of records per node loaded.

Invariants:
- A node's records are its membership (key = node id) and its per-node bodies
  (names ``<escaped node>~...``, ``projector.naming``). Shared bodies (names
  without ``~``: a service's clusters and endpoints, the proxyless API
  listeners and routes) are kept whole, as ``ViewCache`` does: their number
  follows the services, not the proxies, and the nodes a replica serves name
  most of them anyway (with 4 random dependencies each, 10,000 nodes name 98 %
  of 10,000 services), so unknown nodes and on-demand requests keep being
  answered from memory.
- The index has one entry per (node, slot), from the newest record: the tail
  notes every record (a tombstone removes the entry), held or not, before
  anything else. Compaction keeps the newest record of every key, so a noted
  position can always be fetched (a superseded one is no longer in the
  index).
- A node is *in memory* from its first ``hold`` until ``grace_s`` after its
  last release: the tail applies its records as ``ViewCache`` does (same
  change notifications). ``loaded`` returns once the records the index had
  for it were decoded (kept bytes: already within ``hold``, no await), or
  fetched; a fetched record is applied only if its position is
  still the index's (a newer one was already applied by the tail, a deleted
  one stays deleted), so a load never moves a node back in time.
- A fetch runs in its own task on its own consumer: a connect never blocks
  the view tail or another stream, and the stream machines never learn about
  it (the shell awaits ``loaded`` before building the node's machine).
- Evicting a node drops its membership, its per-node bodies and its cached
  view (``ViewCache.forget_node``); the index entries stay (they are what a
  reconnect decodes or fetches).
- ``knows_node`` and ``nodes`` answer from the index for nodes not in memory,
  so readiness and the "known / not in the view" decision do not change.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Awaitable, Callable, Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from events import topics
from events.kafka_security import connection_kwargs
from projector.naming import NODE_SEP, escape_node, unescape_node
from projector.publisher import VERSION_HEADER, source_headers, source_ms_of
from xds_gateway.view_cache import ViewCache

log = logging.getLogger(__name__)

NODES_IN_MEMORY = Gauge("meshlog_view_nodes_in_memory", "Nodes whose view this gateway holds decoded (lazy views)")
NODE_LOADS = Counter("meshlog_view_node_loads_total", "Nodes whose records were decoded on connect (kept bytes or fetched)")
LOAD_ROUNDS = Counter("meshlog_view_load_rounds_total", "Offset fetches (each loads every node waiting when it starts)")
LOAD_SECONDS = Histogram("meshlog_view_load_seconds", "From a node's first hold to its records in memory",
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

#: The slot of a node's membership in the index (a body's slot always contains "|").
MEMBERSHIP = ""
#: Partitions a position can name (7 bits): the view topics have 1.
_PARTITION_BITS = 7

#: Wanted positions, by topic partition: the offsets to read there.
Wanted = Mapping[TopicPartition, set[int]]
Fetch = Callable[[Wanted], Awaitable[list]]


def pack(partition: int, offset: int) -> int:
    """One int for a record's position: a small int per index entry instead of a tuple."""
    if not 0 <= partition < (1 << _PARTITION_BITS):
        raise ValueError(f"view topic partition {partition} is over the index's {1 << _PARTITION_BITS}")
    return offset << _PARTITION_BITS | partition


def unpack(position: int) -> tuple[int, int]:
    """(partition, offset)."""
    return position & ((1 << _PARTITION_BITS) - 1), position >> _PARTITION_BITS


def node_slot(record) -> tuple[str, str] | None:
    """(node, slot) of a node's own record; None for a shared body or a malformed key."""
    if record.topic == topics.VIEW_MEMBERSHIP:
        return record.key.decode(errors="replace"), MEMBERSHIP
    if record.topic != topics.VIEW_RESOURCES:
        return None
    type_url, sep, name = record.key.decode(errors="replace").partition("|")
    escaped, mark, rest = name.partition(NODE_SEP)
    if not sep or not mark:
        return None
    # slots repeat across nodes ("<type>|outbound", "<type>|inbound", ...): interned, one string for all
    return unescape_node(escaped), sys.intern(f"{type_url}|{rest}")


def slot_ident(node: str, slot: str) -> tuple[str, str]:
    """The (type_url, name) of a per-node body's slot."""
    type_url, _, rest = slot.partition("|")
    return type_url, f"{escape_node(node)}{NODE_SEP}{rest}"


class ViewIndex:
    """Pure: an entry (position, or kept value) per (node, slot) for the newest record the tail read."""

    def __init__(self) -> None:
        self._by_node: dict[str, dict[str, int]] = {}

    def note(self, node: str, slot: str, position: int | None) -> None:
        """The newest record of (node, slot) is at ``position``; None: it was deleted (a tombstone)."""
        slots = self._by_node.get(node)
        if position is not None:
            if slots is None:
                slots = self._by_node[node] = {}
            slots[slot] = position
        elif slots is not None:
            slots.pop(slot, None)
            if not slots:
                del self._by_node[node]

    def position(self, node: str, slot: str) -> int | None:
        return self._by_node.get(node, {}).get(slot)

    def positions(self, node: str) -> dict[str, int]:
        return dict(self._by_node.get(node, {}))

    def has_membership(self, node: str) -> bool:
        return MEMBERSHIP in self._by_node.get(node, ())

    def nodes(self) -> list[str]:
        return [n for n, slots in self._by_node.items() if MEMBERSHIP in slots]

    def __len__(self) -> int:
        return len(self._by_node)


def wanted_positions(index: ViewIndex, nodes: Iterable[str]) -> dict[TopicPartition, set[int]]:
    """What one fetch round reads for ``nodes``: {TopicPartition: {offsets}}."""
    wanted: dict[TopicPartition, set[int]] = {}
    for node in nodes:
        for slot, position in index.positions(node).items():
            partition, offset = unpack(position)
            topic = topics.VIEW_MEMBERSHIP if slot == MEMBERSHIP else topics.VIEW_RESOURCES
            wanted.setdefault(TopicPartition(topic, partition), set()).add(offset)
    return wanted


class LazyViewCache(ViewCache):
    """A ``ViewCache`` that decodes a node's records only while the node is held (see the module doc)."""

    def __init__(self, fetch: Fetch | None = None, *, grace_s: float = 30.0, keep_bytes: bool = False) -> None:
        super().__init__()
        self.index = ViewIndex()
        self.grace_s = grace_s
        self.keep_bytes = keep_bytes
        self._fetch = fetch
        self._holds: dict[str, int] = {}  # node -> open holds
        self._in_memory: dict[str, asyncio.Future] = {}  # node -> done once loaded (held, or within its grace)
        self._held_since: dict[str, float] = {}
        self._pending: set[str] = set()  # nodes for the next fetch round
        self._evictions: dict[str, asyncio.TimerHandle] = {}
        self._wake: asyncio.Event | None = None
        self._loader: asyncio.Task | None = None

    def set_fetch(self, fetch: Fetch) -> None:
        self._fetch = fetch

    # ------------------------------------------------------------ the tail's records

    def _apply_record(self, record, changed: set[str]) -> None:
        owned = node_slot(record)
        if owned is None:
            super()._apply_record(record, changed)  # a shared body (or a malformed key: warned about there)
            return
        node, slot = owned
        self.index.note(node, slot, None if record.value is None else self._entry(record, slot))
        if node in self._in_memory:
            super()._apply_record(record, changed)

    def _entry(self, record, slot: str):
        """What the index keeps of a record: its position, or (``keep_bytes``) its undecoded value."""
        if not self.keep_bytes:
            return pack(record.partition, record.offset)
        headers = getattr(record, "headers", None)
        if slot == MEMBERSHIP:
            if headers and source_ms_of(headers) is not None:
                return record.value, source_ms_of(headers)
        elif headers:
            # a body's version is not recomputable from its bytes (``projector.versioning``): keep the
            # header's value with them (a reference to the consumer's bytes object, like the value)
            version = _version_header(headers)
            if version is not None:
                return record.value, version
        return record.value  # a reference to the bytes the consumer made: no copy

    # ------------------------------------------------------------ what the shell asks

    def knows_node(self, node_id: str) -> bool:
        if node_id in self._in_memory:
            return super().knows_node(node_id)
        return self.index.has_membership(node_id)

    def nodes(self) -> list[str]:
        return self.index.nodes()

    def in_memory(self) -> list[str]:
        """The nodes whose records are decoded (held, loading, or within their grace)."""
        return list(self._in_memory)

    def hold(self, node_id: str) -> Callable[[], None]:
        self._holds[node_id] = self._holds.get(node_id, 0) + 1
        timer = self._evictions.pop(node_id, None)
        if timer is not None:
            timer.cancel()
        if node_id not in self._in_memory:
            loop = asyncio.get_running_loop()
            self._in_memory[node_id] = loop.create_future()
            self._held_since[node_id] = time.monotonic()
            NODES_IN_MEMORY.set(len(self._in_memory))
            if self.keep_bytes:
                self._decode_kept(node_id)
            else:
                self._pending.add(node_id)
                self._start_loader()
                self._wake.set()
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self._release(node_id)

        return release

    async def loaded(self, node_id: str) -> None:
        future = self._in_memory.get(node_id)
        if future is not None:
            await asyncio.shield(future)  # one stream giving up must not cancel the others' wait

    def _release(self, node_id: str) -> None:
        left = self._holds[node_id] - 1
        if left:
            self._holds[node_id] = left
            return
        del self._holds[node_id]
        if self.grace_s <= 0:
            self._evict(node_id)
        else:
            # a reconnect within the grace (a replica restart elsewhere, a flapping link) finds its view still here
            self._evictions[node_id] = asyncio.get_running_loop().call_later(self.grace_s, self._evict, node_id)

    def _evict(self, node_id: str) -> None:
        self._evictions.pop(node_id, None)
        if node_id in self._holds:
            return  # held again
        future = self._in_memory.pop(node_id, None)
        self._held_since.pop(node_id, None)
        self._pending.discard(node_id)
        if future is not None and not future.done():
            future.cancel()
        per_node = [slot_ident(node_id, slot) for slot in self.index.positions(node_id) if slot != MEMBERSHIP]
        self.forget_node(node_id, per_node)
        NODES_IN_MEMORY.set(len(self._in_memory))

    # ------------------------------------------------------------ loading

    def _start_loader(self) -> None:
        if self._loader is None or self._loader.done():
            self._wake = asyncio.Event()
            self._loader = asyncio.create_task(self._load_rounds(), name="view-loader")

    async def close(self) -> None:
        for timer in self._evictions.values():
            timer.cancel()
        if self._loader is not None:
            self._loader.cancel()
            await asyncio.gather(self._loader, return_exceptions=True)

    async def _load_rounds(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            nodes = [n for n in self._pending if n in self._in_memory]
            self._pending.clear()
            if not nodes:
                continue
            wanted = wanted_positions(self.index, nodes)
            records: list = []
            if wanted:
                if self._fetch is None:
                    raise RuntimeError("LazyViewCache has no fetch: give it an OffsetFetcher (set_fetch)")
                while True:
                    try:
                        records = await self._fetch(wanted)
                        break
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # noqa: BLE001 -- a broker hiccup: the streams wait, the round retries
                        log.warning("fetching %d nodes' view records failed (%s): retrying in 1 s", len(nodes),
                                    type(exc).__name__)
                        await asyncio.sleep(1.0)
                LOAD_ROUNDS.inc()
            self.apply_fetched(records)
            now = time.monotonic()
            for node in nodes:
                future = self._in_memory.get(node)
                if future is not None and not future.done():
                    future.set_result(None)
                    NODE_LOADS.inc()
                    LOAD_SECONDS.observe(now - self._held_since.get(node, now))
            log.debug("loaded %d nodes (%d records)", len(nodes), len(records))

    def _decode_kept(self, node_id: str) -> None:
        """``keep_bytes``: the node's records are in the index already; decode them now (bodies first)."""
        records = []
        for slot, entry in sorted(self.index.positions(node_id).items(), key=lambda kv: kv[0] == MEMBERSHIP):
            if slot == MEMBERSHIP:
                value, source = entry if isinstance(entry, tuple) else (entry, None)
                records.append(_Kept(topics.VIEW_MEMBERSHIP, node_id.encode(), value, source_headers(source)))
            else:
                type_url, name = slot_ident(node_id, slot)
                value, version = entry if isinstance(entry, tuple) else (entry, None)
                records.append(_Kept(topics.VIEW_RESOURCES, f"{type_url}|{name}".encode(), value,
                                     None if version is None else [(VERSION_HEADER, version)]))
        unwatched: set[str] = set()
        for record in records:
            super()._apply_record(record, unwatched)
        self._in_memory[node_id].set_result(None)
        NODE_LOADS.inc()
        LOAD_SECONDS.observe(time.monotonic() - self._held_since[node_id])

    def apply_fetched(self, records: Iterable) -> None:
        """Apply fetched records of nodes in memory whose position is still the index's; bodies first."""
        current = []
        for record in records:
            owned = node_slot(record)
            if owned is None or owned[0] not in self._in_memory:
                continue
            if self.index.position(*owned) == pack(record.partition, record.offset):
                current.append(record)
        current.sort(key=lambda r: r.topic == topics.VIEW_MEMBERSHIP)  # bodies before memberships
        unwatched: set[str] = set()  # nodes loading have no stream watching them yet: nobody to tell
        for record in current:
            super()._apply_record(record, unwatched)


def _version_header(headers) -> bytes | None:
    """The raw ``meshlog-version`` header of a body record (checked where it is read: ``record_version``)."""
    for name, raw in headers:
        if name == VERSION_HEADER:
            return raw
    return None


class _Kept:
    """A record rebuilt from the index's kept bytes, for ``ViewCache._apply_record``."""

    __slots__ = ("topic", "key", "value", "headers")

    def __init__(self, topic: str, key: bytes, value: bytes, headers) -> None:
        self.topic, self.key, self.value, self.headers = topic, key, value, headers


class OffsetFetcher:
    """Reads the view records at given offsets with its own consumer (paused while idle).

    Per partition it seeks to the first wanted offset and reads forward, seeking
    again only across a gap of more than ``gap`` offsets: nodes loading together
    are read in as few fetches as their records' spread allows.
    """

    def __init__(self, bootstrap: str, *, gap: int = 2000, poll_ms: int = 200, max_records: int = 5000) -> None:
        self.bootstrap = bootstrap
        self.gap = gap
        self.poll_ms = poll_ms
        self.max_records = max_records
        self._consumer: AIOKafkaConsumer | None = None
        self.fetched = 0  # records read, wanted or not (the cost of the spread)

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(**connection_kwargs(self.bootstrap), group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", isolation_level="read_committed")
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        partitions = [TopicPartition(topic, p) for topic in (topics.VIEW_RESOURCES, topics.VIEW_MEMBERSHIP)
                      for p in range(topics.BY_NAME[topic].partitions)]
        consumer.assign(partitions)
        consumer.pause(*partitions)
        self._consumer = consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def __call__(self, wanted: Wanted) -> list:
        if self._consumer is None:
            await self.start()  # on the first connect, not at boot: a broker down then delays loads, not startup
        consumer = self._consumer
        todo = {tp: sorted(offsets) for tp, offsets in wanted.items() if offsets}
        done = dict.fromkeys(todo, 0)  # tp -> how many of its offsets are behind its position
        for tp, offsets in todo.items():  # every partition at once: one round trip, not one per topic
            consumer.resume(tp)
            consumer.seek(tp, offsets[0])
        found = []
        try:
            while todo:
                batch = await consumer.getmany(*todo, timeout_ms=self.poll_ms, max_records=self.max_records)
                if not batch:
                    for tp, offsets in list(todo.items()):
                        end = consumer.highwater(tp)
                        if end is not None and offsets[done[tp]] >= end and await consumer.position(tp) >= end:
                            del todo[tp]  # past the end (cannot happen for positions the tail read): do not wait
                    continue
                for tp, records in batch.items():
                    offsets, wanted_here = todo.get(tp), wanted[tp]
                    if offsets is None or not records:
                        continue
                    self.fetched += len(records)
                    found += [r for r in records if r.offset in wanted_here]
                    last, i = records[-1].offset, done[tp]
                    while i < len(offsets) and offsets[i] <= last:
                        i += 1  # read, or compacted away (superseded: the index has moved on)
                    done[tp] = i
                    if i == len(offsets):
                        consumer.pause(tp)
                        del todo[tp]
                    elif offsets[i] - last > self.gap:
                        consumer.seek(tp, offsets[i])
        finally:
            consumer.pause(*wanted)
        return found


__all__ = ["LazyViewCache", "OffsetFetcher", "ViewIndex", "node_slot", "pack", "unpack", "wanted_positions"]
