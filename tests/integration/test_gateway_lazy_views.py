"""Story: a gateway holds in memory only the views of the nodes connected to it (``--views connected``,
the default), and still serves each node exactly its newest view.

Both index modes (``--view-index bytes``: undecoded values kept; ``offsets``: fetched by offset on
connect). Real broker, a real ``xds-gateway`` process; the view records are written to the view topics as the
projector writes them (bodies, then the membership naming them); the clients are grpc.aio delta ADS
streams that ACK every response, as Envoy does. Memory is read from the gateway's
``meshlog_view_nodes_in_memory`` gauge.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
from aiokafka import AIOKafkaProducer
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from events import topics
from events.admin import ensure_topics
from events.kafka_security import connection_kwargs
from projector.publisher import membership_value, resource_key
from projector.versioning import version_of
from tests.support.stack import metric_sum, metrics, start_gateway
from xds_gateway.protocol.resources import CLUSTER, LISTENER


def listener_body(node: str, tag: str) -> bytes:
    return listener_pb2.Listener(name=f"{node}~outbound", stat_prefix=tag).SerializeToString()


def cluster_body(name: str) -> bytes:
    return cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS).SerializeToString()


def node_records(node: str, tag: str, shared: str) -> list[tuple[str, bytes, bytes]]:
    """What the projector publishes for a node: its bodies first, then the membership naming them."""
    listener, cluster = listener_body(node, tag), cluster_body(shared)
    return [
        (topics.VIEW_RESOURCES, resource_key(LISTENER, f"{node}~outbound"), listener),
        (topics.VIEW_RESOURCES, resource_key(CLUSTER, shared), cluster),
        (topics.VIEW_MEMBERSHIP, node.encode(),
         membership_value(node, {LISTENER: {f"{node}~outbound": version_of(listener)},
                                 CLUSTER: {shared: version_of(cluster)}})),
    ]


async def append(bootstrap: str, records) -> None:
    producer = AIOKafkaProducer(**connection_kwargs(bootstrap), acks="all")
    await producer.start()
    try:
        for topic, key, value in records:
            await (await producer.send(topic, key=key, value=value))
    finally:
        await producer.stop()


class Stream:
    """One node's delta ADS stream, subscribed by wildcard to CDS and LDS; ACKs what it reads."""

    def __init__(self, channel: grpc.aio.Channel, node: str) -> None:
        self.node = node
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        self.held: dict[str, dict[str, bytes]] = {CLUSTER: {}, LISTENER: {}}

    async def open(self) -> None:
        for type_url in (CLUSTER, LISTENER):
            await self.call.write(discovery_pb2.DeltaDiscoveryRequest(node=base_pb2.Node(id=self.node),
                                                                      type_url=type_url))
        while not (self.held[CLUSTER] and self.held[LISTENER]):
            await self.read()

    async def read(self) -> discovery_pb2.DeltaDiscoveryResponse:
        response = await asyncio.wait_for(self.call.read(), 30)
        held = self.held[response.type_url]
        for r in response.resources:
            held[r.name] = r.resource.value
        for name in response.removed_resources:
            held.pop(name, None)
        await self.call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=response.type_url,
                                                                  response_nonce=response.nonce))
        return response

    async def until(self, predicate) -> None:
        while not predicate():
            await self.read()


async def gauge_until(http_port: int, name: str, wanted: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (value := metric_sum(metrics(http_port), name)) != wanted:
        assert time.monotonic() < deadline, f"{name} stayed {value}, not {wanted}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("index", ["bytes", "offsets"])
async def test_a_gateway_holds_only_its_connected_nodes_and_serves_each_its_newest_view(kafka_bootstrap, tmp_path,
                                                                                       index):
    await ensure_topics(kafka_bootstrap)
    run = uuid.uuid4().hex[:8]
    a, b, shared = f"lazy-a-{run}", f"lazy-b-{run}", f"lazy-svc-{run}"
    # written before the gateway starts: a connect finds them only through the index (kept bytes, or a fetch)
    await append(kafka_bootstrap, node_records(a, "a1", shared) + node_records(b, "b1", shared))
    gw = start_gateway(kafka_bootstrap, tmp_path, f"gateway-lazy-{index}",
                       extra=["--insecure", "--no-sync-log", "--view-index", index, "--view-grace", "0"])
    http = gw.info["http_port"]
    try:
        assert metric_sum(metrics(http), "meshlog_view_nodes_in_memory") == 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.info['xds_port']}") as channel:
            stream_a = Stream(channel, a)
            await stream_a.open()
            # exactly its view: its own listener, the shared cluster it names, nothing of b's
            assert stream_a.held == {LISTENER: {f"{a}~outbound": listener_body(a, "a1")},
                                     CLUSTER: {shared: cluster_body(shared)}}
            assert metric_sum(metrics(http), "meshlog_view_nodes_in_memory") == 1

            # a's record changes while it is connected: the tail applies it and the stream gets it
            await append(kafka_bootstrap, node_records(a, "a2", shared))
            await stream_a.until(lambda: stream_a.held[LISTENER][f"{a}~outbound"] == listener_body(a, "a2"))

            # b's record changes while b is not connected; b then connects and gets the newest one
            await append(kafka_bootstrap, node_records(b, "b2", shared))
            await asyncio.sleep(1.0)  # let the tail index it
            stream_b = Stream(channel, b)
            await stream_b.open()
            await stream_b.until(lambda: stream_b.held[LISTENER].get(f"{b}~outbound") == listener_body(b, "b2"))
            assert set(stream_b.held[LISTENER]) == {f"{b}~outbound"}
            assert metric_sum(metrics(http), "meshlog_view_nodes_in_memory") == 2

            # a disconnects: its view leaves memory (grace 0); b's stays
            stream_a.call.cancel()
            await gauge_until(http, "meshlog_view_nodes_in_memory", 1)
            assert metric_sum(metrics(http), "meshlog_view_node_loads_total") == 2
            stream_b.call.cancel()
            await gauge_until(http, "meshlog_view_nodes_in_memory", 0)
    finally:
        code = gw.stop()
    assert code == 0
