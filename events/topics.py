"""Topic names and settings, in one place.

Invariants:
- Event topics are history: ``cleanup.policy=delete`` with infinite retention
  and ``LogAppendTime`` timestamps, so timestamps never go backwards within a
  partition and "the log as of T" is a clean offset cut per partition.
- View topics are state: compacted, keyed by resource identity; a tombstone
  removes a resource.
- The health-check shard topic carries no records, ever: only its consumer
  group's partition assignment matters (partition i = shard i of the
  instances, see ``registrar.healthcheck.shards``).
- Nothing here talks to a broker; ``events.admin`` applies these specs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

PREFIX = "meshlog."

REGISTRATIONS = PREFIX + "registrations"
HEALTH = PREFIX + "health"
RULES = PREFIX + "rules"
REJECTIONS = PREFIX + "rejections"
DEADLETTER = PREFIX + "deadletter"
SNAPSHOTS = PREFIX + "snapshots"
VIEW_RESOURCES = PREFIX + "views.resources"
VIEW_MEMBERSHIP = PREFIX + "views.membership"
HEALTHCHECK_SHARDS = PREFIX + "healthcheck.shards"

_HISTORY = MappingProxyType(
    {
        "cleanup.policy": "delete",
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "message.timestamp.type": "LogAppendTime",
    }
)
_COMPACTED = MappingProxyType(
    {
        "cleanup.policy": "compact",
        "message.timestamp.type": "LogAppendTime",
        # tombstones stay long enough for a lagging gateway to see a removal
        "delete.retention.ms": "86400000",
        "min.compaction.lag.ms": "0",
    }
)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)
    key: str = ""  # what the record key is, for humans and --help
    replication_factor: int = 1


# The event topics are single-partition today: the projector folds the whole
# mesh in one worker and replay cuts one offset per topic. The fold is written
# so that raising partitions (per-entity keys are already set) keeps it correct.
EVENT_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(REGISTRATIONS, 1, _HISTORY, key="<service>/<instance_id>"),
    TopicSpec(HEALTH, 1, _HISTORY, key="<service>/<instance_id>"),
    TopicSpec(RULES, 1, _HISTORY, key="route/<host> | policy/<service>"),
)

HEALTHCHECK_SHARD_COUNT = 12

SUPPORT_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(REJECTIONS, 1, _HISTORY, key="<kind>/<name> | subscription/<service>/<instance_id>"),
    TopicSpec(DEADLETTER, 1, _HISTORY, key="<source topic>/<partition>/<offset>"),
    TopicSpec(SNAPSHOTS, 1, _HISTORY, key="snapshot"),
    TopicSpec(VIEW_RESOURCES, 1, _COMPACTED, key="<type_url>|<name>"),
    TopicSpec(VIEW_MEMBERSHIP, 1, _COMPACTED, key="<node_id>"),
    # never written: `registrar healthcheck` processes join one consumer group on it and each
    # probes the instances hashing to the partitions (shards) the group assigned to it
    TopicSpec(HEALTHCHECK_SHARDS, HEALTHCHECK_SHARD_COUNT, {"cleanup.policy": "delete"}, key="(no records)"),
)

ALL_TOPICS: tuple[TopicSpec, ...] = EVENT_TOPICS + SUPPORT_TOPICS
BY_NAME: Mapping[str, TopicSpec] = MappingProxyType({t.name: t for t in ALL_TOPICS})
