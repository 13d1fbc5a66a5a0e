"""Versioned xDS resources and the per-node view the protocol machines consume.

A :class:`VersionedResource` is one rendered resource (a deterministic
serialization of e.g. an ``envoy.config.cluster.v3.Cluster``) plus its version.
The same object is shared by every stream that serves it, so its wire forms
(the ``Any`` for state-of-the-world, the encoded ``resources`` entry of a
delta response) are built lazily and reused: the ``Any`` once per object, the
delta entry from the object's second use on (a per-node resource, sent to one
stream, keeps no second copy of its body).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping, TypeAlias

from google.protobuf import any_pb2

from .wire import encode_delta_entry

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "CORE_TYPES",
    "WILDCARD",
    "NodeView",
    "VersionedResource",
    "make_resource",
    "version_of",
    "type_rank",
]

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

#: The types a gateway serves by default, in make-before-break order
#: (xDS protocol, "Eventual consistency considerations": CDS first, then EDS
#: for those clusters, then LDS, then RDS).
CORE_TYPES: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE)

#: The reserved wildcard resource name.
WILDCARD = "*"


def version_of(body: bytes) -> str:
    """The version of a resource body: hex sha256 of the bytes, first 16 chars.

    This is the same formula as ``projector.versioning.version_of`` (kept as a
    local copy so the protocol core has no dependency on the projector): the
    same state yields the same version on every replica and every replay, so a
    client reconnecting to any gateway with ``initial_resource_versions`` gets
    only what really changed.
    """
    return hashlib.sha256(body).hexdigest()[:16]


_UNSET = object()  # a lazily computed slot not computed yet
_ONCE = object()  # the delta entry was encoded once and not kept


@dataclass(frozen=True, slots=True)
class VersionedResource:
    """One named resource of one type, with its version and serialized body.

    Slotted (no instance ``__dict__``: the view holds one per resource version). Its wire
    forms are computed on demand and kept in private slots; equality and hash use the four
    fields only.
    """

    name: str
    version: str
    type_url: str
    body: bytes
    _any: object = field(default=None, init=False, repr=False, compare=False)
    _entry: object = field(default=None, init=False, repr=False, compare=False)
    _eds_name: object = field(default=_UNSET, init=False, repr=False, compare=False)

    @property
    def any(self) -> any_pb2.Any:
        """``Any(type_url, value=body)``, built once and shared by all streams."""
        got = self._any
        if got is None:
            got = any_pb2.Any(type_url=self.type_url, value=self.body)
            object.__setattr__(self, "_any", got)
        return got

    @property
    def delta_entry(self) -> bytes:
        """This resource as one encoded ``resources`` entry of a ``DeltaDiscoveryResponse``.

        (A ``Resource{name, version, resource: Any}``, with the response's field key and length in front.)
        Kept from its second use on, shared by every stream then: a per-node resource is usually sent
        once (to its node's stream), and keeping its entry would hold a second copy of every per-node
        body in memory (about 3 kB per stream, measured); a shared one is encoded twice, then reused.
        """
        got = self._entry
        if got is None or got is _ONCE:
            entry = encode_delta_entry(self.name, self.version, self.type_url, self.body)
            object.__setattr__(self, "_entry", _ONCE if got is None else entry)
            return entry
        return got

    @property
    def eds_name(self) -> str | None:
        """For a Cluster: the ClusterLoadAssignment name it fetches over EDS.

        ``eds_cluster_config.service_name`` if set, else the cluster's name, when
        the cluster's discovery type is EDS; ``None`` for other clusters (STATIC,
        STRICT_DNS, ...) and for other resource types. A body that does not parse
        as a Cluster is assumed to be an EDS cluster named after the resource.
        Computed once.
        """
        got = self._eds_name
        if got is _UNSET:
            got = self._parse_eds_name()
            object.__setattr__(self, "_eds_name", got)
        return got

    def _parse_eds_name(self) -> str | None:
        if self.type_url != CLUSTER:
            return None
        from envoy.config.cluster.v3 import cluster_pb2  # local: only CDS needs it

        try:
            cluster = cluster_pb2.Cluster.FromString(self.body)
        except Exception:  # noqa: BLE001 - opaque test bodies, or a newer schema
            return self.name
        if cluster.WhichOneof("cluster_discovery_type") != "type":
            return None
        if cluster.type != cluster_pb2.Cluster.EDS:
            return None
        return cluster.eds_cluster_config.service_name or cluster.name or self.name

    @property
    def size(self) -> int:
        """Approximate wire size, for the shell's queue accounting."""
        return len(self.body) + len(self.name) + len(self.version) + len(self.type_url)


def make_resource(type_url: str, name: str, body: bytes, version: str | None = None) -> VersionedResource:
    """A :class:`VersionedResource` of ``body`` at ``version`` (the one its publisher named), by default
    :func:`version_of` ``body``."""
    return VersionedResource(name=name, version=version or version_of(body), type_url=type_url, body=body)


#: This node's view: type URL -> resource name -> resource. Treat as immutable;
#: pass a new mapping (at least a new per-type mapping) when something changes.
NodeView: TypeAlias = Mapping[str, Mapping[str, VersionedResource]]


def type_rank(type_url: str) -> tuple[int, str]:
    """Sort key putting types in make-before-break order; unknown types last."""
    try:
        return (CORE_TYPES.index(type_url), "")
    except ValueError:
        return (len(CORE_TYPES), type_url)
