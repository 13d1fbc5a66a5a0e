"""Resource and entity names: one place that says what each name means.

Invariants:
- A (type_url, name) pair identifies its content globally: every node that is
  sent a resource of that name is sent the same bytes. Per-node resources
  therefore carry the node id in their name; shared ones never do.
- Shared names are built from service and subset names, which are DNS-style
  (``[a-z0-9.-]``), so they never contain ``~`` or ``|`` except as our own
  separators: a per-node name (always containing ``~``) can never equal a
  shared one.
- A node id is free text. ``~`` and ``%`` inside it are percent-escaped
  (``%7E``, ``%25``) so that ``<node>~tcp~<service>`` can never collide with
  another node's ``<node>~outbound``. Ordinary node ids are used unchanged.

Scheme:

=================================  ==========================================
``<service>``                      Cluster, ClusterLoadAssignment of a service;
                                   also the proxyless gRPC API Listener and its
                                   RouteConfiguration (other type urls)
``<service>|<subset>``             Cluster, ClusterLoadAssignment of a subset
``<node>~outbound``                the node's outbound HTTP Listener and its
                                   RouteConfiguration
``<node>~inbound``                 the node's inbound Listener; also, for a
                                   sidecar with a mesh identity and an HTTP or
                                   gRPC service, its RouteConfiguration (RBAC
                                   per route, ``projector.mesh_tls``)
``<node>~local``                   the node's local-app Cluster (STATIC)
``<node>~tcp~<service>``           the node's outbound TCP Listener for a
                                   TCP dependency
=================================  ==========================================
"""

from __future__ import annotations

NODE_SEP = "~"
SUBSET_SEP = "|"


def escape_node(node_id: str) -> str:
    if "~" not in node_id and "%" not in node_id:
        return node_id
    return node_id.replace("%", "%25").replace("~", "%7E")


def unescape_node(escaped: str) -> str:
    return escaped.replace("%7E", "~").replace("%25", "%")


def instance_key(service: str, instance_id: str) -> str:
    """The state key of an instance (equal to the event key on its topics)."""
    return f"{service}/{instance_id}"


def service_of_key(key: str) -> str:
    return key.split("/", 1)[0]


def service_cluster(service: str) -> str:
    return service


def subset_cluster(service: str, subset: str) -> str:
    return f"{service}{SUBSET_SEP}{subset}"


def destination_cluster(service: str, subset: str | None) -> str:
    return service if subset is None else subset_cluster(service, subset)


def outbound_listener(node_id: str) -> str:
    return f"{escape_node(node_id)}~outbound"


def outbound_route(node_id: str) -> str:
    return f"{escape_node(node_id)}~outbound"


def inbound_listener(node_id: str) -> str:
    return f"{escape_node(node_id)}~inbound"


def inbound_route(node_id: str) -> str:
    return f"{escape_node(node_id)}~inbound"


def local_cluster(node_id: str) -> str:
    return f"{escape_node(node_id)}~local"


def tcp_listener(node_id: str, service: str) -> str:
    return f"{escape_node(node_id)}~tcp~{service}"


def api_listener(service: str) -> str:
    """The proxyless gRPC client asks LDS for exactly the name in ``xds:///<service>``."""
    return service


def api_route(service: str) -> str:
    return service


def is_per_node(name: str) -> bool:
    return NODE_SEP in name


def node_of(name: str) -> str | None:
    """The node id a per-node resource name belongs to; None for a shared name."""
    escaped, sep, _rest = name.partition(NODE_SEP)
    return unescape_node(escaped) if sep else None


def parse_cluster(name: str) -> tuple[str, str | None] | None:
    """``(service, subset)`` of a shared cluster name; None for a per-node cluster."""
    if NODE_SEP in name:
        return None
    if SUBSET_SEP in name:
        service, subset = name.split(SUBSET_SEP, 1)
        return service, subset
    return name, None
