"""Views on Kafka: what to publish after a batch, and publishing it in a safe order.

Two compacted topics (``events.topics``):

- ``VIEW_RESOURCES``: key ``"<type_url>|<name>"`` (utf-8; split at the
  *first* ``|``: a type url never contains one, a subset cluster name does),
  value = the resource's deterministic serialization, header
  ``meshlog-version`` = its version (``projector.versioning``: a shared
  resource's is the hash of its render inputs, not recomputable from the
  value; readers take it from the header, ``record_version``, and fall back
  to ``version_of(value)`` for a record without it: per-node versions are
  that hash). A tombstone (value ``None``) when the resource is in no node's
  membership any more.
- ``VIEW_MEMBERSHIP``: key ``<node_id>`` (utf-8), value = orjson (sorted
  keys) of ``{"node": id, "owner": {"service": S, "instance": I},
  "resources": {type_url: {name: version}}}``; a tombstone when the node is
  gone. ``owner`` is the registered instance the node stands for (the
  gateway lets only that instance's identity stream the node); records
  written before it existed lack it, and are republished with it.
  A ClusterLoadAssignment is named *without* its version (``""``,
  ``on_the_wire``): the node holds the latest body of that name. An
  endpoint change is then one body record, not one body plus a membership
  per node that holds it (1,001 records for a service with 1,000 dependents).
  That is safe because a ClusterLoadAssignment is a leaf: no other resource
  names it with a version or depends on its content, so serving the new body
  before anything else moves cannot point a proxy at something it lacks
  (make-before-break is about routes and the clusters they name, whose
  versions memberships keep). A membership written before this (versions
  for every type) is still read as it says, and republished once in this
  form. ``resolve_told`` turns a record back into name -> version with the
  bodies' versions.
- Every view record carries the header ``meshlog-source-ms``: the broker time
  (ms) of the newest event folded into the batch that produced it, so a
  gateway can measure from an event's append to the proxy's ACK.

Invariants:
- Only real changes are published: a body whose version equals the one last
  published, or a membership whose record (``on_the_wire``) equals the last
  published one, is not sent: an endpoint change sends its body only.
  What was published is kept by the caller (in RocksDB), so a restart
  republishes nothing unchanged.
- Order per batch: new/changed bodies first (clusters, endpoints, listeners,
  routes), each acknowledged by the broker before any membership is sent;
  then memberships (upserts and tombstones), acknowledged; then tombstones of
  bodies no node references any more. A gateway therefore never reads a
  membership naming a body that is not already in the log, and a body
  disappears only after no membership names it.

- Sending is resumable and never appends a record twice by itself
  (``OrderedSender``): after a failure, a retry resends only what the broker
  did not acknowledge. A record the broker refuses for good (too large,
  invalid: ``UNDELIVERABLE``) is set aside and reported instead of being
  retried forever, so one such record cannot stop the projector.

- With a ``scope`` (``projector.sharding.Ownership``: a worker of ``projector
  run --group``) a plan holds only the keys of the worker's shards; the plans
  of workers owning disjoint shards are disjoint and together equal the
  unscoped plan. The order above then holds per worker.

``plan_views`` is pure (unit-tested); ``OrderedSender`` does the I/O.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import orjson
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTimestampError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from events import topics
from projector.typeurls import TYPE_URLS
from projector.versioning import LATEST, VERSION_HEX_CHARS, VERSIONLESS_TYPES, version_of

ResourceKey = tuple[str, str]  # (type_url, name)
Membership = dict[str, dict[str, str]]  # type_url -> name -> version
Owner = tuple[str, str]  # (service, instance_id) of the node's registration

_TYPE_RANK = {u: i for i, u in enumerate(TYPE_URLS)}


SOURCE_MS_HEADER = "meshlog-source-ms"
VERSION_HEADER = "meshlog-version"


def record_version(value: bytes, headers) -> str:
    """The version of a body record of ``VIEW_RESOURCES``: its ``meshlog-version`` header, else the hash of its
    value (a record written before shared versions came from render inputs, or a test's). A header that is not
    a version (``VERSION_HEX_CHARS`` lowercase hex digits) is ignored: what reaches a proxy from the log is
    bounded and plain."""
    for name, raw in headers or ():
        if name == VERSION_HEADER and isinstance(raw, bytes) and _VERSION_RE.fullmatch(raw):
            return raw.decode("ascii")
    return version_of(value)


_VERSION_RE = re.compile(rb"[0-9a-f]{%d}" % VERSION_HEX_CHARS)


def source_headers(source_ms: int | None) -> list[tuple[str, bytes]] | None:
    """The headers of a view record: the broker time of the newest event behind it, when known."""
    return [(SOURCE_MS_HEADER, str(source_ms).encode())] if source_ms is not None else None


def source_ms_of(headers) -> int | None:
    """The ``meshlog-source-ms`` header of a view record (aiokafka's header tuples), or None."""
    for name, value in headers or ():
        if name == SOURCE_MS_HEADER:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


def resource_key(type_url: str, name: str) -> bytes:
    return f"{type_url}|{name}".encode()


def parse_resource_key(key: bytes | str) -> ResourceKey:
    text = key.decode() if isinstance(key, (bytes, bytearray)) else key
    type_url, sep, name = text.partition("|")
    if not sep:
        raise ValueError(f"not a resource view key: {text!r}")
    return type_url, name



def on_the_wire(resources: Mapping[str, Mapping[str, str]]) -> Membership:
    """A rendered membership (every name with its version) as its record names it: the names of
    ``VERSIONLESS_TYPES`` with ``LATEST`` (shares the other types' mappings)."""
    return {u: (dict.fromkeys(names, LATEST) if u in VERSIONLESS_TYPES else names) for u, names in resources.items()}


def same_on_the_wire(record: Mapping[str, Mapping[str, str]] | None, rendered: Mapping[str, Mapping[str, str]]) -> bool:
    """Whether ``record`` (a published membership) is ``on_the_wire(rendered)``, without building it: the
    check runs for every node holding a changed resource, most of them holding a changed ClusterLoadAssignment."""
    if record is None or len(record) != len(rendered):
        return False
    for type_url, names in rendered.items():
        held = record.get(type_url)
        if held is None:
            return False
        if type_url in VERSIONLESS_TYPES:
            # a record names such a type's names all at LATEST (``on_the_wire``) or, written by an older
            # projector, all with versions: its first value tells which
            if held.keys() != names.keys() or next(iter(held.values()), LATEST) != LATEST:
                return False
        elif held is not names and held != names:  # ``is``: the record shares a mapping that did not move since
            return False
    return True


def resolve_told(resources: Mapping[str, Mapping[str, str]], body_versions: Mapping[ResourceKey, str]) -> Membership:
    """What a membership record tells its node, name -> version: a ``LATEST`` name at the version of the
    latest body of that name (``body_versions``: (type_url, name) -> version of the bodies on the view
    topic; left ``LATEST`` when there is no such body)."""
    return {u: {n: (body_versions.get((u, n), LATEST) if v == LATEST else v) for n, v in names.items()}
            for u, names in resources.items()}


_LATEST_PREFIXES = tuple(f"{u}|".encode() for u in sorted(VERSIONLESS_TYPES))


def held_at_the_latest(record) -> bool:
    """Whether a ``VIEW_RESOURCES`` record is a body of a type memberships name at the latest (by its key alone:
    a reader of that topic can skip the rest, mostly per-node bodies, without parsing them)."""
    key = record.key
    return isinstance(key, bytes) and key.startswith(_LATEST_PREFIXES)


def latest_body(record) -> tuple[ResourceKey, str | None] | None:
    """A ``VIEW_RESOURCES`` record as ((type_url, name), its version; None for a tombstone) when it is a body of a
    type memberships name at the latest (what ``resolve_told`` needs of the topic); None for any other record."""
    if not held_at_the_latest(record):
        return None
    try:
        ident = parse_resource_key(record.key)
    except (ValueError, UnicodeDecodeError):
        return None
    return ident, None if record.value is None else record_version(record.value, record.headers)


def membership_value(node: str, resources: Mapping[str, Mapping[str, str]], owner: Owner | None = None) -> bytes:
    doc: dict[str, Any] = {"node": node, "resources": resources}
    if owner is not None:
        doc["owner"] = {"service": owner[0], "instance": owner[1]}
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def parse_membership_value(value: bytes) -> tuple[str, Membership]:
    doc = orjson.loads(value)
    return doc["node"], doc["resources"]


def parse_membership_owner(value: bytes) -> Owner | None:
    """The owner a membership record names, or None (a record from before owners were published)."""
    owner = orjson.loads(value).get("owner")
    if not isinstance(owner, dict):
        return None
    service, instance = owner.get("service"), owner.get("instance")
    if not isinstance(service, str) or not isinstance(instance, str):
        return None
    return service, instance


def _type_order(rk: ResourceKey) -> tuple[int, str, str]:
    return (_TYPE_RANK.get(rk[0], len(_TYPE_RANK)), rk[0], rk[1])


@dataclass(slots=True)
class PublishedViews:
    """What is on the view topics (as far as this projector knows): versions and memberships (as their
    records name them: ``on_the_wire``)."""

    resources: dict[ResourceKey, str] = field(default_factory=dict)
    membership: dict[str, Membership] = field(default_factory=dict)
    owners: dict[str, Owner] = field(default_factory=dict)

    def apply(self, plan: "ViewPlan") -> None:
        for rk, _body, version in plan.bodies:
            self.resources[rk] = version
        for node, _value, resources in plan.membership:
            if resources is None:
                self.membership.pop(node, None)
                self.owners.pop(node, None)
            else:
                self.membership[node] = resources
                owner = plan.owners.get(node)
                if owner is not None:
                    self.owners[node] = owner
        for rk in plan.removals:
            self.resources.pop(rk, None)


@dataclass(frozen=True, slots=True)
class ViewPlan:
    bodies: list[tuple[ResourceKey, bytes, str]]  # (key, body, version): new or changed
    # (node, value, resources as the record names them: ``on_the_wire``); None = tombstone
    membership: list[tuple[str, bytes | None, Membership | None]]
    removals: list[ResourceKey]  # bodies to tombstone
    owners: dict[str, Owner] = field(default_factory=dict)  # owner of each node in ``membership``

    @property
    def empty(self) -> bool:
        return not (self.bodies or self.membership or self.removals)

    def summary(self) -> str:
        gone = sum(1 for _n, v, _r in self.membership if v is None)
        return (
            f"{len(self.bodies)} bodies, {len(self.membership) - gone} memberships, "
            f"{gone} membership tombstones, {len(self.removals)} body tombstones"
        )


EMPTY_PLAN = ViewPlan([], [], [])


def plan_views(rendered: Any, published: PublishedViews, scope: Any = None) -> ViewPlan:
    """Diff a ``RenderedMesh`` against what was published: the records to send, in order.

    ``scope`` (a ``projector.sharding.Ownership``; None: everything) limits the plan to the keys a
    worker owns: the memberships of its nodes and the resources of its shards.
    """
    return _plan(rendered, published, candidates=rendered.resources, nodes=rendered.membership,
                 gone_nodes=published.membership, gone=published.resources, scope=scope)


def plan_takeover(rendered: Any, published: PublishedViews, scope: Any) -> ViewPlan:
    """Every record of the keys in ``scope`` (shards a worker just gained), whatever it published before.

    The previous owner may have written them from another log position (or died half-way), so the
    new owner does not trust its own record of what is published: it sends every owned body and
    membership of its render, and tombstones what it knows was published there but is gone.
    """
    plan = _plan(rendered, PublishedViews(), candidates=rendered.resources, nodes=rendered.membership,
                 gone_nodes=(), gone=(), scope=scope)
    tombstones = [(node, None, None) for node in sorted(published.membership)
                  if node not in rendered.membership and scope.owns_node(node)]
    removals = sorted((rk for rk in published.resources if rk not in rendered.resources and scope.owns_resource(rk)),
                      key=_type_order, reverse=True)
    return ViewPlan(plan.bodies, plan.membership + tombstones, removals, plan.owners)


def plan_for_shards(rendered: Any, published: PublishedViews, scope: Any, gained: frozenset[int],
                    incremental: bool) -> ViewPlan:
    """A worker's plan after a render: the changes of the shards it kept (``plan_changes`` after an
    incremental render, else ``plan_views``), and every record of the shards it ``gained`` (``plan_takeover``)."""
    plan_of = plan_changes if incremental else plan_views
    if not gained:
        return plan_of(rendered, published, scope)
    kept = scope.only(scope.shards - gained)
    return merge_plans(plan_of(rendered, published, kept), plan_takeover(rendered, published, scope.only(gained)))


def merge_plans(a: ViewPlan, b: ViewPlan) -> ViewPlan:
    """Two plans over disjoint keys (two sets of shards) as one, in publishing order."""
    if a.empty:
        return b
    if b.empty:
        return a
    return ViewPlan(sorted(a.bodies + b.bodies, key=lambda item: _type_order(item[0])),
                    sorted(a.membership + b.membership, key=lambda item: (item[1] is None, item[0])),
                    sorted(a.removals + b.removals, key=_type_order, reverse=True), {**a.owners, **b.owners})


def plan_changes(rendered: Any, published: PublishedViews, scope: Any = None) -> ViewPlan:
    """Like ``plan_views``, but looks only at what an incremental render reports as changed.

    ``rendered`` comes from ``render_all(state, previous=last)``: its
    ``changed``/``removed`` resources and ``changed_nodes``/``removed_nodes``
    are relative to ``last``, whose plan was published. Gives the same plan as
    ``plan_views`` then (unit-tested), in time proportional to the change.
    """
    return _plan(rendered, published, candidates=rendered.changed, nodes=rendered.changed_nodes,
                 gone_nodes=rendered.removed_nodes, gone=rendered.removed, scope=scope)


def _plan(rendered: Any, published: PublishedViews, *, candidates: Iterable[ResourceKey], nodes: Iterable[str],
          gone_nodes: Iterable[str], gone: Iterable[ResourceKey], scope: Any = None) -> ViewPlan:
    """The plan over the resources and nodes that may have changed (``candidates``, ``nodes``) and
    those that may be gone (``gone``, ``gone_nodes``): everything for a full diff, the render's
    change sets for an incremental one; only the keys ``scope`` owns, when given."""
    if scope is not None and not scope.everything:
        candidates = [rk for rk in candidates if scope.owns_resource(rk)]
        gone = [rk for rk in gone if scope.owns_resource(rk)]
        nodes = [n for n in nodes if scope.owns_node(n)]
        gone_nodes = [n for n in gone_nodes if scope.owns_node(n)]
    versions: Mapping[ResourceKey, str] = getattr(rendered, "versions", None) or {}
    resources: Mapping[ResourceKey, bytes] = rendered.resources
    bodies = []
    for rk in candidates:
        body = resources.get(rk)
        if body is None:
            continue
        version = versions.get(rk) or version_of(body)
        if published.resources.get(rk) != version:
            bodies.append((rk, body, version))
    bodies.sort(key=lambda item: _type_order(item[0]))

    membership: list[tuple[str, bytes | None, Membership | None]] = []
    rendered_membership: Mapping[str, Membership] = rendered.membership
    rendered_owners: Mapping[str, Owner] = getattr(rendered, "owners", None) or {}
    owners: dict[str, Owner] = {}
    for node in sorted(nodes):
        res = rendered_membership.get(node)
        owner = rendered_owners.get(node)
        if res is not None and (not same_on_the_wire(published.membership.get(node), res)
                                or published.owners.get(node) != owner):
            wire = on_the_wire(res)
            membership.append((node, membership_value(node, wire, owner), wire))
            if owner is not None:
                owners[node] = owner
    for node in sorted(gone_nodes):
        if node not in rendered_membership and node in published.membership:
            membership.append((node, None, None))

    removals = sorted(
        (rk for rk in gone if rk not in resources and rk in published.resources),
        key=_type_order,
        reverse=True,
    )
    return ViewPlan(bodies, membership, removals, owners)


def plan_records(plan: ViewPlan) -> list[list[tuple[str, bytes, bytes | None, list | None]]]:
    """The plan as three ordered phases of (topic, key, value, headers) records (a body's headers: its version)."""
    return [
        [(topics.VIEW_RESOURCES, resource_key(*rk), body, [(VERSION_HEADER, v.encode())])
         for rk, body, v in plan.bodies],
        [(topics.VIEW_MEMBERSHIP, node.encode(), value, None) for node, value, _r in plan.membership],
        [(topics.VIEW_RESOURCES, resource_key(*rk), None, None) for rk in plan.removals],
    ]


# The broker (or the client, before sending) refuses the record itself: sending it again gives the same
# answer. Everything else (a broker away, a timeout, a moving leader) is worth retrying.
UNDELIVERABLE: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
    InvalidTimestampError,
)

Record = tuple  # (topic, key, value) or (topic, key, value, headers of this record or None)


class OrderedSender:
    """Send phases of records in order, each phase settled before the next; ``run()`` again resumes.

    A record is settled once the broker acknowledged it (``acked``) or refused it for good
    (``undeliverable``, with the error). ``run()`` raises the first other failure after every record
    in flight has settled or timed out; calling it again sends only what is not settled.
    """

    def __init__(self, producer: Any, phases: Iterable[Iterable[Record]], timeout_s: float,
                 phase_headers: Iterable[list[tuple[str, bytes]] | None] | None = None) -> None:
        self._producer = producer
        self._phases = [list(p) for p in phases]
        self._headers = list(phase_headers) if phase_headers is not None else [None] * len(self._phases)
        self._settled: list[set[int]] = [set() for _ in self._phases]
        self._timeout_s = timeout_s
        self._phase = 0
        self.acked = [0] * len(self._phases)  # acknowledged records per phase
        self.undeliverable: list[tuple[Record, BaseException]] = []

    def _give_up(self, phase: int, index: int, exc: BaseException) -> None:
        self._settled[phase].add(index)
        self.undeliverable.append((self._phases[phase][index], exc))

    async def run(self) -> None:
        while self._phase < len(self._phases):
            await self._send(self._phase)
            self._phase += 1

    async def _send(self, phase: int) -> None:
        records, settled = self._phases[phase], self._settled[phase]
        common = self._headers[phase] or []
        error: BaseException | None = None
        in_flight = []
        for i, record in enumerate(records):
            if i in settled:
                continue
            topic, key, value = record[:3]
            headers = common + (record[3] or []) if len(record) > 3 else common
            extra = {"headers": headers} if headers else {}
            try:
                in_flight.append((i, await self._producer.send(topic, value=value, key=key, **extra)))
            except UNDELIVERABLE as exc:  # the client's own size check refuses before sending
                self._give_up(phase, i, exc)
            except Exception as exc:  # noqa: BLE001 - settle what is in flight, then let the caller retry
                error = exc
                break
        if in_flight:
            await asyncio.wait([f for _i, f in in_flight], timeout=self._timeout_s)
        for i, fut in in_flight:
            if not fut.done() or fut.cancelled():  # unknown outcome: sent again on the next run (at-least-once)
                error = error or asyncio.TimeoutError(f"not acknowledged within {self._timeout_s:g}s")
                continue
            exc = fut.exception()
            if exc is None:
                settled.add(i)
                self.acked[phase] += 1
            elif isinstance(exc, UNDELIVERABLE):
                self._give_up(phase, i, exc)
            else:
                error = error or exc
        if error is not None:
            raise error
