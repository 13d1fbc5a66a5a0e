"""Is a gateway serving? ``grpc.health.v1.Health/Check`` on its xDS port.

An xds-gateway reports SERVING only once it has caught up on the view topics,
so a gateway that accepts connections but would hand out an empty view is not
counted. Every probe is bounded by ``timeout`` seconds and never raises.
With ``credentials`` (the sidecar's mTLS) the probes dial TLS, presenting the
workload certificate, so the gateway answers them as it answers Envoy; the
gateway's certificate must then name the dialed host (DNS/IP SAN).
"""

from __future__ import annotations

import asyncio
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(address)
    return grpc.aio.secure_channel(address, credentials)


async def gateway_serving(address: str, timeout: float = 1.0,
                          credentials: grpc.ChannelCredentials | None = None) -> bool:
    try:
        async with _channel(address, credentials) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except (grpc.RpcError, asyncio.TimeoutError, OSError):
        return False
    except Exception:  # noqa: BLE001 - a probe answers yes or no, whatever went wrong
        return False


async def serving_gateways(addresses: Sequence[str], timeout: float = 1.0,
                           credentials: grpc.ChannelCredentials | None = None) -> list[str]:
    """The addresses (in the given order) whose health check answered SERVING within ``timeout``."""
    results = await asyncio.gather(*(gateway_serving(a, timeout, credentials) for a in addresses))
    return [a for a, ok in zip(addresses, results) if ok]


LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


async def listeners_served(address: str, node_id: str, node_cluster: str, timeout: float = 2.0,
                           credentials: grpc.ChannelCredentials | None = None) -> int | None:
    """How many listeners the gateway would give this node now (a one-shot delta LDS wildcard), None if unknown.

    Asked before leaving cache mode: a gateway that is up but has no view of
    this node (e.g. its registration has not been folded yet) would make the
    ADS-mode Envoy come up with no listener.
    """
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    try:
        async with _channel(address, credentials) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.DeltaAggregatedResources(timeout=timeout)
            await call.write(discovery_pb2.DeltaDiscoveryRequest(
                node=base_pb2.Node(id=node_id, cluster=node_cluster), type_url=LISTENER_TYPE))
            try:
                reply = await asyncio.wait_for(call.read(), timeout)
            finally:
                call.cancel()
            if reply is grpc.aio.EOF or reply.type_url != LISTENER_TYPE:
                return None
            return len(reply.resources)
    except (grpc.RpcError, asyncio.TimeoutError, OSError):
        return None
    except Exception:  # noqa: BLE001 - a probe answers, whatever went wrong
        return None
