"""Envoy bootstrap for a meshlog sidecar: delta ADS to every gateway replica.

Invariants:
- CDS and LDS come over ADS (``DELTA_GRPC``, v3); EDS and RDS follow the
  rendered resources' own ``ads`` config sources.
- The xDS cluster lists every gateway address, speaks HTTP/2, and is
  round-robin with fast reconnects, so losing one replica moves the stream to
  another without operator action.
- All gateways given as IP literals: the cluster is ``STATIC``. Any gateway
  given by host name (``xds-gateway:18000`` in docker compose): the cluster
  is strict DNS (the ``envoy.cluster.dns`` extension with one endpoint per
  address) over IPv4, re-resolved every ``DNS_REFRESH`` — every A record of a
  name is an endpoint, so each scaled-out replica behind one name is used,
  and a removed replica drops out at the next resolution.
- The admin interface binds 127.0.0.1 only.
- With ``upstream_tls`` (``proxy.sds.upstream_tls_context``) every gateway is
  dialed over mTLS; without it, plaintext (``--insecure``).
"""

from __future__ import annotations

import ipaddress
from typing import Sequence

XDS_CLUSTER = "meshlog_xds"
DNS_CLUSTER_TYPE = "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster"
DNS_REFRESH = "2s"
DNS_FAILURE_REFRESH = {"base_interval": "0.5s", "max_interval": "5s"}


def _hostport(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"gateway address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def xds_cluster_discovery(hosts: Sequence[str]) -> dict:
    """The xDS cluster's discovery fields: STATIC for IP literals only, else strict DNS (IPv4, short refresh).

    Strict DNS is configured through the ``envoy.cluster.dns`` extension (``DnsCluster`` with
    ``all_addresses_in_single_endpoint: false`` = STRICT_DNS semantics): Envoy 1.40 deprecates the
    ``Cluster``-level ``dns_refresh_rate`` / ``dns_failure_refresh_rate`` that ``type: STRICT_DNS`` needs.
    """
    if all(is_ip_literal(h) for h in hosts):
        return {"type": "STATIC"}
    return {
        "cluster_type": {
            "name": "envoy.cluster.dns",
            "typed_config": {
                "@type": DNS_CLUSTER_TYPE,
                "all_addresses_in_single_endpoint": False,  # every A record is an endpoint (strict DNS)
                "dns_lookup_family": "V4_ONLY",
                "dns_refresh_rate": DNS_REFRESH,
                "dns_failure_refresh_rate": dict(DNS_FAILURE_REFRESH),
                "respect_dns_ttl": False,  # docker's DNS gives long TTLs: refresh on our own clock
            },
        }
    }


def envoy_bootstrap(
    *,
    node_id: str,
    node_cluster: str,
    gateways: Sequence[str],
    admin_port: int,
    api_type: str = "DELTA_GRPC",
    locality_zone: str | None = None,
    upstream_tls: dict | None = None,
) -> dict:
    if not gateways:
        raise ValueError("at least one gateway address is required")
    endpoints = []
    hosts = []
    for address in gateways:
        host, port = _hostport(address)
        if not host:
            raise ValueError(f"gateway address {address!r} has no host")
        hosts.append(host)
        endpoints.append({"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}})
    node: dict = {"id": node_id, "cluster": node_cluster}
    if locality_zone:
        node["locality"] = {"zone": locality_zone}
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    xds_cluster = {
        "name": XDS_CLUSTER,
        **xds_cluster_discovery(hosts),
        "connect_timeout": "0.25s",
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {"cluster_name": XDS_CLUSTER, "endpoints": [{"lb_endpoints": endpoints}]},
    }
    if upstream_tls is not None:
        xds_cluster["transport_socket"] = upstream_tls
    return {
        "node": node,
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": ads_source,
            "lds_config": ads_source,
        },
        "static_resources": {"clusters": [xds_cluster]},
    }
