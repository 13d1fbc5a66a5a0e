"""Topic names and settings, in one place.

Invariants:
- Event topics are history: ``cleanup.policy=delete`` with infinite retention
  and ``LogAppendTime`` timestamps, so timestamps never go backwards within a
  partition and "the log as of T" is a clean offset cut per partition.
- View topics are state: compacted, keyed by resource identity; a tombstone
  removes a resource.
- The shard topics carry no records, ever: only their consumer group's
  partition assignment matters (partition i = shard i: of the instances for
  the health checkers, ``registrar.healthcheck.shards``; of the view keys for
  projector workers, ``projector.sharding``; ``events.shard_group``).
- Every topic that holds records has a size cap (``max.message.bytes``, set
  when ``events.admin`` creates it): an event is a small document, so an
  event topic takes at most ``EVENT_MAX_MESSAGE_BYTES`` per record batch and
  writers refuse an event over ``EVENT_RECORD_MAX_BYTES`` before sending.
- Every topic is replicated ``min(3, brokers)`` times with ``min.insync.replicas``
  2 on three or more brokers (1 below) and no unclean leader election
  (``replication_for``), so a broker loss loses no acknowledged event.
- Nothing here talks to a broker; ``events.admin`` applies these specs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping

PREFIX = "meshlog."

REGISTRATIONS = PREFIX + "registrations"
HEALTH = PREFIX + "health"
RULES = PREFIX + "rules"
REJECTIONS = PREFIX + "rejections"
DEADLETTER = PREFIX + "deadletter"
SNAPSHOTS = PREFIX + "snapshots"
# the projector's signed runs of records whose signatures it verified (projector.attestations): replay takes them
# instead of checking each signature again; written only by the projector, like snapshots
ATTESTATIONS = PREFIX + "attestations"
VIEW_RESOURCES = PREFIX + "views.resources"
VIEW_MEMBERSHIP = PREFIX + "views.membership"
HEALTHCHECK_SHARDS = PREFIX + "healthcheck.shards"
PROJECTOR_SHARDS = PREFIX + "projector.shards"
IDENTITIES = PREFIX + "identities"
SYNC = PREFIX + "sync"  # what the proxies accepted: written by the gateways, read by `meshlog status` and replay

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


# An event is a small document (a registration ~400 bytes, a large rules document a few KB); every
# reader holds and decodes each one, so the log refuses what no writer should send.
EVENT_MAX_MESSAGE_BYTES = 1 << 20
# what a writer may send as one event's key + value: the batch and record framing needs the rest
EVENT_RECORD_MAX_BYTES = EVENT_MAX_MESSAGE_BYTES - 4096
# dead letters and rejections are bounded by construction (projector.deadletter: under 64 KiB each); the
# cap is above the projector's producer batch size (1 MiB), so a full batch of them is never refused
SUPPORT_MAX_MESSAGE_BYTES = 2 << 20
# snapshots and view records grow with the mesh (a whole state; a node's membership or a large route
# table): up to what the projector's producer sends (max_request_size 16 MiB)
LARGE_MAX_MESSAGE_BYTES = 16 << 20


def _capped(config: Mapping[str, str], max_bytes: int) -> Mapping[str, str]:
    return MappingProxyType({**config, "max.message.bytes": str(max_bytes)})


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)
    key: str = ""  # what the record key is, for humans and --help
    replication_factor: int = 1

    def replicated(self, brokers: int) -> "TopicSpec":
        """This topic as created on a cluster of ``brokers`` brokers (see :func:`replication_for`)."""
        replicas, min_isr = replication_for(brokers)
        return replace(self, replication_factor=replicas,
                       config=MappingProxyType({**self.config, "min.insync.replicas": str(min_isr), **_NO_UNCLEAN}))


# Replication: an acknowledged append (acks=all) is on min.insync.replicas brokers, and only an in-sync
# replica may become leader, so losing one broker of three loses no acknowledged event and still takes
# writes. Fewer brokers than three: every broker holds a copy and one in-sync copy is enough to write.
MAX_REPLICATION_FACTOR = 3
_NO_UNCLEAN = MappingProxyType({"unclean.leader.election.enable": "false"})


def replication_for(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a cluster of ``brokers``: (1, 1), (2, 1), (3, 2) and (3, 2) above."""
    if brokers < 1:
        raise ValueError(f"a cluster has at least one broker, not {brokers}")
    replicas = min(MAX_REPLICATION_FACTOR, brokers)
    return replicas, max(1, replicas - 1)


# Registrations and health are keyed per instance, so each instance's history is in one partition, in
# order; the fold merges partitions by broker time (``merge_order``) and serves the same under any
# interleaving of them (tests/unit/projector/test_properties.py), except one decision that reads
# another instance's key: whether a run-time subscription names a service some instance has ever
# registered ("unknown_service", ``projector.fold``). That one follows the merge order, which replay
# and the projector (through ``events.merge_gate``, backlogs included) fold in. More partitions
# spread the brokers' write load; the projector and replay read every partition the broker reports.
# Rules keep one partition: the fold relies on their total order (a policy may not drop a subset a
# route rule uses).
EVENT_PARTITIONS = 6
_EVENTS = _capped(_HISTORY, EVENT_MAX_MESSAGE_BYTES)
EVENT_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(REGISTRATIONS, EVENT_PARTITIONS, _EVENTS, key="<service>/<instance_id>"),
    TopicSpec(HEALTH, EVENT_PARTITIONS, _EVENTS, key="<service>/<instance_id>"),
    TopicSpec(RULES, 1, _EVENTS, key="route/<host> | policy/<service>"),
)

HEALTHCHECK_SHARD_COUNT = 12
PROJECTOR_SHARD_COUNT = 12

SUPPORT_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(REJECTIONS, 1, _capped(_HISTORY, SUPPORT_MAX_MESSAGE_BYTES), key="<kind>/<name> | subscription/<service>/<instance_id>"),
    TopicSpec(DEADLETTER, 1, _capped(_HISTORY, SUPPORT_MAX_MESSAGE_BYTES), key="<source topic>/<partition>/<offset>"),
    TopicSpec(SNAPSHOTS, 1, _capped(_HISTORY, LARGE_MAX_MESSAGE_BYTES), key="snapshot"),
    # as long as the events they vouch for (a missing one only costs replay the full check)
    TopicSpec(ATTESTATIONS, 1, _capped(_HISTORY, LARGE_MAX_MESSAGE_BYTES), key="attestation"),
    TopicSpec(SYNC, 1, _capped(_HISTORY, SUPPORT_MAX_MESSAGE_BYTES), key="<node_id>"),
    TopicSpec(VIEW_RESOURCES, 1, _capped(_COMPACTED, LARGE_MAX_MESSAGE_BYTES), key="<type_url>|<name>"),
    TopicSpec(VIEW_MEMBERSHIP, 1, _capped(_COMPACTED, LARGE_MAX_MESSAGE_BYTES), key="<node_id>"),
    # never written: `registrar healthcheck` processes join one consumer group on it and each
    # probes the instances hashing to the partitions (shards) the group assigned to it
    TopicSpec(HEALTHCHECK_SHARDS, HEALTHCHECK_SHARD_COUNT, {"cleanup.policy": "delete"}, key="(no records)"),
    # never written either: `projector run --group G` workers join group G on it; each publishes the view
    # records whose keys hash to the partitions (shards) the group assigned to it (projector.sharding)
    TopicSpec(PROJECTOR_SHARDS, PROJECTOR_SHARD_COUNT, {"cleanup.policy": "delete"}, key="(no records)"),
    # every certificate the mesh CA issued or revoked, and every join token redeemed; one partition
    # because "the first redemption of a token in log order wins" needs one total order (identity.tokens)
    TopicSpec(IDENTITIES, 1, _EVENTS, key="<spiffe path> | token/<jti>"),
)

ALL_TOPICS: tuple[TopicSpec, ...] = EVENT_TOPICS + SUPPORT_TOPICS

BY_NAME: Mapping[str, TopicSpec] = MappingProxyType({t.name: t for t in ALL_TOPICS})

#: an event topic's rank in the merge order (``merge_order``)
EVENT_TOPIC_RANK: Mapping[str, int] = MappingProxyType({t.name: i for i, t in enumerate(EVENT_TOPICS)})


def merge_order(timestamp_ms: int, topic: str, partition: int, offset: int) -> tuple[int, int, int, int]:
    """Where a record of an event topic sits in the one order every reader folds in: broker time, then topic,
    partition and offset (ties in one millisecond broken the same way by the projector and by replay)."""
    return (timestamp_ms, EVENT_TOPIC_RANK.get(topic, 99), partition, offset)
