"""Builders for protocol-core tests: real xDS resource bodies, views, requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from xds_gateway.protocol import CLUSTER, ENDPOINT, LISTENER, ROUTE, VersionedResource, make_resource

CDS, EDS, LDS, RDS = CLUSTER, ENDPOINT, LISTENER, ROUTE
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


@dataclass
class ViewRec:
    """A view-topic record as the view cache reads it (looks like an aiokafka ConsumerRecord)."""

    topic: str
    key: bytes
    value: bytes | None
    timestamp: int = 1
    partition: int = 0
    offset: int = 0
    headers: tuple | None = None


def body(type_url: str, name: str, tag: object) -> bytes:
    """A deterministic serialized resource whose content depends on ``tag``."""
    tag = str(tag)
    if type_url == CDS:
        msg = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS, alt_stat_name=f"{name}/{tag}")
        msg.eds_cluster_config.eds_config.ads.SetInParent()
    elif type_url == EDS:
        msg = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
        msg.endpoints.add().locality.zone = tag
    elif type_url == LDS:
        msg = listener_pb2.Listener(name=name, stat_prefix=tag)
    elif type_url == RDS:
        msg = route_pb2.RouteConfiguration(name=name)
        msg.virtual_hosts.add(name=tag, domains=["*"])
    else:
        raise ValueError(type_url)
    return msg.SerializeToString(deterministic=True)


def res(type_url: str, name: str, tag: object = 1) -> VersionedResource:
    return make_resource(type_url, name, body(type_url, name, tag))


def view(spec: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, VersionedResource]]:
    """``{type: {name: tag}}`` -> NodeView."""
    return {t: {n: res(t, n, tag) for n, tag in names.items()} for t, names in spec.items()}


def dreq(
    type_url: str,
    sub: Iterable[str] = (),
    unsub: Iterable[str] = (),
    *,
    nonce: str = "",
    error: str | None = None,
    irv: Mapping[str, str] | None = None,
    node: str = "node-1",
) -> discovery_pb2.DeltaDiscoveryRequest:
    r = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(sub),
        resource_names_unsubscribe=list(unsub),
        response_nonce=nonce,
        initial_resource_versions=dict(irv or {}),
    )
    if node:
        r.node.id = node
    if error is not None:
        r.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return r


def sreq(
    type_url: str,
    names: Iterable[str] = (),
    *,
    nonce: str = "",
    version: str = "",
    error: str | None = None,
    node: str = "node-1",
) -> discovery_pb2.DiscoveryRequest:
    r = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=list(names), response_nonce=nonce, version_info=version
    )
    if node:
        r.node.id = node
    if error is not None:
        r.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return r


def names(resp) -> list[str]:
    """Names of the resources of a delta response, in order."""
    return [r.name for r in resp.resources]


def summary(resps) -> list[tuple[str, list[str], list[str]]]:
    """Delta responses as (short type, resource names, removed names)."""
    return [(short(r.type_url), names(r), list(r.removed_resources)) for r in resps]


def sotw_names(resp) -> list[str]:
    """Names of the resources of a SotW response (decoded from the Any), in order."""
    out = []
    for a in resp.resources:
        cls = {
            CDS: cluster_pb2.Cluster,
            EDS: endpoint_pb2.ClusterLoadAssignment,
            LDS: listener_pb2.Listener,
            RDS: route_pb2.RouteConfiguration,
        }[a.type_url]
        m = cls.FromString(a.value)
        out.append(m.cluster_name if a.type_url == EDS else m.name)
    return out


def ssummary(resps) -> list[tuple[str, list[str]]]:
    return [(short(r.type_url), sotw_names(r)) for r in resps]


def short(type_url: str) -> str:
    return {CDS: "CDS", EDS: "EDS", LDS: "LDS", RDS: "RDS"}.get(type_url, type_url)
