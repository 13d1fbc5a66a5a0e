"""``replay serve``: a read-only xDS server frozen at one instant.

The gateway's own ``AdsServicer`` over a ``ViewCache`` filled once from the
rendered mesh of the instant — the same records the live projector would
have published for that state (resource bodies keyed ``<type_url>|<name>``,
memberships as ``projector.publisher.membership_value``). It never tails
Kafka: nothing changes after start, so a debug Envoy attached to it holds
exactly that instant's config, for as long as it likes.

Secure by default, as the gateways: TLS with the server's mesh certificate
(``--tls-cert``/``--tls-key``), client certificates required and chaining to
the mesh root (``--tls-ca``), and only ``operator/<user>`` identities are
served (``OperatorsOnly``): a past instant of every node's config is an
operator's debugging tool, not a workload's. Plaintext only with an explicit
``--insecure`` (loopback development; a warning is logged, louder off
loopback).

Invariants:
- A plaintext client, or a certificate of another root, fails the TLS
  handshake; a certificate without exactly one SPIFFE id of the mesh's trust
  domain is ``UNAUTHENTICATED``; any identity but an operator's is
  ``PERMISSION_DENIED`` at its first request, before any data, counted in
  ``meshlog_xds_refused_total{reason="not_operator"}`` and logged once.
- The server's certificate is re-read at the next handshake after its files
  change (``xds_gateway.tls.server_credentials``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal

import grpc
import orjson
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from events.files import write_file_atomic
from events.printable import quoted
from projector.publisher import membership_value, resource_key
from projector.render import RenderedMesh
from xds_gateway.authz import DENY, Decision
from xds_gateway.guard import Peer, TrustGuard
from xds_gateway.server import AdsServicer, add_to_server
from xds_gateway.tls import TlsFiles, load_material, server_credentials
from xds_gateway.view_cache import ViewCache

log = logging.getLogger("replay.serve")
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


class OperatorsOnly(TrustGuard):
    """The gateway's guard (who is on the stream), deciding one thing more: only operators are served."""

    def decide(self, peer: Peer, node_id: str, owner: tuple[str, str] | None) -> Decision:
        if peer.identity is not None and peer.identity.role != "operator":
            decision = Decision(DENY, "not_operator", f"replay serve answers operator identities only; "
                                                      f"{quoted(peer.name, 120)} asked for node {quoted(node_id, 120)}")
            self.refused(decision, peer.name, node_id)
            return decision
        return super().decide(peer, node_id, owner)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def cache_from_rendered(rendered: RenderedMesh) -> ViewCache:
    """A ready ``ViewCache`` holding exactly ``rendered`` (bodies first, then memberships)."""
    cache = ViewCache()
    changed: set[str] = set()
    for (type_url, name), body in sorted(rendered.resources.items()):
        cache.apply_resource(resource_key(type_url, name), body, changed, rendered.versions[(type_url, name)])
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
    tls_files: TlsFiles | None,
    ready_file: str | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Serve ``rendered`` until ``stop`` (or SIGTERM/SIGINT); mTLS for operators with ``tls_files``, else plaintext."""
    material = load_material(tls_files) if tls_files is not None else None
    cache = cache_from_rendered(rendered)
    server = grpc.aio.server(options=[("grpc.keepalive_time_ms", 30_000), ("grpc.http2.max_pings_without_data", 0)])
    guard = OperatorsOnly(material.identity.domain) if material is not None else None
    add_to_server(AdsServicer(cache, guard=guard), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", ADS_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    address = f"{listen}:{port}"
    if tls_files is None or material is None:
        log.warning("--insecure: plaintext xDS on %s; any client can read every node's config as of the instant. "
                    "Loopback development only%s", address, "" if _is_loopback(listen) else
                    " -- and this address is NOT loopback")
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, server_credentials(tls_files, material))
        log.info("mTLS as %s; operator client certificates of %s required", material.identity.uri,
                 material.identity.domain)
    if bound == 0:
        raise OSError(f"cannot bind {listen}:{port}")
    await server.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    line = orjson.dumps(
        {"xds_port": bound, "listen": listen, "tls": material is not None, **info, "nodes": len(rendered.membership),
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
