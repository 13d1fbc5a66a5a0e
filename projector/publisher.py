"""Views on Kafka: what to publish after a batch, and publishing it in a safe order.

Two compacted topics (``events.topics``):

- ``VIEW_RESOURCES``: key ``"<type_url>|<name>"`` (utf-8; split at the
  *first* ``|``: a type url never contains one, a subset cluster name does),
  value = the resource's deterministic serialization. Its version is
  ``projector.versioning.version_of(value)``, recomputable by any reader. A
  tombstone (value ``None``) when the resource is in no node's membership
  any more.
- ``VIEW_MEMBERSHIP``: key ``<node_id>`` (utf-8), value = orjson (sorted
  keys) of ``{"node": id, "resources": {type_url: {name: version}}}``; a
  tombstone when the node is gone.
- Every view record carries the header ``meshlog-source-ms``: the broker time
  (ms) of the newest event folded into the batch that produced it, so a
  gateway can measure from an event's append to the proxy's ACK.

Invariants:
- Only real changes are published: a body whose version equals the one last
  published, or a membership equal to the last published one, is not sent.
  What was published is kept by the caller (in RocksDB), so a restart
  republishes nothing unchanged.
- Order per batch: new/changed bodies first (clusters, endpoints, listeners,
  routes), each acknowledged by the broker before any membership is sent;
  then memberships (upserts and tombstones), acknowledged; then tombstones of
  bodies no node references any more. A gateway therefore never reads a
  membership naming a body that is not already in the log, and a body
  disappears only after no membership names it.

``plan_views`` is pure (unit-tested); ``publish_plan`` does the I/O.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import orjson

from events import topics
from projector.typeurls import TYPE_URLS
from projector.versioning import version_of

ResourceKey = tuple[str, str]  # (type_url, name)
Membership = dict[str, dict[str, str]]  # type_url -> name -> version

_TYPE_RANK = {u: i for i, u in enumerate(TYPE_URLS)}


SOURCE_MS_HEADER = "meshlog-source-ms"


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


def membership_value(node: str, resources: Mapping[str, Mapping[str, str]]) -> bytes:
    return orjson.dumps({"node": node, "resources": resources}, option=orjson.OPT_SORT_KEYS)


def parse_membership_value(value: bytes) -> tuple[str, Membership]:
    doc = orjson.loads(value)
    return doc["node"], doc["resources"]


def _type_order(rk: ResourceKey) -> tuple[int, str, str]:
    return (_TYPE_RANK.get(rk[0], len(_TYPE_RANK)), rk[0], rk[1])


@dataclass(slots=True)
class PublishedViews:
    """What is on the view topics (as far as this projector knows): versions and memberships."""

    resources: dict[ResourceKey, str] = field(default_factory=dict)
    membership: dict[str, Membership] = field(default_factory=dict)

    def apply(self, plan: "ViewPlan") -> None:
        for rk, _body, version in plan.bodies:
            self.resources[rk] = version
        for node, _value, resources in plan.membership:
            if resources is None:
                self.membership.pop(node, None)
            else:
                self.membership[node] = resources
        for rk in plan.removals:
            self.resources.pop(rk, None)


@dataclass(frozen=True, slots=True)
class ViewPlan:
    bodies: list[tuple[ResourceKey, bytes, str]]  # (key, body, version): new or changed
    membership: list[tuple[str, bytes | None, Membership | None]]  # (node, value, resources); None = tombstone
    removals: list[ResourceKey]  # bodies to tombstone

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


def plan_views(rendered: Any, published: PublishedViews) -> ViewPlan:
    """Diff a ``RenderedMesh`` against what was published: the records to send, in order."""
    versions: Mapping[ResourceKey, str] = getattr(rendered, "versions", None) or {}
    resources: Mapping[ResourceKey, bytes] = rendered.resources
    bodies = []
    for rk, body in resources.items():
        version = versions.get(rk) or version_of(body)
        if published.resources.get(rk) != version:
            bodies.append((rk, body, version))
    bodies.sort(key=lambda item: _type_order(item[0]))

    membership: list[tuple[str, bytes | None, Membership | None]] = []
    rendered_membership: Mapping[str, Membership] = rendered.membership
    for node in sorted(rendered_membership):
        res = rendered_membership[node]
        if published.membership.get(node) != res:
            membership.append((node, membership_value(node, res), res))
    for node in sorted(set(published.membership) - set(rendered_membership)):
        membership.append((node, None, None))

    removals = sorted((rk for rk in published.resources if rk not in resources), key=_type_order, reverse=True)
    return ViewPlan(bodies, membership, removals)


def plan_changes(rendered: Any, published: PublishedViews) -> ViewPlan:
    """Like ``plan_views``, but looks only at what an incremental render reports as changed.

    ``rendered`` comes from ``render_all(state, previous=last)``: its
    ``changed``/``removed`` resources and ``changed_nodes``/``removed_nodes``
    are relative to ``last``, whose plan was published. Gives the same plan as
    ``plan_views`` then (unit-tested), in time proportional to the change.
    """
    versions: Mapping[ResourceKey, str] = rendered.versions
    resources: Mapping[ResourceKey, bytes] = rendered.resources
    bodies = []
    for rk in rendered.changed:
        body = resources.get(rk)
        if body is None:
            continue
        version = versions.get(rk) or version_of(body)
        if published.resources.get(rk) != version:
            bodies.append((rk, body, version))
    bodies.sort(key=lambda item: _type_order(item[0]))

    membership: list[tuple[str, bytes | None, Membership | None]] = []
    rendered_membership: Mapping[str, Membership] = rendered.membership
    for node in sorted(rendered.changed_nodes):
        res = rendered_membership.get(node)
        if res is not None and published.membership.get(node) != res:
            membership.append((node, membership_value(node, res), res))
    for node in sorted(rendered.removed_nodes):
        if node not in rendered_membership and node in published.membership:
            membership.append((node, None, None))

    removals = sorted(
        (rk for rk in rendered.removed if rk not in resources and rk in published.resources),
        key=_type_order,
        reverse=True,
    )
    return ViewPlan(bodies, membership, removals)


def plan_records(plan: ViewPlan) -> list[list[tuple[str, bytes, bytes | None]]]:
    """The plan as three ordered phases of (topic, key, value) records."""
    return [
        [(topics.VIEW_RESOURCES, resource_key(*rk), body) for rk, body, _v in plan.bodies],
        [(topics.VIEW_MEMBERSHIP, node.encode(), value) for node, value, _r in plan.membership],
        [(topics.VIEW_RESOURCES, resource_key(*rk), None) for rk in plan.removals],
    ]


async def send_phase(producer: Any, records: Iterable[tuple[str, bytes, bytes | None]], timeout_s: float,
                     headers: list[tuple[str, bytes]] | None = None) -> int:
    """Send records and wait until the broker acknowledged every one (raises on any failure)."""
    extra = {"headers": headers} if headers else {}
    futures = [await producer.send(topic, value=value, key=key, **extra) for topic, key, value in records]
    if futures:
        await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
    return len(futures)


async def publish_plan(producer: Any, plan: ViewPlan, *, timeout_s: float = 30.0, source_ms: int | None = None) -> int:
    headers = [(SOURCE_MS_HEADER, str(source_ms).encode())] if source_ms is not None else None
    sent = 0
    for phase in plan_records(plan):
        sent += await send_phase(producer, phase, timeout_s, headers)
    return sent
