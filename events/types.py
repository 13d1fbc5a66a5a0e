"""The event vocabulary of meshlog: frozen, past-tense payload types.

Invariants:
- Every payload type is immutable (frozen) and rejects unknown fields, so a
  typo in a rules file is an error rather than a silently ignored key.
- Each type has a ``TYPE`` (the wire name) and a ``SCHEMA_VERSION``; bump the
  version when the shape changes and add an upcaster in ``events.upcast``.
- Each type knows its topic and its partition key (``key()``): events about
  the same entity share a key and therefore a partition and an order.
- Validation here is structural (ranges, formats, internal consistency of one
  document). Cross-entity checks (does the destination service exist? does the
  subset exist?) need the mesh state and belong to the projector's fold.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, ClassVar, Literal

from pydantic import (
    AwareDatetime,
    Strict,
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from events import topics

# \Z, not $: $ also matches before a trailing newline, which would let "web-1\n" through
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?\Z")
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._:-]{0,126}[A-Za-z0-9])?\Z")
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?\Z")
_HEADER_RE = re.compile(r"^:?[a-z0-9!#$%&'*+.^_`|~-]+\Z")
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # no leading zeros, as ipaddress
_IPV4_RE = re.compile(rf"^{_OCTET}(\.{_OCTET}){{3}}\Z")
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z")


def _service_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            "must be a lowercase DNS-style name: letters, digits, '-' and '.', 1-63 characters, "
            "starting and ending with a letter or digit"
        )
    return value


def is_service_name(value: str) -> bool:
    """Does ``value`` follow the service-name rule (without raising)?"""
    return _NAME_RE.match(value) is not None


def _instance_id(value: str) -> str:
    if not _INSTANCE_RE.match(value):
        raise ValueError("must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")
    return value


#: The longest node id a registration may carry (the instance-id rule); gateways refuse longer ones.
NODE_ID_MAX_LENGTH = 128


def _node_id(value: str) -> str:
    # same characters as an instance id: a node id is printed by replay and the gateway's logs
    # and is part of resource names, so no control characters, spaces or markup
    if not _INSTANCE_RE.match(value):
        raise ValueError("must be 1-128 characters of letters, digits, '.', '_', ':' or '-', "
                         "starting and ending with a letter or digit")
    return value


def check_address(value: str) -> str:
    """``value`` if it is an IPv4/IPv6 literal or a host name; else ValueError saying why."""
    # The hostname pattern also accepts every IPv4 literal, so it goes first: one regex
    # match instead of ipaddress' parser on the hot decode path. Only what it rejects
    # (IPv6 literals, or garbage) goes on to ipaddress. Same accepted set as either order.
    if _HOSTNAME_RE.match(value):
        # A name whose last label is all digits is read as an IPv4 literal by resolvers and
        # Envoy alike ("1.2.3" is 1.2.0.3 to inet_aton), never as a host name: it must be a
        # valid dotted-quad or nothing.
        if value[-1].isdigit() and value.rpartition(".")[2].isdigit() and not _IPV4_RE.match(value):
            raise ValueError("looks like an IPv4 address but is not one (four numbers 0-255)")
        return value
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        raise ValueError("must be an IPv4/IPv6 address or a hostname") from None


def _label_key(value: str) -> str:
    if not _LABEL_KEY_RE.match(value):
        raise ValueError("label keys must be 1-63 characters of letters, digits, '.', '_', '/' or '-'")
    return value


ServiceName = Annotated[str, AfterValidator(_service_name)]
InstanceId = Annotated[str, AfterValidator(_instance_id)]
NodeId = Annotated[str, AfterValidator(_node_id)]
Address = Annotated[str, AfterValidator(check_address)]
# ints are strict: a port given as "8080" (a string) is an error, not silently coerced
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]
LabelKey = Annotated[str, AfterValidator(_label_key)]
LabelValue = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9._-]+$")]
Labels = dict[LabelKey, LabelValue]
NonEmptyText = Annotated[str, Field(min_length=1, max_length=256)]
Millis = Annotated[int, Strict(), Field(ge=1, le=3_600_000)]
# bounded to what a Kafka record's JSON (orjson: 64-bit integers) can carry
Revision = Annotated[int, Strict(), Field(ge=1, le=2**63 - 1)]


class _Frozen(BaseModel):
    # defer_build: a type's validator is built when it first validates, not at import. Building all of
    # them was the largest single cost of importing this module (~40 ms of every CLI start, `replay at`
    # and `registrar publish` included), and a process validates a few types at most. The build is
    # thread-safe from pydantic 2.14 (a lock in model_rebuild; pyproject requires it), so a first
    # validation in two threads at once cannot see the parent's field-less validator.
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class Payload(_Frozen):
    TYPE: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int] = 1
    TOPIC: ClassVar[str]

    def key(self) -> str:  # pragma: no cover - every concrete type overrides
        raise NotImplementedError


# ---------------------------------------------------------------- registrations


def _trust_domain(value: str) -> str:
    from identity.spiffe import SpiffeIdError, validate_domain  # pure, imports nothing of events

    try:
        return validate_domain(value)
    except SpiffeIdError as exc:
        raise ValueError(str(exc)) from None


TrustDomain = Annotated[str, Field(max_length=255), AfterValidator(_trust_domain)]


class SidecarPorts(_Frozen):
    """Where the sidecar fronting an instance listens on the instance's host.

    ``trust_domain``: the sidecar holds a mesh identity of this trust domain
    (``spiffe://<domain>/sidecar/<service>/<instance>``, read by the agent from
    its own certificate), so its inbound listener requires mesh client
    certificates and its calls present one; ``None`` (``--insecure``, and every
    registration logged before sidecar mTLS): plaintext.
    """

    inbound_port: Port
    outbound_port: Port
    trust_domain: TrustDomain | None = None

    @model_validator(mode="after")
    def _distinct(self) -> "SidecarPorts":
        if self.inbound_port == self.outbound_port:
            raise ValueError("inbound_port and outbound_port must differ")
        return self


class InstanceRegistered(Payload):
    """An instance of a service became available at address:port."""

    TYPE: ClassVar[str] = "instance.registered"
    # v1 carried the version as a top-level field and had no weight (see events.upcast)
    SCHEMA_VERSION: ClassVar[int] = 2
    TOPIC: ClassVar[str] = topics.REGISTRATIONS

    service: ServiceName
    instance_id: InstanceId
    address: Address
    port: Port
    protocol: Literal["http", "tcp", "grpc"] = "http"
    labels: Labels = Field(default_factory=dict)
    weight: Annotated[int, Strict(), Field(ge=1, le=128)] = 1
    node_id: NodeId | None = None
    sidecar: SidecarPorts | None = None
    depends_on: tuple[ServiceName, ...] = ()

    @field_validator("depends_on")
    @classmethod
    def _no_duplicate_dependencies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("lists a service more than once")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "InstanceRegistered":
        if self.service in self.depends_on:
            raise ValueError("depends_on: a service cannot depend on itself")
        if self.sidecar is not None and self.sidecar.inbound_port == self.port and self.address in (
            "127.0.0.1",
            "::1",
        ):
            raise ValueError("sidecar.inbound_port: must differ from the app port on the same address")
        return self

    def key(self) -> str:
        return f"{self.service}/{self.instance_id}"


class InstanceDeregistered(Payload):
    """An instance left the mesh (drained, stopped, or its lease expired)."""

    TYPE: ClassVar[str] = "instance.deregistered"
    TOPIC: ClassVar[str] = topics.REGISTRATIONS

    service: ServiceName
    instance_id: InstanceId
    reason: NonEmptyText = "deregistered"

    def key(self) -> str:
        return f"{self.service}/{self.instance_id}"


# ---------------------------------------------------------------- run-time subscriptions


class DependencySubscribed(Payload):
    """A registered instance began calling ``dependency`` (asked at run time, not declared).

    ``origin`` says who asked: ``explicit`` (the app, through its sidecar's
    local API or CLI) or ``learned`` (its proxy asked for the cluster on
    demand). Same topic and key as the instance's registration, so the fold
    sees it after the registration it refers to.
    """

    TYPE: ClassVar[str] = "dependency.subscribed"
    TOPIC: ClassVar[str] = topics.REGISTRATIONS

    service: ServiceName
    instance_id: InstanceId
    dependency: ServiceName
    origin: Literal["explicit", "learned"] = "explicit"

    @model_validator(mode="after")
    def _not_itself(self) -> "DependencySubscribed":
        if self.dependency == self.service:
            raise ValueError("dependency: a service cannot depend on itself")
        return self

    def key(self) -> str:
        return f"{self.service}/{self.instance_id}"


class DependencyUnsubscribed(Payload):
    """A registered instance stopped calling a service it had subscribed to at run time."""

    TYPE: ClassVar[str] = "dependency.unsubscribed"
    TOPIC: ClassVar[str] = topics.REGISTRATIONS

    service: ServiceName
    instance_id: InstanceId
    dependency: ServiceName

    def key(self) -> str:
        return f"{self.service}/{self.instance_id}"


# ---------------------------------------------------------------- health


class InstanceHealthChanged(Payload):
    """An observer saw an instance's health move to a new status."""

    TYPE: ClassVar[str] = "instance.health_changed"
    TOPIC: ClassVar[str] = topics.HEALTH

    service: ServiceName
    instance_id: InstanceId
    status: Literal["healthy", "unhealthy", "draining"]
    reason: NonEmptyText = "unspecified"
    observer: NonEmptyText

    def key(self) -> str:
        return f"{self.service}/{self.instance_id}"


# ---------------------------------------------------------------- routing rules


class HeaderMatch(_Frozen):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    exact: Annotated[str, Field(max_length=1024)] | None = None
    prefix: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    present: Annotated[bool, Strict()] | None = None

    @field_validator("name")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not _HEADER_RE.match(value):
            raise ValueError("must be a lowercase HTTP header name")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> "HeaderMatch":
        given = [k for k in ("exact", "prefix", "present") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of exact, prefix, present")
        if self.present is False:
            raise ValueError("present: must be true when given (use no header match instead)")
        return self


class RouteMatch(_Frozen):
    path_prefix: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    path_exact: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    headers: tuple[HeaderMatch, ...] = ()

    @model_validator(mode="after")
    def _path(self) -> "RouteMatch":
        if self.path_prefix is not None and self.path_exact is not None:
            raise ValueError("give at most one of path_prefix, path_exact")
        for key in ("path_prefix", "path_exact"):
            value = getattr(self, key)
            if value is not None and not value.startswith("/"):
                raise ValueError(f"{key}: must start with '/'")
        return self


class WeightedDestination(_Frozen):
    """Send a share of matching requests to a service (default: the rule's host), optionally one subset."""

    service: ServiceName | None = None
    subset: ServiceName | None = None
    weight: Annotated[int, Strict(), Field(ge=0, le=100)] = 100


class RetryPolicy(_Frozen):
    attempts: Annotated[int, Strict(), Field(ge=0, le=10)]
    per_try_timeout_ms: Millis | None = None
    retry_on: tuple[
        Literal["5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream"], ...
    ] = ("5xx", "connect-failure", "reset")


class HttpRoute(_Frozen):
    match: RouteMatch = Field(default_factory=RouteMatch)
    destinations: tuple[WeightedDestination, ...]
    timeout_ms: Millis | None = None
    retries: RetryPolicy | None = None

    @model_validator(mode="after")
    def _weights(self) -> "HttpRoute":
        if not self.destinations:
            raise ValueError("destinations: at least one destination is required")
        total = sum(d.weight for d in self.destinations)
        if total != 100:
            raise ValueError(f"destinations: weights must sum to 100, got {total}")
        seen = set()
        for d in self.destinations:
            ident = (d.service, d.subset)
            if ident in seen:
                raise ValueError(f"destinations: {d.service or '(host)'}/{d.subset or '(all)'} appears twice")
            seen.add(ident)
        return self


class RouteRuleUpserted(Payload):
    """The whole routing document for calls to ``host`` was replaced (revision-checked)."""

    TYPE: ClassVar[str] = "route_rule.upserted"
    TOPIC: ClassVar[str] = topics.RULES

    host: ServiceName
    revision: Revision
    routes: tuple[HttpRoute, ...]

    @field_validator("routes")
    @classmethod
    def _non_empty(cls, value: tuple[HttpRoute, ...]) -> tuple[HttpRoute, ...]:
        if not value:
            raise ValueError("at least one route is required")
        return value

    def key(self) -> str:
        return f"route/{self.host}"


class RouteRuleDeleted(Payload):
    TYPE: ClassVar[str] = "route_rule.deleted"
    TOPIC: ClassVar[str] = topics.RULES

    host: ServiceName
    revision: Revision

    def key(self) -> str:
        return f"route/{self.host}"


class Subset(_Frozen):
    name: ServiceName
    labels: Labels

    @field_validator("labels")
    @classmethod
    def _non_empty(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("a subset needs at least one label to select by")
        return value


class CircuitBreaker(_Frozen):
    max_connections: Annotated[int, Strict(), Field(ge=1, le=1_000_000)] = 1024
    max_pending_requests: Annotated[int, Strict(), Field(ge=1, le=1_000_000)] = 1024
    max_requests: Annotated[int, Strict(), Field(ge=1, le=1_000_000)] = 1024
    max_retries: Annotated[int, Strict(), Field(ge=0, le=1_000_000)] = 3


class OutlierDetection(_Frozen):
    consecutive_5xx: Annotated[int, Strict(), Field(ge=1, le=1000)] = 5
    interval_ms: Millis = 10_000
    base_ejection_time_ms: Millis = 30_000
    max_ejection_percent: Annotated[int, Strict(), Field(ge=0, le=100)] = 10


class DestinationPolicyUpserted(Payload):
    """How calls to ``service`` are balanced, limited and split into subsets (revision-checked).

    ``restricted``: only instances that declare ``service`` in their
    registration (``depends_on``) may discover it; a run-time subscription to
    it -- explicit through a sidecar's API, or learned on demand from Envoy --
    is refused (``SubscriptionRejected``, problem ``restricted``). It applies
    to subscriptions folded from then on; those accepted before stay until
    unsubscribed or the instance deregisters.
    """

    TYPE: ClassVar[str] = "destination_policy.upserted"
    TOPIC: ClassVar[str] = topics.RULES

    service: ServiceName
    revision: Revision
    subsets: tuple[Subset, ...] = ()
    lb_policy: Literal["round_robin", "least_request", "random", "ring_hash"] = "round_robin"
    connect_timeout_ms: Millis = 1000
    circuit_breaker: CircuitBreaker | None = None
    outlier_detection: OutlierDetection | None = None
    restricted: Annotated[bool, Strict()] = False

    @field_validator("subsets")
    @classmethod
    def _unique_subsets(cls, value: tuple[Subset, ...]) -> tuple[Subset, ...]:
        names = [s.name for s in value]
        if len(set(names)) != len(names):
            raise ValueError("subset names must be unique")
        return value

    def key(self) -> str:
        return f"policy/{self.service}"


class DestinationPolicyDeleted(Payload):
    TYPE: ClassVar[str] = "destination_policy.deleted"
    TOPIC: ClassVar[str] = topics.RULES

    service: ServiceName
    revision: Revision

    def key(self) -> str:
        return f"policy/{self.service}"


class AccessPolicyUpserted(Payload):
    """Who may call ``service`` through its sidecars' inbound listeners, beyond the default (revision-checked).

    By default (no access policy) an inbound listener of a sidecar with a mesh
    identity admits exactly the services that depend on ``service`` (declared
    ``depends_on`` or run-time subscriptions) and the health checkers. An
    operator may open it wider: ``allow: mesh`` admits any sidecar of the trust
    domain; ``also`` admits the named services besides the declared callers.
    """

    TYPE: ClassVar[str] = "access_policy.upserted"
    TOPIC: ClassVar[str] = topics.RULES

    service: ServiceName
    revision: Revision
    allow: Literal["declared", "mesh"] = "declared"
    also: tuple[ServiceName, ...] = ()

    @field_validator("also")
    @classmethod
    def _unique_also(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("lists a service more than once")
        return tuple(sorted(value))

    def key(self) -> str:
        return f"access/{self.service}"


class AccessPolicyDeleted(Payload):
    TYPE: ClassVar[str] = "access_policy.deleted"
    TOPIC: ClassVar[str] = topics.RULES

    service: ServiceName
    revision: Revision

    def key(self) -> str:
        return f"access/{self.service}"


# ---------------------------------------------------------------- decisions recorded by the projector


class RuleRejected(Payload):
    """The projector refused a rule event; the previous valid document keeps serving."""

    TYPE: ClassVar[str] = "rule.rejected"
    TOPIC: ClassVar[str] = topics.REJECTIONS

    kind: Literal["route_rule", "destination_policy", "access_policy"]
    name: ServiceName
    revision: Revision
    reason: Annotated[str, Field(min_length=1, max_length=2048)]
    source_topic: NonEmptyText
    source_partition: Annotated[int, Strict(), Field(ge=0)]
    source_offset: Annotated[int, Strict(), Field(ge=0)]

    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    def summary(self) -> str:
        return f"{self.kind} {self.name} revision {self.revision}"


class SubscriptionRejected(Payload):
    """The projector refused a subscription event; the instance's dependencies stay as they were."""

    TYPE: ClassVar[str] = "dependency.subscription_rejected"
    TOPIC: ClassVar[str] = topics.REJECTIONS

    action: Literal["subscribe", "unsubscribe"]
    # machine-readable, so a caller can answer "unknown service" without parsing the reason
    problem: Literal["unknown_instance", "unknown_service", "declared", "not_subscribed", "restricted"]
    service: ServiceName
    instance_id: InstanceId
    dependency: ServiceName
    reason: Annotated[str, Field(min_length=1, max_length=2048)]
    source_topic: NonEmptyText
    source_partition: Annotated[int, Strict(), Field(ge=0)]
    source_offset: Annotated[int, Strict(), Field(ge=0)]

    def key(self) -> str:
        return f"subscription/{self.service}/{self.instance_id}"

    def summary(self) -> str:
        return f"{self.action} of {self.service}/{self.instance_id} to {self.dependency}"


class EventRefused(Payload):
    """The projector refused an event because of who stated it (``projector.authz``); nothing of it was folded.

    ``problem`` says why in one word: the signature could not be verified
    (``unsigned``, ``unknown_signer``, ``not_yet_valid``, ``expired``,
    ``revoked``, ``untrusted_certificate``, ``bad_signature``), or its verified
    ``author`` may not state it (``not_permitted``, ``node_id_taken``,
    ``weight_too_high``, ``service_setting``). ``producer`` is the name the
    writer claimed (escaped and cut); ``author`` is set only when verified.
    """

    TYPE: ClassVar[str] = "event.refused"
    TOPIC: ClassVar[str] = topics.REJECTIONS

    event_type: Annotated[str, Field(min_length=1, max_length=64)]
    event_key: NonEmptyText
    event_id: NonEmptyText
    problem: Literal["unsigned", "unknown_signer", "not_yet_valid", "expired", "revoked", "untrusted_certificate",
                     "bad_signature", "not_permitted", "node_id_taken", "weight_too_high", "service_setting",
                     "trust_domain"]
    reason: Annotated[str, Field(min_length=1, max_length=2048)]
    author: NonEmptyText | None = None
    signer: Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[0-9a-f]+$")] | None = None
    producer: NonEmptyText
    source_topic: NonEmptyText
    source_partition: Annotated[int, Strict(), Field(ge=0)]
    source_offset: Annotated[int, Strict(), Field(ge=0)]

    def key(self) -> str:
        return f"refused/{self.event_key}"

    def summary(self) -> str:
        return f"{self.event_type} of {self.event_key} ({self.problem})"


Decision = RuleRejected | SubscriptionRejected | EventRefused
"""What the fold may decide about one event (recorded on the rejections topic)."""


# ---------------------------------------------------------------- mesh identities (identity/)


def _spiffe_id_text(value: str) -> str:
    from identity.spiffe import SpiffeIdError, parse  # identity.spiffe is pure and imports nothing of events

    try:
        parse(value)
    except SpiffeIdError as exc:
        raise ValueError(str(exc)) from None
    return value


SpiffeIdText = Annotated[str, Field(max_length=2048), AfterValidator(_spiffe_id_text)]
SerialHex = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[0-9a-f]+$")]
TokenId = Annotated[str, Field(min_length=16, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
PemText = Annotated[str, Field(min_length=1, max_length=8192, pattern=r"^-----BEGIN [A-Z ]+-----\n")]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def _spiffe_path(uri: str) -> str:
    return uri.split("/", 3)[3]  # spiffe://<domain>/<path>: the key groups one identity's certificates


class IdentityIssued(Payload):
    """The mesh CA issued a certificate: who (SPIFFE id) holds which key (serial) from when to when.

    Carries everything a verifier needs from the log alone: the public key (to check an
    event's signature), the validity, and the certificate itself (to check, with the root,
    that the CA really signed it). ``issuer`` is the CA's SPIFFE id, ``issuer_fingerprint``
    the SHA-256 of its root certificate (DER), so a re-created root is never confused.
    """

    TYPE: ClassVar[str] = "identity.issued"
    TOPIC: ClassVar[str] = topics.IDENTITIES

    spiffe_id: SpiffeIdText
    serial: SerialHex
    public_key: PemText
    certificate: PemText
    not_before: AwareDatetime
    not_after: AwareDatetime
    issuer: SpiffeIdText
    issuer_fingerprint: Sha256Hex
    how: Literal["join_token", "renewal", "offline"]
    join_token_id: TokenId | None = None   # how == "join_token"
    renews_serial: SerialHex | None = None  # how == "renewal"
    requested_by: NonEmptyText              # the renewing identity, or the operator of an offline issue

    @model_validator(mode="after")
    def _consistent(self) -> "IdentityIssued":
        if self.not_after <= self.not_before:
            raise ValueError("not_after: must be later than not_before")
        if (self.how == "join_token") != (self.join_token_id is not None):
            raise ValueError("join_token_id: given exactly when how is join_token")
        if (self.how == "renewal") != (self.renews_serial is not None):
            raise ValueError("renews_serial: given exactly when how is renewal")
        return self

    def key(self) -> str:
        return _spiffe_path(self.spiffe_id)


class IdentityRevoked(Payload):
    """The certificate with ``serial`` is no longer accepted, from this event's log time on."""

    TYPE: ClassVar[str] = "identity.revoked"
    TOPIC: ClassVar[str] = topics.IDENTITIES

    spiffe_id: SpiffeIdText
    serial: SerialHex
    reason: NonEmptyText
    revoked_by: NonEmptyText

    def key(self) -> str:
        return _spiffe_path(self.spiffe_id)


class JoinTokenRedeemed(Payload):
    """A CA replica claims a join token's one use; the first claim of a token in log order wins."""

    TYPE: ClassVar[str] = "join_token.redeemed"
    TOPIC: ClassVar[str] = topics.IDENTITIES

    token_id: TokenId
    service: ServiceName
    instance_id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")]
    expires_at: AwareDatetime
    claim_id: TokenId  # unique per attempt: tells a replica whether the winning claim is its own

    def key(self) -> str:
        return f"token/{self.token_id}"


# ---------------------------------------------------------------- what the proxies accepted (written by gateways)

_TYPE_URL_RE = r"^type\.googleapis\.com/[A-Za-z0-9_.]{1,200}$"
TypeUrl = Annotated[str, Field(min_length=1, max_length=256, pattern=_TYPE_URL_RE)]
ResourceName = Annotated[str, Field(min_length=1, max_length=1024)]
ResourceVersion = Annotated[str, Field(min_length=1, max_length=64)]
#: at most this many names per sync record: a record stays well under Kafka's 1 MB default
MAX_SYNC_NAMES = 10_000
ResourceVersions = Annotated[dict[ResourceName, ResourceVersion], Field(max_length=MAX_SYNC_NAMES)]
StreamId = Annotated[str, Field(min_length=1, max_length=128)]
GatewayId = Annotated[str, Field(min_length=1, max_length=256)]
Nonce = Annotated[str, Field(min_length=1, max_length=256)]


class _SyncFact(Payload):
    """Something one gateway stream learned about its proxy. Keyed by node: a node's facts stay in order."""

    TOPIC: ClassVar[str] = topics.SYNC

    node: NonEmptyText
    gateway: GatewayId  # the replica id of the gateway holding the stream
    stream_id: StreamId  # unique within the gateway process

    def key(self) -> str:
        return self.node


class ProxyStreamOpened(_SyncFact):
    """A proxy opened an ADS stream to a gateway replica."""

    TYPE: ClassVar[str] = "sync.stream_opened"

    kind: Literal["delta", "sotw"]
    peer: NonEmptyText  # the client's address as gRPC reports it ("ipv4:10.0.0.7:51234")
    identity: NonEmptyText | None = None  # the client certificate's identity, once mTLS is on


class ProxyStreamClosed(_SyncFact):
    """An ADS stream ended: the client went away, was shed, or the gateway stopped."""

    TYPE: ClassVar[str] = "sync.stream_closed"

    reason: Literal["client_closed", "gateway_stopping", "slow_client", "too_many_requests", "error"]


class ProxyAcked(_SyncFact):
    """The proxy ACKed a response: ``held`` is every name (and version) of the type it holds now."""

    TYPE: ClassVar[str] = "sync.acked"

    type_url: TypeUrl
    nonce: Nonce  # the newest response it answered
    held: ResourceVersions
    truncated: Annotated[bool, Strict()] = False  # it held more than MAX_SYNC_NAMES names; ``held`` is a part


class ProxyNacked(_SyncFact):
    """The proxy rejected a response; it keeps what it held before."""

    TYPE: ClassVar[str] = "sync.nacked"

    type_url: TypeUrl
    nonce: Nonce
    rejected: ResourceVersions  # the names and versions the rejected response carried
    removed: Annotated[tuple[ResourceName, ...], Field(max_length=MAX_SYNC_NAMES)] = ()
    code: Annotated[int, Strict()] = 0
    # the proxy's own words, cut to size and with control characters escaped by the gateway
    reason: Annotated[str, Field(min_length=1, max_length=2048)]


PAYLOAD_TYPES: dict[str, type[Payload]] = {
    cls.TYPE: cls
    for cls in (
        InstanceRegistered,
        InstanceDeregistered,
        InstanceHealthChanged,
        DependencySubscribed,
        DependencyUnsubscribed,
        RouteRuleUpserted,
        RouteRuleDeleted,
        DestinationPolicyUpserted,
        DestinationPolicyDeleted,
        AccessPolicyUpserted,
        AccessPolicyDeleted,
        RuleRejected,
        IdentityIssued,
        IdentityRevoked,
        JoinTokenRedeemed,
        ProxyStreamOpened,
        ProxyStreamClosed,
        ProxyAcked,
        ProxyNacked,
        SubscriptionRejected,
        EventRefused,
    )
}
