"""The render: ``MeshState -> Envoy v3 resources``, per node and for the whole mesh.

Pure and deterministic: the same state gives the same messages, bytes and
versions in every process (``projector.versioning``: a shared resource's
version is the hash of its render inputs, a per-node one's of its bytes). ``render(state, node)`` renders one node;
``render_all(state, previous=None, scope=None)`` (``projector.render_mesh``)
renders every node (or, with a ``scope``, the nodes a projector worker owns),
each shared resource once, incrementally from ``previous`` when given (same
result as from scratch, plus what changed).

What a node receives (its *view*):

- A node is defined by an ``InstanceRegistered`` carrying a ``node_id``; when
  several registered instances claim one node id, the latest registration
  (broker timestamp, then instance key) is the node.
- A sidecar node (the instance has ``sidecar`` ports):
  Listener ``<node>~outbound`` (127.0.0.1:outbound_port, HTTP, RDS) and
  RouteConfiguration ``<node>~outbound`` with one virtual host per HTTP/gRPC
  dependency (domains ``<service>`` and ``<service>:<outbound_port>``: the
  served route rule's routes, then a default route ``/`` to ``<service>``);
  Listener ``<node>~inbound`` (instance IP, or 0.0.0.0 for a hostname, on
  inbound_port) in front of the app through Cluster ``<node>~local`` (STATIC
  127.0.0.1:app_port); Listener ``<node>~tcp~<service>`` per TCP dependency.
- A node without a sidecar is a proxyless gRPC client: for each gRPC
  dependency the API Listener ``<service>`` and RouteConfiguration
  ``<service>`` (see ``proxyless_closure``). Envoy sidecars are not sent API
  listeners: Envoy ignores an ``api_listener`` received over LDS (it logs
  "only one ApiListener is allowed ... via bootstrap") — they would be noise.
- Clusters and ClusterLoadAssignments of its *closure*: each dependency's
  cluster, plus the clusters its served route rule sends traffic to (a
  ``<service>|<subset>`` or another service's cluster). One level only: a
  proxy resolves a route once, so a rule of a service the node reaches only
  through another host's rule can never apply to its traffic, and neither
  can the dependencies' own ``depends_on``.

Dependency protocols come from the latest registration of the dependency
(``ServiceMeta``); a service never registered counts as HTTP (its cluster is
served with no endpoints until instances appear).

TCP dependencies: an app reaches a TCP service ``s`` at
``127.0.0.1:<s's registered app port>`` (the port of ``s``'s latest
registration — a "service port" scheme, like a Kubernetes Service port).
A port that collides with the node's own app/inbound/outbound port, or with
another TCP dependency's port (the later one by service name loses), is not
listened on and is reported in ``RenderedMesh.problems``. Route rules apply
to HTTP and gRPC hosts only.

Cross-topic check: a route rule is *served* only if every destination
service it names (its host included) is known (ever had an instance
registered). Otherwise the host gets only its default route and the rule is
reported in ``problems``. Endpoints whose address is a hostname (EDS needs
IPs) are left out and reported likewise. Invalid config is never emitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from projector import naming
from projector.render_mesh import RenderedMesh, render_all
from projector.render_view import Renderer
from projector.state import MeshState
from projector.typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE, TYPE_URLS

if TYPE_CHECKING:  # the Envoy API is imported with the builders, on the first build (``render_view``)
    from google.protobuf.message import Message

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "TYPE_URLS",
    "NodeView",
    "RenderedMesh",
    "node_ids",
    "node_versions",
    "node_view",
    "proxyless_closure",
    "render",
    "render_all",
    "render_names",
]


@dataclass(frozen=True, slots=True)
class NodeView:
    """The names of the resources a node receives, by type url (each tuple sorted)."""

    node_id: str
    names: dict[str, tuple[str, ...]]


def node_ids(state: MeshState) -> list[str]:
    """Every node id claimed by a currently registered instance, sorted."""
    return sorted(state.nodes.keys())


def node_view(state: MeshState, node_id: str) -> NodeView:
    """Only the names (cheap): what ``render(state, node_id)`` would return."""
    return NodeView(node_id, Renderer(state).view(node_id))


def render(state: MeshState, node_id: str) -> dict[str, dict[str, Message]]:
    """Every resource one node receives: type_url -> name -> message (all four type urls present)."""
    r = Renderer(state)
    out: dict[str, dict[str, Message]] = {}
    for type_url, names in r.view(node_id).items():
        out[type_url] = {n: r.resource(type_url, n, node_id) for n in names}
    return out


def node_versions(state: MeshState, node_id: str) -> dict[str, dict[str, str]]:
    """The versions of what ``render(state, node_id)`` returns (type_url -> name -> version): the node's
    membership as ``render_all`` names it (``projector.versioning``: shared ones from their inputs)."""
    r = Renderer(state)
    return {type_url: {name: r.version(type_url, name, node_id) for name in names}
            for type_url, names in r.view(node_id).items()}


def render_names(
    state: MeshState, type_url: str, names: Iterable[str], node_id: str | None = None
) -> dict[str, Message]:
    """The named resources that exist (per-node names need ``node_id``); unknown names are absent."""
    r = Renderer(state)
    out = {}
    for name in names:
        msg = r.resource(type_url, name, node_id)
        if msg is not None:
            out[name] = msg
    return out


def proxyless_closure(state: MeshState, service: str) -> dict[str, dict[str, Message]]:
    """What a proxyless gRPC client dialing ``xds:///<service>`` needs, for a node we know nothing of.

    The API Listener ``<service>``, its RouteConfiguration ``<service>``, and
    the clusters and endpoints its routes can send to. A service that never
    had an instance registered gets nothing (every type url maps to ``{}``),
    so the gateway can report the name as not existing.
    """
    if service not in state.services:
        return {u: {} for u in TYPE_URLS}
    r = Renderer(state)
    clusters = r.host_clusters(service)
    return {
        CLUSTER: {n: r.cluster(n, None) for n in clusters},
        ENDPOINT: {n: r.endpoints(n) for n in clusters},
        LISTENER: {naming.api_listener(service): r.listener(naming.api_listener(service), None)},
        ROUTE: {naming.api_route(service): r.route(naming.api_route(service), None)},
    }
