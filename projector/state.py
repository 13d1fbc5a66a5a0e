"""The folded mesh model.

Invariants:
- A ``MeshState`` is immutable from the outside. ``projector.fold`` returns a
  new value that shares every untouched part with its input and never mutates
  the input (a folded-away state stays valid: replay and diffs keep old ones).
- It is a handful of keyed maps of per-entity entries, so a key-value store
  (RocksDB) could hold it entry by entry:

  ``instances``    ``"<service>/<instance_id>"`` -> ``Instance`` (the
                   registration and the broker timestamp it was logged at,
                   plus its run-time ``Subscription``s: the dependencies it
                   subscribed to after registering, each with its origin and
                   broker timestamp; ``Instance.dependencies()`` is declared
                   ∪ subscribed, the roots of the node's closure)
  ``health``       same key -> ``Health`` (status, broker timestamp); only
                   non-default ("unhealthy"/"draining") statuses are kept.
                   A record may exist for an instance that is not registered
                   right now (its registration is not folded yet, or the
                   record was logged before a deregistration but folded after
                   it); it never renders, and the key's next registration or
                   deregistration drops it if it is older. Hence two folds of
                   the same events in different cross-topic orders render
                   identically, though their state bytes may differ by such
                   records.
  ``services``     service -> ``ServiceMeta``: every service that ever had an
                   instance registered, with the protocol and app port of its
                   latest registration (kept after the last deregistration:
                   "known" services, the render-time check for rules)
  ``route_rules``  host -> the current valid ``RouteRuleUpserted``
  ``policies``     service -> the current valid ``DestinationPolicyUpserted``
  ``revisions``    ``"route/<host>"`` | ``"policy/<service>"`` |
                   ``"access/<service>"`` -> the last accepted revision, a
                   delete included (rule bookkeeping)
  ``access``       service -> the current valid ``AccessPolicyUpserted``
                   (who may call it beyond its declared callers)

  plus four derived indexes that are rebuilt on load and never serialized:
  ``by_service`` (service -> instance keys), ``nodes`` (node id -> instance
  keys claiming it), ``subset_users`` (service -> hosts whose current route
  rule names one of its subsets) and ``callers`` (service -> keys of the
  registered instances whose ``dependencies()`` name it: the dependency graph
  read backwards, what a sidecar's inbound RBAC admits: per request in its
  inbound route for HTTP/gRPC, per connection in the listener for TCP).
- Map iteration order is unspecified (it depends on the process's string
  hashing); everything observable (``state_to_bytes``, rendering) sorts.
- ``state_to_bytes`` is deterministic (sorted keys, sorted entries) and
  ``state_from_bytes(state_to_bytes(s)) == s``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Generic, Iterator, NamedTuple, TypeVar

import orjson

from events.types import AccessPolicyUpserted, DestinationPolicyUpserted, InstanceRegistered, RouteRuleUpserted

K = TypeVar("K")
V = TypeVar("V")

_MIN_BUCKETS = 16


class PMap(Generic[K, V]):
    """A persistent (copy-on-write) hash map: O(√n) update, O(1) lookup.

    The entries live in ``B`` buckets (plain dicts); an update copies one
    bucket and the bucket tuple, sharing the rest with the previous version.
    ``B`` grows ×4 once the map holds more than ``B²`` entries, so an update
    costs about ``2·√n`` pointer copies. For many updates in a row use an
    ``evolver()``, which copies each touched bucket once and then updates in
    place until ``persistent()`` seals it.
    """

    __slots__ = ("_buckets", "_len")

    def __init__(self, buckets: tuple[dict, ...] | None = None, length: int = 0) -> None:
        self._buckets = buckets if buckets is not None else tuple({} for _ in range(_MIN_BUCKETS))
        self._len = length

    @classmethod
    def from_items(cls, items: Any) -> "PMap[K, V]":
        ev: PMapEvolver[K, V] = EMPTY_PMAP.evolver()
        for k, v in items:
            ev[k] = v
        return ev.persistent()

    @classmethod
    def from_dict(cls, items: dict) -> "PMap[K, V]":
        """The map of a plain dict's entries (as ``from_items``, with the bucket count that would end up with)."""
        nb = _MIN_BUCKETS
        while len(items) > nb * nb:
            nb *= 4
        buckets: list[dict] = [{} for _ in range(nb)]
        for k, v in items.items():
            buckets[hash(k) % nb][k] = v
        return cls(tuple(buckets), len(items))

    def get(self, key: K, default: Any = None) -> Any:
        b = self._buckets
        return b[hash(key) % len(b)].get(key, default)

    def __getitem__(self, key: K) -> V:
        b = self._buckets
        return b[hash(key) % len(b)][key]

    def __contains__(self, key: object) -> bool:
        b = self._buckets
        return key in b[hash(key) % len(b)]

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[K]:
        for bucket in self._buckets:
            yield from bucket

    def keys(self) -> Iterator[K]:
        return iter(self)

    def items(self) -> Iterator[tuple[K, V]]:
        for bucket in self._buckets:
            yield from bucket.items()

    def values(self) -> Iterator[V]:
        for bucket in self._buckets:
            yield from bucket.values()

    def to_dict(self) -> dict[K, V]:
        out: dict[K, V] = {}
        for bucket in self._buckets:
            out.update(bucket)
        return out

    def set(self, key: K, value: V) -> "PMap[K, V]":
        ev = self.evolver()
        ev[key] = value
        return ev.persistent()

    def discard(self, key: K) -> "PMap[K, V]":
        if key not in self:
            return self
        ev = self.evolver()
        del ev[key]
        return ev.persistent()

    def evolver(self) -> "PMapEvolver[K, V]":
        return PMapEvolver(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PMap):
            return NotImplemented
        if self is other:
            return True
        if self._len != other._len:
            return False
        for k, v in self.items():
            if k not in other or other[k] != v:
                return False
        return True

    def __hash__(self) -> int:  # pragma: no cover - maps are not used as keys
        raise TypeError("PMap is not hashable")

    def __repr__(self) -> str:
        return f"PMap({self.to_dict()!r})"


EMPTY_PMAP: PMap = PMap()

_MISSING = object()


def changed_keys(old: PMap, new: PMap) -> set:
    """Keys added, removed or re-valued between two maps.

    Fast when ``new`` was derived from ``old`` by updates (shared buckets are
    skipped by identity); exact in any case (values compared with ``==``).
    """
    if old is new:
        return set()
    out: set = set()
    ob, nb = old._buckets, new._buckets
    if len(ob) == len(nb):
        pairs = zip(ob, nb)
    else:
        pairs = iter([(old.to_dict(), new.to_dict())])
    for x, y in pairs:
        if x is y:
            continue
        for k, v in x.items():
            w = y.get(k, _MISSING)
            if w is not v and (w is _MISSING or w != v):
                out.add(k)
        out.update(k for k in y if k not in x)
    return out


class PMapEvolver(Generic[K, V]):
    """A transient, mutable builder over a PMap; the source map is never touched."""

    __slots__ = ("_source", "_buckets", "_owned", "_len")

    def __init__(self, source: PMap[K, V]) -> None:
        self._source = source
        self._buckets: list[dict] | None = None  # copied lazily on the first write
        self._owned: set[int] = set()
        self._len = source._len

    def _view(self) -> tuple[dict, ...] | list[dict]:
        return self._buckets if self._buckets is not None else self._source._buckets

    def get(self, key: K, default: Any = None) -> Any:
        b = self._view()
        return b[hash(key) % len(b)].get(key, default)

    def __getitem__(self, key: K) -> V:
        b = self._view()
        return b[hash(key) % len(b)][key]

    def __contains__(self, key: object) -> bool:
        b = self._view()
        return key in b[hash(key) % len(b)]

    def __len__(self) -> int:
        return self._len

    def _writable(self, key: object) -> dict:
        if self._buckets is None:
            self._buckets = list(self._source._buckets)
        b = self._buckets
        i = hash(key) % len(b)
        if i not in self._owned:
            b[i] = dict(b[i])
            self._owned.add(i)
        return b[i]

    def __setitem__(self, key: K, value: V) -> None:
        bucket = self._writable(key)
        if key not in bucket:
            self._len += 1
        bucket[key] = value
        nb = len(self._buckets)  # type: ignore[arg-type]
        if self._len > nb * nb:
            self._rehash(nb * 4)

    def __delitem__(self, key: K) -> None:
        if key not in self:
            raise KeyError(key)
        bucket = self._writable(key)
        del bucket[key]
        self._len -= 1

    def discard(self, key: K) -> None:
        if key in self:
            del self[key]

    def _rehash(self, nbuckets: int) -> None:
        fresh: list[dict] = [{} for _ in range(nbuckets)]
        for bucket in self._buckets:  # type: ignore[union-attr]
            for k, v in bucket.items():
                fresh[hash(k) % nbuckets][k] = v
        self._buckets = fresh
        self._owned = set(range(nbuckets))

    def persistent(self) -> PMap[K, V]:
        if self._buckets is None:
            return self._source
        sealed = PMap(tuple(self._buckets), self._len)
        # later writes through this evolver must not touch the sealed map
        self._source = sealed
        self._buckets = None
        self._owned = set()
        return sealed


# ---------------------------------------------------------------- entries


class Subscription(NamedTuple):
    """A dependency an instance subscribed to at run time (``DependencySubscribed``)."""

    dependency: str
    origin: str  # "explicit" | "learned"
    ts: int  # broker timestamp (ms) of the subscription record


class Instance(NamedTuple):
    reg: InstanceRegistered
    ts: int  # broker timestamp (ms) of the registration record
    # run-time subscriptions, sorted by dependency, none of them also declared in reg.depends_on
    subscriptions: tuple[Subscription, ...] = ()

    def dependencies(self) -> tuple[str, ...]:
        """The instance's closure roots: declared (``depends_on``) and subscribed, sorted."""
        if not self.subscriptions:
            return tuple(sorted(self.reg.depends_on))
        return tuple(sorted({*self.reg.depends_on, *(s.dependency for s in self.subscriptions)}))

    def subscription(self, dependency: str) -> Subscription | None:
        for sub in self.subscriptions:
            if sub.dependency == dependency:
                return sub
        return None


class Health(NamedTuple):
    status: str  # "unhealthy" | "draining" ("healthy" is the default and not stored)
    ts: int  # broker timestamp (ms) of the health record


class ServiceMeta(NamedTuple):
    protocol: str
    port: int  # the app port of the latest registration (the TCP outbound port scheme uses it)
    ts: int
    key: str  # instance key of that registration (tie-break for equal timestamps)
    # the trust domain of that registration's sidecar (None: plaintext); its callers dial it over mTLS
    trust_domain: str | None = None


@dataclass(frozen=True, slots=True, eq=True)
class MeshState:
    instances: PMap[str, Instance]
    health: PMap[str, Health]
    services: PMap[str, ServiceMeta]
    route_rules: PMap[str, RouteRuleUpserted]
    policies: PMap[str, DestinationPolicyUpserted]
    revisions: PMap[str, int]
    access: PMap[str, AccessPolicyUpserted]
    # derived (rebuilt by state_from_bytes, never serialized)
    by_service: PMap[str, frozenset[str]]
    nodes: PMap[str, frozenset[str]]
    subset_users: PMap[str, frozenset[str]]
    callers: PMap[str, frozenset[str]]

    def caller_services(self, service: str) -> frozenset[str]:
        """The services with a registered instance that depends on ``service`` (declared or subscribed)."""
        keys = self.callers.get(service)
        if not keys:
            return frozenset()
        return frozenset(self.instances[k].reg.service for k in keys)

    def effective_health(self, key: str) -> str:
        """The health that applies to the instance under ``key``.

        A health record applies only if it was logged at or after the
        instance's registration; a (re-)registration resets to "healthy".
        """
        h = self.health.get(key)
        if h is None:
            return "healthy"
        inst = self.instances.get(key)
        if inst is not None and h.ts < inst.ts:
            return "healthy"
        return h.status

    def node_instance(self, node_id: str) -> Instance | None:
        """The instance a node stands for: the latest registration claiming the node id."""
        keys = self.nodes.get(node_id)
        if not keys:
            return None
        best = None
        best_rank: tuple[int, str] | None = None
        for k in keys:
            inst = self.instances[k]
            rank = (inst.ts, k)
            if best_rank is None or rank > best_rank:
                best, best_rank = inst, rank
        return best


_EMPTY = MeshState(*(EMPTY_PMAP,) * 11)


def empty_state() -> MeshState:
    return _EMPTY


STATE_FIELDS = tuple(f.name for f in fields(MeshState))


def same_state(a: MeshState, b: MeshState) -> bool:
    """True if ``b`` is ``a`` unchanged: the fold shares every map it did not change, so identity is enough."""
    return a is b or all(getattr(a, f) is getattr(b, f) for f in STATE_FIELDS)


def rule_users(rule: RouteRuleUpserted) -> dict[str, frozenset[str]]:
    """service -> subsets of it that a route rule names (its subset references)."""
    used: dict[str, set[str]] = {}
    for route in rule.routes:
        for d in route.destinations:
            if d.subset is not None:
                used.setdefault(d.service or rule.host, set()).add(d.subset)
    return {s: frozenset(v) for s, v in used.items()}


# ---------------------------------------------------------------- serialization

_FORMAT = 1


def _dump_model(m: Any) -> Any:
    return m.model_dump(mode="json")


def _instance_row(i: Instance) -> dict:
    row: dict[str, Any] = {"reg": _dump_model(i.reg), "ts": i.ts}
    if i.subscriptions:  # absent when empty: snapshots without subscriptions keep their bytes
        row["subs"] = [list(sub) for sub in i.subscriptions]
    return row


def _instance_from_row(v: dict) -> Instance:
    subs = tuple(Subscription(*sub) for sub in v.get("subs", ()))
    return Instance(InstanceRegistered.model_validate(v["reg"]), v["ts"], subs)


def _meta_row(m: ServiceMeta) -> list:
    row = [m.protocol, m.port, m.ts, m.key]
    if m.trust_domain is not None:  # absent for plaintext services: older snapshots keep their bytes
        row.append(m.trust_domain)
    return row


def _rows(pmap: PMap, enc: Callable[[Any], Any]) -> list:
    """A map's entries as ``[key, enc(value)]``, sorted by key."""
    return [[k, enc(v)] for k, v in sorted(pmap.items(), key=lambda kv: kv[0])]


def _health_row(h: Health) -> list:
    return [h.status, h.ts]


def _same(value: Any) -> Any:
    return value


class RowMemo:
    """What ``state_to_bytes`` serialized of a state, kept for its next call on a later state of the same
    history (the live projector's checkpoints): a checkpoint then serializes only the maps that changed since
    the last one, and of the instances only the registrations that changed. Most events are health
    transitions, which leave every other map as it was; 10,000 instances: 0.14 of the 0.15 CPU-s of a
    checkpoint were the registrations' ``model_dump``; 100,000: 0.62 CPU-s with the rows kept, most of it
    walking and sorting maps that had not changed.

    Two levels, both keyed by identity, both safe because the fold never changes a value in place (a change
    makes a new map, and a new ``Instance`` for a changed registration): a map's whole section, for the very
    map serialized last under that name; else, for ``instances``, each row by its ``Instance``. The memo holds
    every object it keys (an id stays unique while its object lives) and, after each call, only what the last
    state held. Sections and rows are ``orjson.Fragment``s of the bytes ``orjson.dumps(...,
    option=OPT_SORT_KEYS)`` gives, which the sorted-keys dump of the whole document inserts as they are: the
    same bytes as without the memo (tested).
    """

    __slots__ = ("_rows", "_sections")

    def __init__(self) -> None:
        self._rows: dict[int, tuple[Instance, orjson.Fragment]] = {}
        self._sections: dict[str, tuple[PMap, orjson.Fragment]] = {}  # name -> (the map, its serialized rows)

    def section(self, name: str, pmap: PMap, enc: Callable[[Any], Any]) -> orjson.Fragment:
        kept = self._sections.get(name)
        if kept is not None and kept[0] is pmap:
            return kept[1]
        rows = self._instance_rows(pmap) if name == "instances" else _rows(pmap, enc)
        fragment = orjson.Fragment(orjson.dumps(rows, option=orjson.OPT_SORT_KEYS))
        self._sections[name] = (pmap, fragment)
        return fragment

    def _instance_rows(self, instances: PMap) -> list:
        old, new = self._rows, {}
        out = []
        for key, inst in sorted(instances.items(), key=lambda kv: kv[0]):
            hit = old.get(id(inst))
            if hit is None or hit[0] is not inst:
                hit = (inst, orjson.Fragment(orjson.dumps(_instance_row(inst), option=orjson.OPT_SORT_KEYS)))
            new[id(inst)] = hit
            out.append([key, hit[1]])
        self._rows = new
        return out


def state_to_bytes(state: MeshState, memo: RowMemo | None = None) -> bytes:
    """Deterministic bytes of the primary maps (the indexes are derived). ``memo``: the same bytes, reusing
    what an earlier call serialized of the maps and registrations that did not change since."""

    def section(name: str, pmap: PMap, enc: Callable[[Any], Any]) -> Any:
        return _rows(pmap, enc) if memo is None else memo.section(name, pmap, enc)

    doc = {
        "format": _FORMAT,
        "instances": section("instances", state.instances, _instance_row),
        "health": section("health", state.health, _health_row),
        "services": section("services", state.services, _meta_row),
        "route_rules": section("route_rules", state.route_rules, _dump_model),
        "policies": section("policies", state.policies, _dump_model),
        "revisions": section("revisions", state.revisions, _same),
    }
    if state.access:  # absent when empty: snapshots without access policies keep their bytes
        doc["access"] = section("access", state.access, _dump_model)
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def state_from_bytes(data: bytes) -> MeshState:
    doc = orjson.loads(data)
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ValueError(f"not a meshlog state snapshot of format {_FORMAT}")
    # from_dict: each map built in place at its final size (an evolver would copy-on-write bucket by bucket)
    instances = PMap.from_dict({k: _instance_from_row(v) for k, v in doc["instances"]})
    health = PMap.from_dict({k: Health(v[0], v[1]) for k, v in doc["health"]})
    services = PMap.from_dict({k: ServiceMeta(*v) for k, v in doc["services"]})
    route_rules = PMap.from_dict({k: RouteRuleUpserted.model_validate(v) for k, v in doc["route_rules"]})
    policies = PMap.from_dict({k: DestinationPolicyUpserted.model_validate(v) for k, v in doc["policies"]})
    revisions = PMap.from_dict({k: v for k, v in doc["revisions"]})
    access = PMap.from_dict({k: AccessPolicyUpserted.model_validate(v) for k, v in doc.get("access", ())})
    return with_indexes(instances, health, services, route_rules, policies, revisions, access)


def with_indexes(
    instances: PMap[str, Instance],
    health: PMap[str, Health],
    services: PMap[str, ServiceMeta],
    route_rules: PMap[str, RouteRuleUpserted],
    policies: PMap[str, DestinationPolicyUpserted],
    revisions: PMap[str, int],
    access: PMap[str, AccessPolicyUpserted] = EMPTY_PMAP,
) -> MeshState:
    """A state from its primary maps, with the derived indexes rebuilt."""
    by_service: dict[str, set[str]] = {}
    nodes: dict[str, set[str]] = {}
    callers: dict[str, set[str]] = {}
    for key, inst in instances.items():
        by_service.setdefault(inst.reg.service, set()).add(key)
        if inst.reg.node_id is not None:
            nodes.setdefault(inst.reg.node_id, set()).add(key)
        for dep in inst.dependencies():
            callers.setdefault(dep, set()).add(key)
    users: dict[str, set[str]] = {}
    for host, rule in route_rules.items():
        for service in rule_users(rule):
            users.setdefault(service, set()).add(host)
    frozen = lambda d: PMap.from_dict({k: frozenset(v) for k, v in d.items()})  # noqa: E731
    return MeshState(
        instances=instances,
        health=health,
        services=services,
        route_rules=route_rules,
        policies=policies,
        revisions=revisions,
        access=access,
        by_service=frozen(by_service),
        nodes=frozen(nodes),
        subset_users=frozen(users),
        callers=frozen(callers),
    )
