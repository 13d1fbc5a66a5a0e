"""xds_gateway.server: a stream whose client stops reading is shed after ``write_timeout_s``.

Two clients that never read: a servicer context whose ``write`` never
completes (the shell's contract with grpc), and a real gRPC client on a
loopback stream that sends its first request and then never reads (with
BDP probing off, so its HTTP/2 window stays at 64 KiB and a response of a
few MB cannot be buffered for it). Bounds on waits only catch a hang; they
measure nothing.

The shed client is told: the write the timeout cancelled stays pending in
grpc's core, and the RESOURCE_EXHAUSTED status is queued behind it, so a
client that resumes reading gets the response in flight, then the status,
and reconnects. (Before the headers were sent on their own, ``abort`` sent
them again in its batch, grpc core refused it with
GRPC_CALL_ERROR_TOO_MANY_OPERATIONS and the client hung on a dead stream.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import orjson
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc
from prometheus_client import REGISTRY

from events import topics
from xds_gateway.protocol.resources import version_of
from xds_gateway.server import AdsServicer, add_to_server
from xds_gateway.view_cache import ViewCache
from tests.unit.xds_gateway.helpers import CDS, ViewRec, body, dreq

NODE = "slow-node"
TIMEOUT_S = 0.3


def view_records(clusters: int, pad: int = 0) -> list[ViewRec]:
    """The view records in which NODE holds ``clusters`` clusters (each padded by ``pad`` bytes)."""
    records, names = [], {}
    for i in range(clusters):
        name = f"c{i}-{'x' * pad}"
        value = body(CDS, name, "y" * pad)
        records.append(ViewRec(topics.VIEW_RESOURCES, f"{CDS}|{name}".encode(), value))
        names[name] = version_of(value)
    records.append(ViewRec(topics.VIEW_MEMBERSHIP, NODE.encode(),
                       orjson.dumps({"node": NODE, "resources": {CDS: names}})))
    return records


def cache_with(clusters: int, pad: int = 0) -> ViewCache:
    """A ready view cache holding ``view_records(clusters, pad)``."""
    cache = ViewCache()
    cache.apply_records(view_records(clusters, pad))
    cache.ready.set()
    return cache


def slow_streams_closed() -> float:
    return REGISTRY.get_sample_value("meshlog_xds_slow_streams_closed_total") or 0.0


def watched(servicer: AdsServicer) -> int:
    """Inboxes the servicer still fans view changes out to (per node, and for nodes not in the view)."""
    return sum(len(s) for s in servicer._watchers.values()) + len(servicer._unknown_watchers)


class Aborted(grpc.aio.AbortError):
    """What grpc aio's ``abort`` raises once the status is queued."""


class Context:
    """A servicer context: the first request, then a client that stays connected and sends nothing more."""

    def __init__(self, *, reads: bool) -> None:
        self.reads = reads
        self._first = dreq(CDS, node=NODE)
        self.writes = 0
        self.aborted: tuple | None = None
        self.headers_sent = False

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    async def read(self):
        if self._first is not None:
            first, self._first = self._first, None
            return first
        await asyncio.Event().wait()

    async def send_initial_metadata(self, metadata) -> None:
        assert not self.headers_sent, "headers sent twice"
        self.headers_sent = True

    async def write(self, response) -> None:
        self.writes += 1
        if not self.reads:
            await asyncio.Event().wait()  # the client never reads: the write never completes

    async def abort(self, code, details):
        self.aborted = (code, details)
        raise Aborted(details)


async def test_a_stream_whose_writes_never_complete_is_aborted_resource_exhausted():
    # a first response over HEADERS_WITH_FIRST_RESPONSE_MAX: its headers go out on their own first
    servicer = AdsServicer(cache_with(300, pad=200), write_timeout_s=TIMEOUT_S)
    context = Context(reads=False)
    before = slow_streams_closed()
    stream = asyncio.create_task(servicer.DeltaAggregatedResources(None, context))
    await asyncio.sleep(0)
    with pytest.raises(Aborted):
        # a bound against hanging (the timeout not applied), not a measurement
        await asyncio.wait_for(stream, 30 * TIMEOUT_S)
    assert context.writes == 1 and context.headers_sent
    assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert slow_streams_closed() == before + 1
    assert watched(servicer) == 0 and NODE not in servicer._watchers


class RefusingContext(Context):
    """A small first write that never completes, then grpc refusing the status batch (its headers already queued)."""

    async def abort(self, code, details):
        self.aborted = (code, details)
        raise RuntimeError("Failed grpc_call_start_batch: 8")  # what grpc aio raises (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS)


async def test_a_status_grpc_refuses_ends_the_handler_as_cancelled():
    servicer = AdsServicer(cache_with(3), write_timeout_s=TIMEOUT_S)
    context = RefusingContext(reads=False)
    stream = asyncio.create_task(servicer.DeltaAggregatedResources(None, context))
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(stream, 30 * TIMEOUT_S)
    assert context.writes == 1 and not context.headers_sent and context.aborted is not None
    assert watched(servicer) == 0 and NODE not in servicer._watchers


async def test_a_stream_that_reads_is_not_shed():
    servicer = AdsServicer(cache_with(3), write_timeout_s=TIMEOUT_S)
    context = Context(reads=True)
    before = slow_streams_closed()
    stream = asyncio.create_task(servicer.DeltaAggregatedResources(None, context))
    await asyncio.sleep(3 * TIMEOUT_S)
    assert not stream.done() and context.writes == 1 and context.aborted is None
    assert not context.headers_sent  # a small first response carries the headers in its own batch
    assert watched(servicer) == 1 and slow_streams_closed() == before
    stream.cancel()
    await asyncio.gather(stream, return_exceptions=True)
    assert watched(servicer) == 0


# ---------------------------------------------------------------- a real loopback stream


@contextlib.asynccontextmanager
async def served(cache: ViewCache):
    """A gateway servicer of ``cache`` on 127.0.0.1 and one delta call of a client that reads only when told."""
    servicer = AdsServicer(cache, write_timeout_s=TIMEOUT_S)
    server = grpc.aio.server()
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    # no BDP probing: the client's stream window stays at 64 KiB instead of growing to swallow the response
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.http2.bdp_probe", 0)])
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
    try:
        yield servicer, call
    finally:
        call.cancel()
        await channel.close()
        await server.stop(0)


@pytest.fixture
async def loopback():
    """NODE's view is one ~1.5 MB CDS response, for a client that never reads."""
    async with served(cache_with(3000, pad=200)) as (servicer, call):
        yield servicer, call


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def small_then_big():
    """NODE's view starts as one small CDS response (the headers sent with it); the test grows it."""
    cache = cache_with(3)
    async with served(cache) as (servicer, call):
        yield cache, servicer, call


async def test_a_small_first_response_carries_the_headers_and_a_later_stall_is_still_told(small_then_big):
    cache, servicer, call = small_then_big
    before = slow_streams_closed()
    await call.write(dreq(CDS, node=NODE))
    first = await asyncio.wait_for(call.read(), 10)
    assert len(first.resources) == 3
    assert dict(await asyncio.wait_for(call.initial_metadata(), 5)) == {}
    await call.write(dreq(CDS, nonce=first.nonce))  # ACK; then the client stops reading
    # the node's view grows to a ~1.5 MB response the client's 64 KiB window cannot take
    cache.apply_records(view_records(3000, pad=200))
    await wait_for(lambda: slow_streams_closed() > before, 30 * TIMEOUT_S, "the stream to be shed")
    await wait_for(lambda: watched(servicer) == 0, 10, "the stream's inbox to be dropped")
    # the write the timeout cancelled was the second: the headers went with the first, so the status is queued
    response = await asyncio.wait_for(call.read(), 10)
    assert len(response.resources) == 3000
    assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_client_that_never_reads_is_shed_on_a_real_stream(loopback):
    servicer, call = loopback
    before = slow_streams_closed()
    await call.write(dreq(CDS, node=NODE))  # then never read
    await wait_for(lambda: watched(servicer) == 1, 10, "the stream to open")
    await wait_for(lambda: slow_streams_closed() > before, 30 * TIMEOUT_S, "the stream to be shed")
    assert slow_streams_closed() == before + 1
    await wait_for(lambda: watched(servicer) == 0, 10, "the stream's inbox to be dropped")
    assert NODE not in servicer._watchers


async def test_the_shed_client_is_told_resource_exhausted(loopback):
    servicer, call = loopback
    before = slow_streams_closed()
    await call.write(dreq(CDS, node=NODE))
    await wait_for(lambda: slow_streams_closed() > before, 30 * TIMEOUT_S, "the stream to be shed")
    # the handler is gone (the status is queued behind the unread response)...
    await wait_for(lambda: watched(servicer) == 0, 10, "the stream's inbox to be dropped")
    # ...and the client reads again: it gets what was in flight, then the status
    response = await asyncio.wait_for(call.read(), 10)
    assert len(response.resources) == 3000
    assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "reconnect" in await call.details()


async def test_an_on_demand_request_the_view_never_answers_ends_when_the_hold_does():
    from xds_gateway.on_demand import LearnedSubscriptions

    async def sink(envelopes) -> None:
        pass

    servicer = AdsServicer(cache_with(1), write_timeout_s=30, on_demand=LearnedSubscriptions(sink, "gw"),
                           hold_s=TIMEOUT_S)
    context = Context(reads=True)
    context._first = dreq(CDS, sub=["reviews"], node=NODE)  # a service cluster the node's view lacks: held
    stream = asyncio.create_task(servicer.DeltaAggregatedResources(None, context))
    try:
        await wait_for(lambda: context.writes, 30 * TIMEOUT_S, "the held request answered once the hold ended")
        assert context.aborted is None and not stream.done()
    finally:
        stream.cancel()
        await asyncio.gather(stream, return_exceptions=True)


# ---------------------------------------------------------------- on-demand hold through the shell


class Recorder:
    """Stands in for ``LearnedSubscriptions``: notes the clusters the shell hands it."""

    def __init__(self) -> None:
        self.clusters: list[str] = []

    def learned(self, owner, cluster: str) -> bool:
        self.clusters.append(cluster)
        return True


class ScriptedContext:
    """A servicer context fed requests by the test; ``write`` keeps each response (already serialized)."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue = asyncio.Queue()
        self.responses: list = []

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50001"

    async def read(self):
        return await self.requests.get()

    async def send_initial_metadata(self, metadata) -> None:
        pass

    async def write(self, payload: bytes) -> None:
        from envoy.service.discovery.v3 import discovery_pb2

        self.responses.append(discovery_pb2.DeltaDiscoveryResponse.FromString(payload))

    async def abort(self, code, details):
        raise Aborted(details)


async def test_a_held_cluster_is_answered_as_missing_once_the_hold_is_over():
    recorder = Recorder()
    servicer = AdsServicer(cache_with(1), on_demand=recorder, hold_s=0.05)
    context = ScriptedContext()
    stream = asyncio.create_task(servicer.DeltaAggregatedResources(None, context))
    try:
        await context.requests.put(dreq(CDS, ["ratings"], node=NODE))
        # held: nothing answered at first, the name handed to the recorder; then the hold ends and the
        # stream answers it as not existing (bounds catch a hang, they measure nothing)
        await wait_for(lambda: context.responses, 5.0, "the answer after the hold")
        assert recorder.clusters == ["ratings"]
        assert list(context.responses[0].removed_resources) == ["ratings"]
        assert not stream.done(), stream.exception() if stream.done() else None
    finally:
        stream.cancel()
        await asyncio.gather(stream, return_exceptions=True)


# ---------------------------------------------------------------- fan-out in progress (what the sync log waits for)


def changed_cluster(tag: str) -> list[ViewRec]:
    """NODE's three clusters (``cache_with(3)``), the first one changed: every stream of NODE has a view change."""
    records = view_records(3)
    value = body(CDS, "c0-", tag)
    records[0] = ViewRec(topics.VIEW_RESOURCES, f"{CDS}|c0-".encode(), value)
    names = {f"c{i}-": version_of(records[i].value) for i in range(3)}
    records[-1] = ViewRec(topics.VIEW_MEMBERSHIP, NODE.encode(), orjson.dumps({"node": NODE, "resources": {CDS: names}}))
    return records


async def test_a_view_change_is_being_fanned_out_until_every_stream_took_it():
    cache = cache_with(3)
    servicer = AdsServicer(cache, write_timeout_s=30.0)
    contexts = [Context(reads=True) for _ in range(3)]
    streams = [asyncio.create_task(servicer.DeltaAggregatedResources(None, c)) for c in contexts]
    await wait_for(lambda: all(c.writes == 1 for c in contexts), 5.0, "the first responses")
    assert not servicer.fanning_out()

    cache.apply_records(changed_cluster("v2"))
    # the view tail queued a token per stream; no handler has run yet
    assert servicer.fanning_out()
    await wait_for(lambda: not servicer.fanning_out(), 5.0, "every stream taking the change")

    # a stream that ends with its token still queued does not leave a fan-out behind
    cache.apply_records(changed_cluster("v3"))
    assert servicer.fanning_out()
    for stream in streams:
        stream.cancel()
    await asyncio.gather(*streams, return_exceptions=True)
    assert not servicer.fanning_out() and watched(servicer) == 0


async def test_the_sync_log_writes_nothing_while_a_change_is_being_fanned_out():
    from xds_gateway.sync_log import SyncLog

    written = []

    async def sink(envs) -> None:
        written.extend(e.type for e in envs)

    cache = cache_with(3)
    sync = SyncLog(sink, "gw-1", window_s=2.0)
    servicer = AdsServicer(cache, write_timeout_s=30.0, sync_log=sync)
    sync.start()
    # a stream whose handler never gets to take a view change: it is stuck in a write that does not complete
    stuck = Context(reads=False)
    stream = asyncio.create_task(servicer.DeltaAggregatedResources(None, stuck))
    await wait_for(lambda: stuck.writes == 1, 5.0, "the first response")
    await wait_for(lambda: written == ["sync.stream_opened"], 5.0, "the stream's opening")
    cache.apply_records(changed_cluster("v2"))
    assert servicer.fanning_out()

    sync.opened("s-other", "other-node", "delta", "peer")  # a record to write while the change is pending
    await asyncio.sleep(0.5)
    assert written == ["sync.stream_opened"]  # held: the fan-out goes first
    stream.cancel()  # the stuck stream ends, and with it the fan-out
    await asyncio.gather(stream, return_exceptions=True)
    await wait_for(lambda: "sync.stream_closed" in written, 5.0, "the held records")
    assert written[:2] == ["sync.stream_opened", "sync.stream_opened"]
    await sync.close()
