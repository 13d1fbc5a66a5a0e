"""Story: `xds-gateway run --workers 2` is one replica of two gateway processes on one port; the kernel
spreads connections over both (SO_REUSEPORT), each serves its streams, and SIGTERM stops them all.

Real broker, real `xds-gateway` processes; the clients are grpc.aio delta ADS streams, one connection
each. A response's nonce starts with the serving process's pid (stream ids are "<pid>-<n>").
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from events.admin import ensure_topics
from tests.support.stack import metric_sum, metrics, start_gateway
from xds_gateway.protocol.resources import CLUSTER

CONNECTIONS = 24


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def _first_nonce(port: int, i: int) -> str:
    # a new channel each: its own TCP connection, which the kernel gives to one of the workers
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).DeltaAggregatedResources()
        await call.write(discovery_pb2.DeltaDiscoveryRequest(node=base_pb2.Node(id=f"stranger-{i}"), type_url=CLUSTER))
        response = await asyncio.wait_for(call.read(), 30)
        call.cancel()
        return response.nonce


def test_two_workers_share_the_port_and_each_serves_its_connections(kafka_bootstrap, tmp_path):
    asyncio.run(ensure_topics(kafka_bootstrap))
    gw = start_gateway(kafka_bootstrap, tmp_path, "gateway-workers", extra=["--insecure", "--workers", "2"])
    try:
        info = gw.info
        assert info["workers"] == 2 and len(info["pids"]) == 2 and len(set(info["http_ports"])) == 2
        assert all(_parent_of(p) == gw.pid for p in info["pids"])

        async def all_streams():
            return await asyncio.gather(*(_first_nonce(info["xds_port"], i) for i in range(CONNECTIONS)))

        nonces = asyncio.run(all_streams())
        serving = {int(n.split("-", 1)[0]) for n in nonces}
        # 24 connections over 2 listening sockets: all on one side has odds 2 ** -23
        assert serving == set(info["pids"])
        # each worker has its own /metrics and counted its own responses (a response is counted once its
        # write completes, which may come after the client, having read it, went away)
        sent = [metric_sum(metrics(p), "meshlog_xds_responses_total") for p in info["http_ports"]]
        assert all(0 < x <= CONNECTIONS for x in sent)
    finally:
        code = gw.stop()
    assert code == 0
    assert not any(Path(f"/proc/{p}").exists() for p in info["pids"])  # stopped and reaped
