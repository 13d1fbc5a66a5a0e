"""Builders of Envoy v3 messages from plain inputs (no MeshState here).

Every builder is a pure function of its arguments and fills fields in a fixed
order, so that ``SerializeToString(deterministic=True)`` of its result is a
function of the arguments alone. Packed ``Any`` values are packed with
deterministic serialization too.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Sequence

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2, health_check_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.on_demand.v3 import on_demand_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from events import types as t

HCM_FILTER = "envoy.filters.network.http_connection_manager"
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
ROUTER_FILTER = "envoy.filters.http.router"
ON_DEMAND_FILTER = "envoy.filters.http.on_demand"
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

DEFAULT_CONNECT_TIMEOUT_MS = 1000
# How long Envoy's on-demand filter waits for a cluster it asked for (its own default too). Longer than the
# gateway's hold of such a request (xds-gateway --on-demand-hold, 3 s), so the gateway's answer -- the cluster,
# or "does not exist" -- always arrives before Envoy gives up on its own.
ON_DEMAND_CDS_TIMEOUT_MS = 5000
#: The catch-all virtual host of a sidecar's outbound route (``~``: never a service's name).
ON_DEMAND_VHOST = "~on-demand"

_LB = {
    "round_robin": cluster_pb2.Cluster.ROUND_ROBIN,
    "least_request": cluster_pb2.Cluster.LEAST_REQUEST,
    "random": cluster_pb2.Cluster.RANDOM,
    "ring_hash": cluster_pb2.Cluster.RING_HASH,
}
_HEALTH = {
    "healthy": health_check_pb2.HEALTHY,
    "unhealthy": health_check_pb2.UNHEALTHY,
    "draining": health_check_pb2.DRAINING,
}


def duration_ms(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def pack(msg) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(msg, deterministic=True)
    return out


def ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3)


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))


@lru_cache(maxsize=65536)
@lru_cache(maxsize=1)
def _http2_options() -> any_pb2.Any:
    opts = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    return pack(opts)


@lru_cache(maxsize=1)
def _on_demand_filter() -> http_connection_manager_pb2.HttpFilter:
    # no odcds here: on-demand CDS is off except where a route or virtual host turns it on (the catch-all)
    return http_connection_manager_pb2.HttpFilter(name=ON_DEMAND_FILTER, typed_config=pack(on_demand_pb2.OnDemand()))


@lru_cache(maxsize=1)
def _router_filter() -> http_connection_manager_pb2.HttpFilter:
    return http_connection_manager_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router()))


# ---------------------------------------------------------------- clusters and endpoints


def eds_cluster(
    name: str, protocol: str, policy: t.DestinationPolicyUpserted | None, transport_socket=None
) -> cluster_pb2.Cluster:
    """An EDS cluster (endpoints over ADS) shaped by the service's destination policy.

    ``transport_socket``: how to dial the endpoints (``projector.mesh_tls``: mTLS to
    sidecars with a mesh identity); None: plaintext.
    """
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads_source()),
        connect_timeout=duration_ms(policy.connect_timeout_ms if policy else DEFAULT_CONNECT_TIMEOUT_MS),
        lb_policy=_LB[policy.lb_policy] if policy else cluster_pb2.Cluster.ROUND_ROBIN,
    )
    if policy is not None:
        cb = policy.circuit_breaker
        if cb is not None:
            c.circuit_breakers.thresholds.append(
                circuit_breaker_pb2.CircuitBreakers.Thresholds(
                    max_connections=wrappers_pb2.UInt32Value(value=cb.max_connections),
                    max_pending_requests=wrappers_pb2.UInt32Value(value=cb.max_pending_requests),
                    max_requests=wrappers_pb2.UInt32Value(value=cb.max_requests),
                    max_retries=wrappers_pb2.UInt32Value(value=cb.max_retries),
                )
            )
        od = policy.outlier_detection
        if od is not None:
            c.outlier_detection.CopyFrom(
                outlier_detection_pb2.OutlierDetection(
                    consecutive_5xx=wrappers_pb2.UInt32Value(value=od.consecutive_5xx),
                    interval=duration_ms(od.interval_ms),
                    base_ejection_time=duration_ms(od.base_ejection_time_ms),
                    max_ejection_percent=wrappers_pb2.UInt32Value(value=od.max_ejection_percent),
                )
            )
    if protocol == "grpc":
        c.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(_http2_options())
    if transport_socket is not None:
        c.transport_socket.CopyFrom(transport_socket)
    return c


def static_local_cluster(name: str, app_port: int, protocol: str) -> cluster_pb2.Cluster:
    """The sidecar's cluster for its own app: 127.0.0.1:<app port>, inline endpoint."""
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration_ms(DEFAULT_CONNECT_TIMEOUT_MS),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(address=socket_address("127.0.0.1", app_port))
                        )
                    ]
                )
            ],
        ),
    )
    if protocol == "grpc":
        c.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(_http2_options())
    return c


@lru_cache(maxsize=1 << 16)
def lb_endpoint(address: str, port: int, health: str, weight: int) -> endpoint_components_pb2.LbEndpoint:
    """Cached across render passes: callers must only copy the result (``extend``), never modify it."""
    return endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=socket_address(address, port)),
        health_status=_HEALTH[health],
        load_balancing_weight=wrappers_pb2.UInt32Value(value=weight),
    )


def load_assignment(
    cluster_name: str, by_zone: Sequence[tuple[str, Sequence[endpoint_components_pb2.LbEndpoint]]]
) -> endpoint_pb2.ClusterLoadAssignment:
    """``by_zone``: (zone, endpoints) pairs, already in a deterministic order ("" = no zone)."""
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster_name)
    for zone, eps in by_zone:
        loc = cla.endpoints.add()
        loc.locality.SetInParent()  # gRPC's xDS client NACKs a locality that is absent, even an empty one
        if zone:
            loc.locality.zone = zone
        loc.lb_endpoints.extend(eps)
        # gRPC's xDS client drops a locality with no weight (Envoy ignores the
        # field unless locality-weighted LB is on), so weigh each zone by its endpoints
        loc.load_balancing_weight.value = max(1, sum(e.load_balancing_weight.value or 1 for e in eps))
    return cla


# ---------------------------------------------------------------- routes


def _header_matcher(h: t.HeaderMatch) -> route_components_pb2.HeaderMatcher:
    if h.present:
        return route_components_pb2.HeaderMatcher(name=h.name, present_match=True)
    if h.exact is not None:
        return route_components_pb2.HeaderMatcher(name=h.name, string_match=string_pb2.StringMatcher(exact=h.exact))
    return route_components_pb2.HeaderMatcher(name=h.name, string_match=string_pb2.StringMatcher(prefix=h.prefix))


def http_route(
    name: str, route: t.HttpRoute, host: str, streaming: bool
) -> route_components_pb2.Route:
    """One route of a route rule; destinations with weight 0 are left out."""
    m = route.match
    match = route_components_pb2.RouteMatch()
    if m.path_exact is not None:
        match.path = m.path_exact
    else:
        match.prefix = m.path_prefix or "/"
    if m.headers:
        match.headers.extend(_header_matcher(h) for h in m.headers)
    action = route_components_pb2.RouteAction()
    live = [d for d in route.destinations if d.weight > 0]
    if len(live) == 1:
        d = live[0]
        action.cluster = _cluster_name(d.service or host, d.subset)
    else:
        wc = action.weighted_clusters
        for d in live:
            wc.clusters.add(name=_cluster_name(d.service or host, d.subset), weight=wrappers_pb2.UInt32Value(value=d.weight))
    if route.timeout_ms is not None:
        action.timeout.CopyFrom(duration_ms(route.timeout_ms))
    elif streaming:
        action.timeout.CopyFrom(duration_pb2.Duration())  # 0 = no timeout: gRPC streams
    if route.retries is not None:
        r = route.retries
        rp = action.retry_policy
        rp.retry_on = ",".join(r.retry_on)
        rp.num_retries.value = r.attempts
        if r.per_try_timeout_ms is not None:
            rp.per_try_timeout.CopyFrom(duration_ms(r.per_try_timeout_ms))
    return route_components_pb2.Route(name=name, match=match, route=action)


def _cluster_name(service: str, subset: str | None) -> str:
    return service if subset is None else f"{service}|{subset}"


def default_route(cluster: str, streaming: bool) -> route_components_pb2.Route:
    action = route_components_pb2.RouteAction(cluster=cluster)
    if streaming:
        action.timeout.CopyFrom(duration_pb2.Duration())
    return route_components_pb2.Route(name="default", match=route_components_pb2.RouteMatch(prefix="/"), route=action)


def virtual_host(
    service: str, domains: Iterable[str], rule: t.RouteRuleUpserted | None, streaming: bool
) -> route_components_pb2.VirtualHost:
    """Routes of the host's rule (if served), then the default route to the service's cluster."""
    vh = route_components_pb2.VirtualHost(name=service, domains=list(domains))
    if rule is not None:
        for i, r in enumerate(rule.routes):
            vh.routes.append(http_route(f"{service}/r{rule.revision}/{i}", r, service, streaming))
    vh.routes.append(default_route(service, streaming))
    return vh


@lru_cache(maxsize=1)
def on_demand_virtual_host() -> route_components_pb2.VirtualHost:
    """The outbound catch-all: a Host no dependency's virtual host matches names the cluster to ask for.

    ``cluster_header`` is the one route action for which Envoy's on-demand
    filter asks for a missing cluster (ODCDS over the ADS stream) and holds
    the request until it arrives or ``ON_DEMAND_CDS_TIMEOUT_MS`` passes. The
    outbound connection manager strips the port from the Host first
    (``strip_any_host_port``), so ``:authority`` is the service's name, which
    is its cluster's name (``naming.service_cluster``). Once the node's
    subscription is rendered the service has its own virtual host again.
    Cached: callers only copy it into a route configuration.
    """
    odcds = on_demand_pb2.PerRouteConfig(odcds=on_demand_pb2.OnDemandCds(
        source=ads_source(), timeout=duration_ms(ON_DEMAND_CDS_TIMEOUT_MS)))
    vh = route_components_pb2.VirtualHost(
        name=ON_DEMAND_VHOST, domains=["*"],
        routes=[route_components_pb2.Route(name="on-demand", match=route_components_pb2.RouteMatch(prefix="/"),
                                           route=route_components_pb2.RouteAction(cluster_header=":authority"))])
    vh.typed_per_filter_config[ON_DEMAND_FILTER].CopyFrom(pack(odcds))
    return vh


def route_configuration(name: str, vhosts: Iterable[route_components_pb2.VirtualHost]) -> route_pb2.RouteConfiguration:
    rc = route_pb2.RouteConfiguration(name=name)
    rc.virtual_hosts.extend(vhosts)
    return rc


# ---------------------------------------------------------------- listeners


def _hcm_rds(stat_prefix: str, route_name: str, on_demand: bool = False) -> http_connection_manager_pb2.HttpConnectionManager:
    """``on_demand``: the sidecar's outbound side (a proxyless gRPC client has no on-demand filter)."""
    hcm = http_connection_manager_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=http_connection_manager_pb2.HttpConnectionManager.AUTO,
        rds=http_connection_manager_pb2.Rds(config_source=ads_source(), route_config_name=route_name),
        http_filters=[_on_demand_filter(), _router_filter()] if on_demand else [_router_filter()],
    )
    if on_demand:
        hcm.strip_any_host_port = True  # the catch-all reads the cluster's name from :authority
    return hcm


def _listener(name: str, address: address_pb2.Address, filter_name: str, typed_config) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name,
        address=address,
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name=filter_name, typed_config=pack(typed_config))]
            )
        ],
    )


def outbound_http_listener(name: str, port: int, route_name: str) -> listener_pb2.Listener:
    """127.0.0.1:<outbound port>, routes by Host over RDS (ADS); asks for unknown hosts' clusters on demand."""
    return _listener(name, socket_address("127.0.0.1", port), HCM_FILTER, _hcm_rds("outbound", route_name, on_demand=True))


def inbound_route_configuration(
    name: str, local_cluster: str, protocol: str, filter_configs: Iterable[tuple[str, any_pb2.Any]] = ()
) -> route_pb2.RouteConfiguration:
    """The inbound side's routes: one catch-all virtual host to the local app.

    ``filter_configs``: (HTTP filter name, packed per-route config) pairs set on
    the virtual host (``typed_per_filter_config``), in the given order; e.g. the
    RBAC policy of a sidecar with a mesh identity (``projector.mesh_tls``).
    """
    vh = route_components_pb2.VirtualHost(name="local", domains=["*"], routes=[default_route(local_cluster, protocol == "grpc")])
    for filter_name, config in filter_configs:
        vh.typed_per_filter_config[filter_name].CopyFrom(config)
    return route_configuration(name, [vh])


def inbound_listener(
    name: str, bind: str, port: int, local_cluster: str, protocol: str, transport_socket=None, rbac_filter=None,
    route_name: str | None = None,
) -> listener_pb2.Listener:
    """In front of the local app: tcp_proxy for TCP, else an HCM routing to it.

    The HCM's routes: ``inbound_route_configuration`` inline, or, with
    ``route_name``, that route configuration over RDS (ADS) -- so what the
    routes carry (a sidecar's RBAC policy) can change without a new listener:
    Envoy applies a listener update to new connections only, a route update
    to the next request on every connection.

    A sidecar with a mesh identity (``projector.mesh_tls``) adds ``transport_socket``
    (mTLS, client certificate required) and ``rbac_filter`` (a network filter put
    before tcp_proxy for TCP, else an HTTP filter put before the router); without
    them: plaintext, everyone admitted.
    """
    address = socket_address(bind, port)
    if protocol == "tcp":
        lis = _listener(name, address, TCP_PROXY_FILTER, tcp_proxy_pb2.TcpProxy(stat_prefix="inbound", cluster=local_cluster))
        chain = lis.filter_chains[0]
        if rbac_filter is not None:
            chain.filters.insert(0, rbac_filter)
        if transport_socket is not None:
            chain.transport_socket.CopyFrom(transport_socket)
        return lis
    filters = [_router_filter()] if rbac_filter is None else [rbac_filter, _router_filter()]
    hcm = http_connection_manager_pb2.HttpConnectionManager(
        stat_prefix="inbound", codec_type=http_connection_manager_pb2.HttpConnectionManager.AUTO
    )
    if route_name is None:
        hcm.route_config.CopyFrom(inbound_route_configuration(name, local_cluster, protocol))
    else:
        hcm.rds.CopyFrom(http_connection_manager_pb2.Rds(config_source=ads_source(), route_config_name=route_name))
    hcm.http_filters.extend(filters)
    lis = _listener(name, address, HCM_FILTER, hcm)
    if transport_socket is not None:
        lis.filter_chains[0].transport_socket.CopyFrom(transport_socket)
    return lis


def outbound_tcp_listener(name: str, port: int, service: str) -> listener_pb2.Listener:
    return _listener(
        name,
        socket_address("127.0.0.1", port),
        TCP_PROXY_FILTER,
        tcp_proxy_pb2.TcpProxy(stat_prefix=f"outbound_tcp.{service}", cluster=service),
    )


def api_listener(name: str, route_name: str) -> listener_pb2.Listener:
    """The listener a proxyless gRPC client asks for by the name in ``xds:///<name>``."""
    return listener_pb2.Listener(
        name=name,
        api_listener=api_listener_pb2.ApiListener(api_listener=pack(_hcm_rds(name, route_name))),
    )


__all__ = [
    "api_listener",
    "eds_cluster",
    "inbound_listener",
    "inbound_route_configuration",
    "lb_endpoint",
    "load_assignment",
    "on_demand_virtual_host",
    "outbound_http_listener",
    "outbound_tcp_listener",
    "route_configuration",
    "static_local_cluster",
    "virtual_host",
]
