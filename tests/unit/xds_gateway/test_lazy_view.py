"""Story: a lazy view cache indexes every node's records but decodes only the nodes a stream holds.

No broker: ``Log`` plays the compacted view topics (records with offsets) and the fetch reads it by
offset, as ``OffsetFetcher`` does against Kafka. What is checked is the index, the holds (refcount,
grace) and that a held node's view equals the whole-mesh ``ViewCache``'s.
"""

import asyncio

import orjson
import pytest
from aiokafka import TopicPartition

from events import topics
from projector.publisher import VERSION_HEADER, source_headers
from xds_gateway.lazy_view import (MEMBERSHIP, LazyViewCache, ViewIndex, node_slot, pack, unpack,
                                   wanted_positions)
from xds_gateway.protocol.resources import CLUSTER, LISTENER, version_of
from xds_gateway.view_cache import ViewCache
from tests.unit.xds_gateway.helpers import ViewRec


class Log:
    """The view topics as an append-only list; ``fetch`` answers by offset like OffsetFetcher."""

    def __init__(self) -> None:
        self.records: list[ViewRec] = []
        self.fetches: list[dict] = []
        self.gate: asyncio.Event | None = None  # set: fetches wait for it (a slow broker)

    def body(self, type_url, name, payload=None):
        key = f"{type_url}|{name}".encode()
        return self._append(topics.VIEW_RESOURCES, key, payload if payload is not None else name.encode())

    def member(self, node, resources, *, gone=False):
        value = None if gone else orjson.dumps({"node": node, "resources": resources})
        return self._append(topics.VIEW_MEMBERSHIP, node.encode(), value)

    def tombstone(self, type_url, name):
        return self._append(topics.VIEW_RESOURCES, f"{type_url}|{name}".encode(), None)

    def _append(self, topic, key, value):
        rec = ViewRec(topic, key, value, offset=sum(r.topic == topic for r in self.records))
        self.records.append(rec)
        return rec

    async def fetch(self, wanted):
        self.fetches.append({tp: set(o) for tp, o in wanted.items()})
        await asyncio.sleep(0)  # a real fetch yields: the tail may apply records meanwhile
        if self.gate is not None:
            await self.gate.wait()
        return [r for r in self.records if r.offset in wanted.get(TopicPartition(r.topic, r.partition), ())]


def node_records(log: Log, node: str, tag: str = "a"):
    """A node's records as the projector publishes them: bodies (per-node and shared), then its membership."""
    listener, shared = f"{node}~outbound", "reviews"
    out = [log.body(LISTENER, listener, f"{listener}/{tag}".encode()), log.body(CLUSTER, shared)]
    out.append(log.member(node, {LISTENER: {listener: version_of(f"{listener}/{tag}".encode())},
                                 CLUSTER: {shared: version_of(shared.encode())}}))
    return out


MODES = ("offsets", "bytes")


def lazy_cache(log: Log, mode: str, grace_s: float = 0) -> LazyViewCache:
    """Offsets: the index keeps positions and loads fetch from ``log``; bytes: it keeps the records' values."""
    return LazyViewCache(log.fetch if mode == "offsets" else None, grace_s=grace_s, keep_bytes=mode == "bytes")


def names(view):
    return {t: {n: r.version for n, r in names.items()} for t, names in view.items()}


def test_positions_pack_partition_and_offset_into_one_int():
    assert unpack(pack(3, 123_456_789)) == (3, 123_456_789)
    with pytest.raises(ValueError, match="partition 200"):
        pack(200, 1)


def test_records_belong_to_the_node_named_in_their_key():
    assert node_slot(ViewRec(topics.VIEW_MEMBERSHIP, b"web-1", b"{}")) == ("web-1", MEMBERSHIP)
    node, slot = node_slot(ViewRec(topics.VIEW_RESOURCES, f"{LISTENER}|web%7E1~outbound".encode(), b""))
    assert node == "web~1" and slot == f"{LISTENER}|outbound"  # the escaped node id, unescaped
    assert node_slot(ViewRec(topics.VIEW_RESOURCES, f"{CLUSTER}|reviews".encode(), b"")) is None  # shared


def test_the_index_keeps_the_newest_position_and_forgets_deleted_records():
    index = ViewIndex()
    index.note("web-1", MEMBERSHIP, pack(0, 1))
    index.note("web-1", "lds|outbound", pack(0, 2))
    index.note("web-1", MEMBERSHIP, pack(0, 5))
    assert index.positions("web-1") == {MEMBERSHIP: pack(0, 5), "lds|outbound": pack(0, 2)}
    assert index.nodes() == ["web-1"]
    index.note("web-1", MEMBERSHIP, None)
    assert not index.has_membership("web-1") and index.nodes() == []
    index.note("web-1", "lds|outbound", None)
    assert len(index) == 0
    wanted = wanted_positions(index, ["web-1"])
    assert wanted == {}


@pytest.mark.parametrize("mode", MODES)
async def test_nothing_per_node_is_decoded_until_a_stream_holds_the_node(mode):
    log = Log()
    records = node_records(log, "web-1") + node_records(log, "web-2")
    cache = lazy_cache(log, mode)
    cache.apply_records(records)
    assert cache.knows_node("web-1") and sorted(cache.nodes()) == ["web-1", "web-2"]
    assert cache.in_memory() == [] and cache.node_view("web-1") == {}
    assert cache.shared_view()[CLUSTER].keys() == {"reviews"}  # shared bodies stay whole

    release = cache.hold("web-1")
    await cache.loaded("web-1")
    whole = ViewCache()
    whole.apply_records(records)
    assert names(cache.node_view("web-1")) == names(whole.node_view("web-1"))
    assert cache.in_memory() == ["web-1"] and cache.node_view("web-2") == {}
    release()
    await cache.close()


@pytest.mark.parametrize("mode", MODES)
async def test_a_held_node_follows_the_tail_and_an_unheld_one_is_only_indexed(mode):
    log = Log()
    cache = lazy_cache(log, mode)
    cache.ready.set()
    seen = []
    cache.subscribe(lambda nodes: seen.append(set(nodes)))
    cache.apply_records(node_records(log, "web-1") + node_records(log, "web-2"))
    release = cache.hold("web-1")
    await cache.loaded("web-1")
    seen.clear()
    cache.apply_records(node_records(log, "web-1", "b") + node_records(log, "web-2", "b"))
    assert seen == [{"web-1"}]  # the unheld node changed too, but nobody is told and nothing is decoded
    assert cache.node_view("web-1")[LISTENER]["web-1~outbound"].body == b"web-1~outbound/b"
    assert cache.node_view("web-2") == {}
    # web-2 connects later: it gets its newest records
    release_2 = cache.hold("web-2")
    await cache.loaded("web-2")
    assert cache.node_view("web-2")[LISTENER]["web-2~outbound"].body == b"web-2~outbound/b"
    release()
    release_2()
    await cache.close()


async def test_a_record_the_tail_applies_during_a_load_is_not_undone_by_the_fetch():
    log = Log()
    cache = LazyViewCache(log.fetch, grace_s=0)
    cache.apply_records(node_records(log, "web-1"))
    log.gate = asyncio.Event()
    release = cache.hold("web-1")
    while not log.fetches:
        await asyncio.sleep(0)
    # while the fetch of the old offsets is on its way, the tail reads a newer listener
    cache.apply_records([log.body(LISTENER, "web-1~outbound", b"newer")])
    log.gate.set()
    await cache.loaded("web-1")
    assert cache.node_view("web-1")[LISTENER]["web-1~outbound"].body == b"newer"
    release()
    await cache.close()


@pytest.mark.parametrize("mode", MODES)
async def test_deleted_records_stay_deleted(mode):
    log = Log()
    cache = lazy_cache(log, mode)
    cache.apply_records(node_records(log, "web-1") + node_records(log, "web-2"))
    cache.apply_records([log.tombstone(LISTENER, "web-1~outbound"), log.member("web-2", {}, gone=True)])
    assert not cache.knows_node("web-2")
    releases = [cache.hold("web-1"), cache.hold("web-2")]
    await cache.loaded("web-1")
    await cache.loaded("web-2")
    assert cache.node_view("web-1")[LISTENER] == {} and cache.node_view("web-1")[CLUSTER].keys() == {"reviews"}
    assert not cache.knows_node("web-2") and cache.node_view("web-2") == {}
    for release in releases:
        release()
    await cache.close()


@pytest.mark.parametrize("mode", MODES)
async def test_the_last_release_drops_the_node_from_memory_and_a_reconnect_fetches_it_again(mode):
    log = Log()
    cache = lazy_cache(log, mode)
    cache.apply_records(node_records(log, "web-1"))
    first, second = cache.hold("web-1"), cache.hold("web-1")
    await cache.loaded("web-1")
    first()
    first()  # releasing twice counts once
    assert cache.in_memory() == ["web-1"] and cache.node_view("web-1") != {}
    second()
    assert cache.in_memory() == []
    assert cache.node_view("web-1") == {} and not cache._membership  # noqa: SLF001 -- what memory holds
    assert set(cache._resources) == {(CLUSTER, "reviews")}  # noqa: SLF001 -- the per-node body is gone
    assert cache.knows_node("web-1")  # still in the index
    again = cache.hold("web-1")
    await cache.loaded("web-1")
    assert len(log.fetches) == (2 if mode == "offsets" else 0)
    assert cache.node_view("web-1")[LISTENER].keys() == {"web-1~outbound"}
    again()
    await cache.close()


@pytest.mark.parametrize("mode", MODES)
async def test_a_reconnect_within_the_grace_needs_no_fetch(mode):
    log = Log()
    cache = lazy_cache(log, mode, grace_s=0.2)
    cache.apply_records(node_records(log, "web-1"))
    release = cache.hold("web-1")
    await cache.loaded("web-1")
    release()
    await asyncio.sleep(0.05)
    release = cache.hold("web-1")
    await cache.loaded("web-1")
    assert len(log.fetches) == (1 if mode == "offsets" else 0)
    await asyncio.sleep(0.3)
    assert cache.in_memory() == ["web-1"]  # held again: the pending eviction was cancelled
    release()
    await asyncio.sleep(0.3)
    assert cache.in_memory() == []
    await cache.close()


async def test_nodes_connecting_together_are_loaded_in_one_fetch():
    log = Log()
    cache = LazyViewCache(log.fetch, grace_s=0)
    nodes = [f"web-{i}" for i in range(20)]
    for node in nodes:
        cache.apply_records(node_records(log, node))
    releases = [cache.hold(node) for node in nodes]
    await asyncio.gather(*(cache.loaded(node) for node in nodes))
    assert len(log.fetches) == 1
    assert sum(len(o) for o in log.fetches[0].values()) == 20 * 2  # each node's membership and listener
    assert all(cache.node_view(node)[LISTENER] for node in nodes)
    for release in releases:
        release()
    await cache.close()


@pytest.mark.parametrize("mode", MODES)
async def test_a_node_unknown_when_held_is_decoded_as_soon_as_its_records_arrive(mode):
    log = Log()
    cache = lazy_cache(log, mode)
    cache.ready.set()
    seen = []
    cache.subscribe(lambda nodes: seen.append(set(nodes)))
    release = cache.hold("web-1")
    await cache.loaded("web-1")
    assert not cache.knows_node("web-1") and log.fetches == []
    cache.apply_records(node_records(log, "web-1"))
    assert {"web-1"} in seen and cache.knows_node("web-1") and cache.node_view("web-1")[LISTENER]
    release()
    await cache.close()


@pytest.mark.parametrize("mode", MODES)
async def test_a_loaded_node_keeps_the_source_time_of_its_membership(mode):
    log = Log()
    cache = lazy_cache(log, mode)
    records = node_records(log, "web-1")
    records[-1].headers = tuple(source_headers(1_700_000_000_123))
    cache.apply_records(records)
    assert cache.source_ms("web-1") is None  # not decoded
    release = cache.hold("web-1")
    await cache.loaded("web-1")
    assert cache.source_ms("web-1") == 1_700_000_000_123
    release()
    assert cache.source_ms("web-1") is None
    await cache.close()


@pytest.mark.parametrize("mode", MODES)
async def test_a_loaded_node_serves_its_bodies_at_the_versions_published_with_them(mode):
    """A version is the hash of a resource's render inputs, not of its bytes (``projector.versioning``):
    a node decoded from the index serves the ``meshlog-version`` its per-node bodies were published with."""
    log = Log()
    cache = lazy_cache(log, mode)
    records = node_records(log, "web-1")
    records[0].headers = ((VERSION_HEADER, b"00000000000000aa"),)  # the per-node listener's version
    records[-1] = log.member("web-1", {LISTENER: {"web-1~outbound": "00000000000000aa"},
                                       CLUSTER: {"reviews": version_of(b"reviews")}})
    cache.apply_records(records)
    release = cache.hold("web-1")
    await cache.loaded("web-1")
    assert names(cache.node_view("web-1"))[LISTENER] == {"web-1~outbound": "00000000000000aa"}
    whole = ViewCache()
    whole.apply_records(records)
    assert names(cache.node_view("web-1")) == names(whole.node_view("web-1"))
    release()
    await cache.close()
