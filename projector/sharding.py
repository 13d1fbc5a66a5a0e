"""Which view records a projector worker publishes: the keys of the shards it owns (pure).

Every worker folds every event and names, deterministically (the same
versions in every process for the same log position), the version of every
shared resource some node holds — from its render inputs, without building
it (``projector.versioning``) — since its nodes' memberships name them. The
rest is split by key: building and serializing shared bodies and per-node
resources, building memberships (``render_all(..., scope=ownership)``),
planning, publishing and recording view records:

- a node's membership record, and its per-node resources (names carrying its
  id: ``<node>~outbound``, ``~inbound``, ``~local``, ``~tcp~<svc>``), belong
  to shard ``shard_of(<node id>)``;
- a shared resource (a service's cluster, endpoints, API listener or route:
  held by many nodes) belongs to shard ``shard_of("<type_url>|<name>")``, its
  view-topic key, whichever nodes hold it: only that shard's owner builds,
  serializes and publishes its body (with its version in a header); the
  other workers name its version in their nodes' memberships;
- so every view key belongs to exactly one shard, and the consumer group
  gives every shard to exactly one live worker: one writer per key at a
  time (upserts and tombstones alike), writing the values of its render in
  log order. A worker that gains a shard takes it over from its own folded
  state, and republishes every record of it (``publisher.plan_takeover``),
  so a value the previous owner wrote from a different log position never
  stays behind.

``Ownership(None, n)`` owns everything: the single worker (no group).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from events.shard_group import shard_of
from projector import naming

ResourceKey = tuple[str, str]


def node_shard(node: str, partitions: int) -> int:
    return shard_of(node, partitions)


def resource_shard(key: ResourceKey, partitions: int) -> int:
    node = naming.node_of(key[1])
    if node is not None:
        return shard_of(node, partitions)
    return shard_of(f"{key[0]}|{key[1]}", partitions)  # the view topic's key (publisher.resource_key)


@dataclass(slots=True)
class Ownership:
    """The shards a worker owns (``None``: all of them) out of ``partitions``; memoizes shard lookups."""

    shards: frozenset[int] | None
    partitions: int = 1
    _nodes: dict[str, int] = field(default_factory=dict, repr=False)
    _resources: dict[ResourceKey, int] = field(default_factory=dict, repr=False)

    @property
    def everything(self) -> bool:
        return self.shards is None

    def owns_node(self, node: str) -> bool:
        if self.shards is None:
            return True
        shard = self._nodes.get(node)
        if shard is None:
            shard = self._nodes[node] = node_shard(node, self.partitions)
        return shard in self.shards

    def owns_resource(self, key: ResourceKey) -> bool:
        if self.shards is None:
            return True
        shard = self._resources.get(key)
        if shard is None:
            shard = self._resources[key] = resource_shard(key, self.partitions)
        return shard in self.shards

    def only(self, shards: frozenset[int]) -> "Ownership":
        """The same partitioning restricted to ``shards`` (shares the memo)."""
        return Ownership(shards, self.partitions, self._nodes, self._resources)
