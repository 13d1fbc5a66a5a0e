"""The xDS type urls the projector renders (Envoy v3)."""

from __future__ import annotations

_PREFIX = "type.googleapis.com/"

CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"

# in the order a server should send them: clusters before endpoints, listeners before routes
TYPE_URLS: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
