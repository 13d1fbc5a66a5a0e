"""Envoy bootstrap for a meshlog sidecar: delta ADS to every gateway replica.

Invariants:
- CDS and LDS come over ADS (``DELTA_GRPC``, v3); EDS and RDS follow the
  rendered resources' own ``ads`` config sources.
- The xDS cluster lists every gateway address, speaks HTTP/2, and is
  round-robin with fast reconnects, so losing one replica moves the stream to
  another without operator action.
- The admin interface binds 127.0.0.1 only.
"""

from __future__ import annotations

from typing import Sequence

XDS_CLUSTER = "meshlog_xds"


def _hostport(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"gateway address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def envoy_bootstrap(
    *,
    node_id: str,
    node_cluster: str,
    gateways: Sequence[str],
    admin_port: int,
    api_type: str = "DELTA_GRPC",
    locality_zone: str | None = None,
) -> dict:
    if not gateways:
        raise ValueError("at least one gateway address is required")
    endpoints = []
    for address in gateways:
        host, port = _hostport(address)
        endpoints.append({"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}})
    node: dict = {"id": node_id, "cluster": node_cluster}
    if locality_zone:
        node["locality"] = {"zone": locality_zone}
    ads_source = {"ads": {}, "resource_api_version": "V3"}
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
        "static_resources": {
            "clusters": [
                {
                    "name": XDS_CLUSTER,
                    "type": "STATIC",
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
            ]
        },
    }
