"""Who may do what on the broker: the Kafka ACL table per role, as data.

A role is the first path segment of a workload's SPIFFE id; the secure broker
maps a client certificate's CN (``sidecar/reviews/i1``) to the principal
``User:sidecar`` (``meshlog.kafka_local.PRINCIPAL_MAPPING_RULES``), so one row
here covers every instance of the role.

Invariants:
- Allow-only, least privilege: everything not listed is denied by the
  broker's ``StandardAuthorizer`` (no ``allow.everyone.if.no.acl.found``).
  Only the broker's and the admin's own principals are super users.
- Nobody but the projector writes the view, snapshot, rejection and dead
  letter topics (they are what every Envoy is told, and what replay trusts).
- Replay only reads; gateways only read, except their proxies' ACKs to ``meshlog.sync`` and the
  subscriptions their proxies learn on demand (``dependency.subscribed``, origin ``learned``) to the
  registrations topic -- a request the fold judges like any subscription (``xds_gateway.on_demand``).
- ``acl_bindings`` is pure and ordered; applying it (``events.kafka_acl_apply``)
  is idempotent, so ``meshlog topics ensure`` can run it every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping

from events import topics

# Kafka resource types / pattern types / operations, spelled as in its Java enums
TOPIC, GROUP, TRANSACTIONAL_ID = "TOPIC", "GROUP", "TRANSACTIONAL_ID"
LITERAL, PREFIXED = "LITERAL", "PREFIXED"
READ, WRITE, DESCRIBE, DESCRIBE_CONFIGS = "READ", "WRITE", "DESCRIBE", "DESCRIBE_CONFIGS"

SIDECAR, CHECKER, OPERATOR, PROJECTOR, GATEWAY, REPLAY = "sidecar", "checker", "operator", "projector", "gateway", "replay"
CA_SERVER = "ca-server"
ROLES = (SIDECAR, CHECKER, OPERATOR, PROJECTOR, GATEWAY, REPLAY, CA_SERVER)

# EventProducer(transactional=True) ids (`registrar publish` of several envelopes)
REGISTRAR_TRANSACTIONAL_PREFIX = "meshlog-registrar-"
PROJECTOR_TRANSACTIONAL_PREFIX = "meshlog-projector"
HEALTHCHECK_GROUP_PREFIX = "meshlog-healthcheck"  # the checkers' group (`--group`, default meshlog-healthcheck)
PROJECTOR_GROUP_PREFIX = "meshlog-projector"  # projector workers' group (`projector run --group`)


@dataclass(frozen=True, slots=True)
class Grant:
    """Allow ``operations`` on one resource (``name`` literal, or every name starting with it if PREFIXED)."""

    resource_type: str
    name: str
    operations: tuple[str, ...]
    pattern: str = LITERAL


def _topics(names: Iterable[str], *operations: str) -> tuple[Grant, ...]:
    return tuple(Grant(TOPIC, n, operations) for n in names)


_EVENTS = (topics.REGISTRATIONS, topics.HEALTH, topics.RULES)
_PROJECTOR_OUTPUT = (topics.VIEW_RESOURCES, topics.VIEW_MEMBERSHIP, topics.SNAPSHOTS, topics.REJECTIONS,
                     topics.DEADLETTER, topics.ATTESTATIONS)
_ALL = tuple(t.name for t in topics.ALL_TOPICS)

ACL_TABLE: Mapping[str, tuple[Grant, ...]] = MappingProxyType({
    # the sidecar agent (and `registrar publish` under a sidecar identity): its own registration and health.
    # It reads the refusals, because its subscription API answers "unknown service" (404) or "declared" (409)
    # from the projector's SubscriptionRejected naming its event; without it, a refused subscription could
    # only time out (504). The price: every sidecar principal may read every refusal (ACLs cannot filter
    # records by key): which instance of which service asked for which dependency and was refused, and the
    # host, revision and reason of each refused rule or policy. No config, no address, no accepted rule, no
    # key material, and nothing it could write: names and reasons, a map of failed attempts.
    SIDECAR: (
        *_topics((topics.REGISTRATIONS, topics.HEALTH), WRITE, DESCRIBE),
        *_topics((topics.REJECTIONS,), READ),
        Grant(TRANSACTIONAL_ID, REGISTRAR_TRANSACTIONAL_PREFIX, (WRITE, DESCRIBE), PREFIXED),
    ),
    # central health checkers: read who is registered and healthy, append transitions, share the shards group
    # (DESCRIBE_CONFIGS: a checker checks the topics' settings on start). They read the identities log
    # because they verify what they fold, like the projector: a forged registration is never probed.
    CHECKER: (
        *_topics((topics.REGISTRATIONS, topics.HEALTH, topics.IDENTITIES), READ, DESCRIBE_CONFIGS),
        *_topics((topics.HEALTH,), WRITE),
        *_topics((topics.HEALTHCHECK_SHARDS,), READ, DESCRIBE_CONFIGS),
        Grant(GROUP, HEALTHCHECK_GROUP_PREFIX, (READ, DESCRIBE), PREFIXED),
    ),
    # people: routing rules, manual registrations (`registrar publish`), offline `meshlog ca issue|revoke`,
    # and reading what became of them: refusals, what each proxy is told (views) and what it ACKed (sync)
    OPERATOR: (
        *_topics((*_EVENTS, topics.IDENTITIES), READ, WRITE),
        *_topics((topics.REJECTIONS, topics.DEADLETTER, topics.SYNC, topics.VIEW_RESOURCES, topics.VIEW_MEMBERSHIP),
                 READ),
        Grant(TRANSACTIONAL_ID, REGISTRAR_TRANSACTIONAL_PREFIX, (WRITE, DESCRIBE), PREFIXED),
    ),
    # the one writer of everything proxies are told
    PROJECTOR: (
        # the identities log: every event it folds is verified against who held the signing key then
        *_topics((*_EVENTS, topics.IDENTITIES), READ),
        *_topics(_PROJECTOR_OUTPUT, READ, WRITE),
        *_topics(_ALL, DESCRIBE, DESCRIBE_CONFIGS),  # `projector run` checks every topic's settings on start
        # workers sharing the render (`projector run --group meshlog-projector...`) join a group on the shard topic
        *_topics((topics.PROJECTOR_SHARDS,), READ),
        Grant(GROUP, PROJECTOR_GROUP_PREFIX, (READ, DESCRIBE), PREFIXED),
        Grant(TRANSACTIONAL_ID, PROJECTOR_TRANSACTIONAL_PREFIX, (WRITE, DESCRIBE), PREFIXED),
    ),
    # the views, and the identities log (a revoked identity's streams are closed); a gateway writes
    # meshlog.sync, what its proxies ACKed or NACKed (an observation, never config: nobody folds it), and the
    # registrations topic: the subscriptions its authenticated proxies learn on demand (the fold judges them)
    GATEWAY: (*_topics((topics.VIEW_RESOURCES, topics.VIEW_MEMBERSHIP, topics.IDENTITIES), READ),
              *_topics((topics.SYNC, topics.REGISTRATIONS), WRITE, DESCRIBE)),
    # replay, `meshlog status` and the console: the log and what became of it (the views every proxy should
    # hold, what they ACKed); read only
    REPLAY: _topics((*_EVENTS, topics.SNAPSHOTS, topics.ATTESTATIONS, topics.REJECTIONS, topics.DEADLETTER, topics.IDENTITIES,
                     topics.SYNC, topics.VIEW_RESOURCES, topics.VIEW_MEMBERSHIP), READ),
    # `meshlog ca serve`: reads the identities log (token redemptions in log order) and appends to it
    CA_SERVER: _topics((topics.IDENTITIES,), READ, WRITE),
})


def principal(role: str) -> str:
    return f"User:{role}"


@dataclass(frozen=True, slots=True)
class AclBinding:
    """One ALLOW entry, as Kafka's Admin API takes it."""

    principal: str
    resource_type: str
    pattern: str
    name: str
    operation: str

    def line(self) -> str:
        """The tab-separated line ``KafkaAcls.java`` reads."""
        return "\t".join((self.principal, self.resource_type, self.pattern, self.name, self.operation))


def acl_bindings(table: Mapping[str, tuple[Grant, ...]] = ACL_TABLE) -> list[AclBinding]:
    """Every (principal, resource, operation) the table allows, without duplicates, in table order."""
    out: dict[AclBinding, None] = {}
    for role, grants in table.items():
        for grant in grants:
            for operation in grant.operations:
                out[AclBinding(principal(role), grant.resource_type, grant.pattern, grant.name, operation)] = None
    return list(out)
