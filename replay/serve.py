"""``replay serve``: a read-only xDS server frozen at one instant.

The gateway's own ``AdsServicer`` over a ``ViewCache`` filled once from the
rendered mesh of the instant — the same records the live projector would
have published for that state (resource bodies keyed ``<type_url>|<name>``,
memberships as ``projector.publisher.membership_value``). It never tails
Kafka: nothing changes after start, so a debug Envoy attached to it holds
exactly that instant's config, for as long as it likes.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
import orjson
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from events.files import write_file_atomic
from projector.publisher import membership_value, resource_key
from projector.render import RenderedMesh
from xds_gateway.server import AdsServicer, add_to_server
from xds_gateway.view_cache import ViewCache

log = logging.getLogger("replay.serve")
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def cache_from_rendered(rendered: RenderedMesh) -> ViewCache:
    """A ready ``ViewCache`` holding exactly ``rendered`` (bodies first, then memberships)."""
    cache = ViewCache()
    changed: set[str] = set()
    for (type_url, name), body in sorted(rendered.resources.items()):
        cache.apply_resource(resource_key(type_url, name), body, changed)
    for node, resources in sorted(rendered.membership.items()):
        cache.apply_membership(node.encode(), membership_value(node, resources, rendered.owners.get(node)), changed)
    cache.ready.set()
    return cache


async def serve_frozen(
    rendered: RenderedMesh,
    *,
    listen: str,
    port: int,
    grace: float,
    info: dict,
    ready_file: str | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    cache = cache_from_rendered(rendered)
    server = grpc.aio.server(options=[("grpc.keepalive_time_ms", 30_000), ("grpc.http2.max_pings_without_data", 0)])
    add_to_server(AdsServicer(cache), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", ADS_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    bound = server.add_insecure_port(f"{listen}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {listen}:{port}")
    await server.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    line = orjson.dumps(
        {"xds_port": bound, "listen": listen, **info, "nodes": len(rendered.membership),
         "resources": len(rendered.resources)}
    ).decode()
    print(line, flush=True)
    if ready_file:
        write_file_atomic(ready_file, line.encode())
    log.info("serving the mesh as of %s on %s:%d (read-only); SIGTERM stops", info.get("at"), listen, bound)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        for service in ("", ADS_SERVICE):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.stop(grace)
        log.info("stopped")
    return 0
