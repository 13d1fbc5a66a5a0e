"""A client cannot inflate the gateway: its metrics, its log, what it keeps.

A real gateway (``AdsServicer`` on a grpc.aio server, its HTTP app serving
/metrics) on loopback, with no Kafka: the view cache is empty, so every node
is unknown and sees the (empty) shared view, which is all these tests need.
"""

from __future__ import annotations

import logging

import aiohttp
import grpc
import pytest
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from events.types import InstanceRegistered
from xds_gateway import metrics
from xds_gateway.cli import _http_app
from xds_gateway.protocol import CLUSTER
from xds_gateway.server import NACK_LOG_BURST, NODE_ID_MAX_LENGTH, AdsServicer, add_to_server
from xds_gateway.view_cache import ViewCache


@pytest.fixture
async def gateway():
    cache = ViewCache()
    cache.ready.set()
    server = grpc.aio.server()
    add_to_server(AdsServicer(cache), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    runner = web.AppRunner(await _http_app(cache), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    http_port = site._server.sockets[0].getsockname()[1]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel), http_port
    finally:
        await channel.close()
        await server.stop(0)
        await runner.cleanup()


async def get_metrics(http_port: int) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{http_port}/metrics") as response:
            return await response.text()


def nack_count(text: str, kind: str, type_label: str) -> float:
    wanted = f'meshlog_xds_nacks_total{{kind="{kind}",type_url="{type_label}"}} '
    return sum(float(line[len(wanted):]) for line in text.splitlines() if line.startswith(wanted))


def delta(node: str | None = None, type_url: str = CLUSTER, **kw) -> discovery_pb2.DeltaDiscoveryRequest:
    req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, **kw)
    if node is not None:
        req.node.CopyFrom(base_pb2.Node(id=node))
    return req


def nack(type_url: str, message: str, nonce: str = "n-1") -> discovery_pb2.DeltaDiscoveryRequest:
    return delta(type_url=type_url, response_nonce=nonce, error_detail=status_pb2.Status(code=3, message=message))


async def open_stream(stub, node: str):
    call = stub.DeltaAggregatedResources()
    await call.write(delta(node))
    first = await call.read()  # a first wildcard request is always answered
    assert first.type_url == CLUSTER
    return call


async def send_in_steps(call, requests, step: int = 50) -> None:
    """Write requests; every ``step`` a subscription whose answer shows the gateway took them all
    (the gateway sheds a client that runs more than 64 requests ahead of it)."""
    for i, request in enumerate(requests, 1):
        await call.write(request)
        if i % step == 0:
            await call.write(delta(type_url=CLUSTER, resource_names_subscribe=[f"sync-{i}"]))
            answer = await call.read()
            assert list(answer.removed_resources) == [f"sync-{i}"]


async def test_distinct_nacked_type_urls_do_not_grow_metrics(gateway):
    stub, http_port = gateway
    before = await get_metrics(http_port)
    call = await open_stream(stub, "bogus-types")
    n = 3000
    await send_in_steps(call, (nack(f"type.googleapis.com/bogus.Type{i}", "nope") for i in range(n)))
    after = await get_metrics(http_port)
    await call.done_writing()
    assert "bogus.Type" not in after
    assert nack_count(after, "delta", metrics.OTHER_TYPE) - nack_count(before, "delta", metrics.OTHER_TYPE) == n
    # a few new series at most (the "other" NACK counter and its _created line); was ~700 KB for 3000 types
    assert len(after) - len(before) < 2048, len(after) - len(before)


def test_only_served_types_are_label_values():
    assert metrics.type_label(CLUSTER) == CLUSTER
    assert metrics.type_label("type.googleapis.com/envoy.config.cluster.v3.Cluster ") == metrics.OTHER_TYPE
    assert metrics.type_label("") == metrics.OTHER_TYPE
    assert metrics.type_label("x" * 10_000) == metrics.OTHER_TYPE


@pytest.mark.parametrize("rpc", ["DeltaAggregatedResources", "StreamAggregatedResources"])
async def test_an_over_long_node_id_is_refused(gateway, rpc, caplog):
    stub, http_port = gateway
    caplog.set_level(logging.INFO, logger="xds_gateway")
    request_type = discovery_pb2.DeltaDiscoveryRequest if rpc.startswith("Delta") else discovery_pb2.DiscoveryRequest
    before = await get_metrics(http_port)
    call = getattr(stub, rpc)()
    await call.write(request_type(node=base_pb2.Node(id="n" * (1 << 20)), type_url=CLUSTER))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == f"node.id is 1048576 characters long; at most {NODE_ID_MAX_LENGTH} are accepted"
    assert sum(len(r.getMessage()) for r in caplog.records) < 1000  # the 1 MB id is not logged
    after = await get_metrics(http_port)
    refused_line = 'meshlog_xds_streams_refused_total{reason="node_id_too_long"} '
    count = lambda text: sum(float(l[len(refused_line):]) for l in text.splitlines() if l.startswith(refused_line))
    assert count(after) - count(before) == 1


async def test_a_node_id_of_the_longest_registrable_length_is_served(gateway):
    stub, _ = gateway
    call = await open_stream(stub, "n" * NODE_ID_MAX_LENGTH)
    await call.done_writing()


def test_the_limit_is_what_a_registration_may_carry():
    fields = dict(service="s", instance_id="i-1", address="10.0.0.1", port=80)
    InstanceRegistered(**fields, node_id="n" * NODE_ID_MAX_LENGTH)
    with pytest.raises(ValueError):
        InstanceRegistered(**fields, node_id="n" * (NODE_ID_MAX_LENGTH + 1))


async def test_nack_lines_are_bounded_escaped_and_throttled(gateway, caplog):
    stub, _ = gateway
    caplog.set_level(logging.INFO, logger="xds_gateway")
    node = "evil\x1b[2J\nnode"
    call = await open_stream(stub, node)
    n = 2000
    message = "bad\x1b[31m\nline " + "m" * 10_000
    await send_in_steps(call, (nack(CLUSTER, message, nonce=f"n{i}") for i in range(n)))
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    lines = [r.getMessage() for r in caplog.records if r.name == "xds_gateway.server"]
    nack_lines = [line for line in lines if "NACKed" in line]
    assert len(nack_lines) == NACK_LOG_BURST  # then one per interval: none within this test
    for line in lines:
        assert line.isprintable(), line  # no raw escape or newline from the client
        assert len(line) < 1000
    assert "evil\\x1b[2J\\x0anode" in nack_lines[0]
    assert "bad\\x1b[31m\\x0aline mmm" in nack_lines[0] and "…[+" in nack_lines[0]
    assert sum(len(line) for line in lines) < 5000  # was 2000 lines of 10 KB: ~20 MB
    assert lines[-1].endswith(f"closed (node evil\\x1b[2J\\x0anode; {n - NACK_LOG_BURST} NACK lines not logged)")


@pytest.mark.parametrize("kind", ["delta", "sotw"])
def test_the_stream_machines_keep_a_bounded_part_of_a_clients_text(kind):
    from xds_gateway.protocol import DeltaStream, SotwStream
    from xds_gateway.protocol.common import CLIENT_TEXT_MAX

    machine = (DeltaStream if kind == "delta" else SotwStream)("s-1", {})
    request = discovery_pb2.DeltaDiscoveryRequest if kind == "delta" else discovery_pb2.DiscoveryRequest
    huge = "m" * (1 << 20)
    [answer] = machine.on_request(request(node=base_pb2.Node(id="n"), type_url=CLUSTER))
    machine.on_request(request(type_url="t" + huge))  # a type this gateway does not serve
    # delta: a stale nonce of the client's own making; SotW: a NACK of the answer
    nonce = "x" * (1 << 20) if kind == "delta" else answer.nonce
    machine.on_request(request(type_url=CLUSTER, response_nonce=nonce,
                               error_detail=status_pb2.Status(code=3, message=huge)))
    [error] = machine.errors
    assert len(error.type_url) == CLIENT_TEXT_MAX
    [rejected] = machine.nacks
    assert len(rejected.message) == CLIENT_TEXT_MAX
    assert len(rejected.nonce) <= CLIENT_TEXT_MAX
