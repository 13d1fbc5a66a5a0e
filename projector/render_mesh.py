"""``render_all``: every node's view of the mesh, rendered from scratch or incrementally.

``render_all(state)`` renders each distinct resource once and serializes it
deterministically (its version is the hash of its render inputs,
``projector.versioning``: a resource whose inputs did not move is not built
again; ``bodies=False`` names every version and builds nothing);
``render_all(state, previous=rm)`` gives exactly the same result but
re-renders only what the state change can have touched (the states are
compared map by map, skipping the structure they share), and reports what
changed relative to ``previous``: the live projector folds a batch, calls
``render_all(state, previous=last)`` and publishes only ``changed``/``removed``
resources and ``changed_nodes``/``removed_nodes`` memberships.

What a resource depends on (the incremental rules):

- Cluster ``<svc>`` / ``<svc>|<subset>``: the service's protocol (its
  ``ServiceMeta``) and destination policy.
- ClusterLoadAssignment of those: the service's instances and their health,
  and the policy (subset labels).
- API RouteConfiguration ``<svc>``: the service's protocol and served rule.
- A node's view (which names it holds), its route configuration and TCP
  listeners: its instance, and for each dependency its protocol/port and
  served rule. Its outbound listener and local cluster: its instance only.
  Its inbound listener: its instance, and, for a TCP sidecar with a mesh
  identity (network RBAC), the set of services calling its service (the
  ``callers`` index) and its service's access policy. The inbound route of
  an HTTP/gRPC sidecar with a mesh identity (its RBAC policy): its instance,
  those callers and that access policy.
- A cluster also depends on its service's trust domain (mTLS to it).
- Whether a rule is served: the rule, and which services are known (a set
  that only grows).

``previous`` is never modified; both results stay valid -- unless the caller
gives it up (``consume_previous=True``, the live projector, which keeps only
its latest render): the step then takes ``previous``'s maps over and changes
them in place, so a render costs what changed, not a copy of every map of the
mesh (about 4 ms per batch at 10,000 nodes, ten times that at 100,000), and
``previous`` must not be read again. Both give the same result (tested).

Scoped renders (``scope``: a ``projector.sharding.Ownership``, a worker of
``projector run --group``; None, or one owning every shard: unscoped, as
replay and the single projector render). The scope is part of the result,
``render_all(state, previous=rm, scope=s)`` starts from ``rm`` whatever
``rm``'s scope, and the result has scope ``s``. A scoped render holds:

- the version of every shared resource some node holds (cluster, endpoints,
  API listener and route of a service: their versions go into the
  memberships the worker owns, whichever shard owns the resource), named
  from its render inputs (``Renderer.shared_inputs``) as the unscoped render
  names it; its body (``Renderer.build_shared``, serialized) only if the
  scope owns the resource's shard (``Ownership.owns_resource``). So
  ``versions`` covers every held shared resource, ``resources`` the owned
  bodies only;
- the per-node resources (``naming.is_per_node``), membership and owner of
  the nodes the scope owns only: for them, the same as the unscoped render;
  a node it does not own costs its view's names only (kept, as shared keys,
  in the index: the holders and dependents indexes stay whole, so shared
  resources and the memberships of owned nodes stay right);
- ``problems``: the shared resources' and rules', and the owned nodes'
  (with ``endpoint_versions=False``: the endpoints of its own shards only).

So for every key the scope owns (``Ownership.owns_node``/``owns_resource``)
a scoped render equals the unscoped render of the same state, and its change
sets equal the unscoped render's (from an unscoped ``previous`` of the same
state) restricted to those keys, except when the scope changed since
``previous``: a node the scope gained is rendered whole and reported in
``changed_nodes``, its per-node resources in ``changed`` (they are new to
this render: ``publisher.plan_takeover`` republishes them anyway), as are the
shared bodies of shards it gained; a node it lost leaves the render silently
(not in ``removed``/``removed_nodes``: its records are another worker's to
write, not gone), and so do the shared bodies of shards it lost (their
versions stay). ``changed`` holds the keys whose version is new or changed
(a shared resource's inputs may change with equal bytes: it is republished,
harmlessly) and the bodies the render did not hold before.

Endpoints named at the latest (``endpoint_versions=False``, the live
projector): a membership names each ClusterLoadAssignment at
``versioning.LATEST``, as its record on the view topic does
(``publisher.on_the_wire``), instead of at its version. A ClusterLoadAssignment
is a leaf (nothing names its version), so an endpoint change then moves its
body only: no holder's membership changes, and a scoped render names the
version of (and builds) only the endpoints of its own shards, since nothing
it writes names the others'. Otherwise the render is the one with versions:
the same resources and versions (a scoped one: but for other shards'
endpoints), memberships equal to ``on_the_wire`` of its memberships, and
``changed_nodes`` the nodes whose membership moved on the wire (tested). Replay
keeps the versions (``endpoint_versions=True``, the default): it reports what
each node was told, an endpoint's version included.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from events import types as t
from projector import naming
from projector.render_view import Renderer
from projector.state import MeshState, changed_keys, empty_state
from projector.typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE, TYPE_URLS
from projector.versioning import LATEST

if TYPE_CHECKING:  # projector.sharding imports aiokafka (events.shard_group): replay must not pay for it
    from projector.sharding import Ownership

ResourceKey = tuple[str, str]  # (type_url, name)


@dataclass(frozen=True, slots=True)
class _Index:
    """Bookkeeping that lets the next render be incremental."""

    node_deps: dict[str, tuple[str, ...]] = field(default_factory=dict)  # node -> services its view depends on
    dependents: dict[str, frozenset[str]] = field(default_factory=dict)  # service -> nodes depending on it
    holders: dict[ResourceKey, frozenset[str]] = field(default_factory=dict)  # shared resource -> nodes holding it
    shared_by_service: dict[str, frozenset[ResourceKey]] = field(default_factory=dict)
    served: dict[str, t.RouteRuleUpserted | None] = field(default_factory=dict)  # host with a rule -> served rule
    rule_problems: dict[str, str] = field(default_factory=dict)
    res_problems: dict[ResourceKey, tuple[str, ...]] = field(default_factory=dict)
    node_problems: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # scoped renders: node the scope does not own -> the shared resources its view names (an owned node's
    # are in its membership)
    held: dict[str, frozenset[ResourceKey]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RenderedMesh:
    """Every node's view. Dict iteration order is unspecified: sort where order matters."""

    # (type_url, name) -> SerializeToString(deterministic=True); a scoped render: the bodies of its keys only
    resources: dict[ResourceKey, bytes]
    membership: dict[str, dict[str, dict[str, str]]]  # node -> type_url -> name -> version
    # (type_url, name) -> version (``projector.versioning``): every resource some node in scope holds, and
    # every shared one some node holds (a scoped render names those without their bodies)
    versions: dict[ResourceKey, str]
    problems: tuple[str, ...]  # sorted: what was left out of the config, and why
    # node -> (service, instance_id) of the registration the node stands for: who owns the node
    # (published with its membership; the gateway authorizes streams by it)
    owners: dict[str, tuple[str, str]] = field(default_factory=dict)
    # relative to ``previous`` (for a render from scratch: everything rendered)
    changed: frozenset[ResourceKey] = frozenset()  # new, or new bytes
    removed: frozenset[ResourceKey] = frozenset()
    changed_nodes: frozenset[str] = frozenset()  # new, or membership names/versions or owner changed
    removed_nodes: frozenset[str] = frozenset()
    state: MeshState = field(default_factory=empty_state, repr=False, compare=False)
    # the keys this render covers (None: every node); see the module docstring
    scope: Ownership | None = field(default=None, repr=False, compare=False)
    # False: versions only, no body built (``resources`` is empty); see ``render_all``
    bodies: bool = field(default=True, repr=False, compare=False)
    # False: memberships name endpoints at ``LATEST`` (see the module docstring)
    endpoint_versions: bool = field(default=True, repr=False, compare=False)
    _index: _Index = field(default_factory=_Index, repr=False, compare=False)


# the render of nothing, by (bodies, endpoint_versions)
_EMPTY = {(b, e): RenderedMesh(resources={}, membership={}, versions={}, problems=(), bodies=b, endpoint_versions=e)
          for b in (True, False) for e in (True, False)}


def _only_subscriptions_changed(old: MeshState, new: MeshState, key: str) -> bool:
    a, b = old.instances.get(key), new.instances.get(key)
    return a is not None and b is not None and a.reg is b.reg and a.ts == b.ts


def _service_of(key: ResourceKey) -> str | None:
    type_url, name = key
    if type_url in (CLUSTER, ENDPOINT):
        parsed = naming.parse_cluster(name)
        return None if parsed is None else parsed[0]
    return None if naming.is_per_node(name) else name


def _own_resources(node: str) -> frozenset[ResourceKey]:
    """A node's resources that depend on its own instance only."""
    return frozenset(
        (
            (LISTENER, naming.outbound_listener(node)),
            (LISTENER, naming.inbound_listener(node)),
            (CLUSTER, naming.local_cluster(node)),
        )
    )


def _thawed(index: dict, thawed: set, key):
    """``index[key]`` as a set this step owns (an empty one if absent), copied from the shared frozenset the
    first time; ``thawed`` notes the keys already copied."""
    if key in thawed:
        got = index.get(key)
        if got is None:
            got = index[key] = set()
        return got
    got = index[key] = set(index.get(key, ()))
    thawed.add(key)
    return got


def _owns_all(scope: Ownership) -> bool:
    return scope.everything or scope.shards >= frozenset(range(scope.partitions))


def _scope_key(scope: Ownership | None) -> tuple[frozenset[int], int] | None:
    return None if scope is None else (scope.shards, scope.partitions)


def render_all(state: MeshState, previous: RenderedMesh | None = None, scope: Ownership | None = None,
               bodies: bool | None = None, consume_previous: bool = False,
               endpoint_versions: bool | None = None) -> RenderedMesh:
    """Every node's view of ``state`` (see the module docstring).

    ``bodies=False``: names and versions only; no message is built or serialized (``resources`` stays
    empty), for readers that need what each node was told but not the bytes (replay's documents and walks).
    An incremental render keeps its ``previous``'s choice (``None``: that one, else bodies); asking for the
    other is a ValueError.

    ``endpoint_versions=False``: memberships name endpoints at ``LATEST`` (module docstring); kept and checked
    like ``bodies``.

    ``consume_previous=True``: ``previous`` is given up, its maps become the result's (changed in place, not
    copied); the caller must not read ``previous`` again, even if this raises.
    """
    if bodies is None:
        bodies = True if previous is None else previous.bodies
    if endpoint_versions is None:
        endpoint_versions = True if previous is None else previous.endpoint_versions
    prev = previous if previous is not None else _EMPTY[(bodies, endpoint_versions)]
    if prev.bodies != bodies:
        raise ValueError(f"render_all(bodies={bodies}) from a previous render with bodies={prev.bodies}")
    if prev.endpoint_versions != endpoint_versions:
        raise ValueError(f"render_all(endpoint_versions={endpoint_versions}) from a previous render with "
                         f"endpoint_versions={prev.endpoint_versions}")
    if scope is not None and _owns_all(scope):
        scope = None  # a worker owning every shard renders like one alone
    # a render from scratch always builds maps of its own: the empty render's are shared by every caller (and a
    # later ``consume_previous`` render changes its previous's maps in place)
    if previous is not None and prev.state is state and _scope_key(prev.scope) == _scope_key(scope):
        return replace(prev, changed=frozenset(), removed=frozenset(), changed_nodes=frozenset(), removed_nodes=frozenset(),
                       scope=scope)
    return _Step(prev, state, scope, consume=consume_previous and previous is not None).run()


class _Step:
    def __init__(self, prev: RenderedMesh, state: MeshState, scope: Ownership | None, consume: bool = False) -> None:
        self.prev = prev
        self.state = state
        self.scope = scope
        self.owns = (lambda node: True) if scope is None else scope.owns_node
        self.bodies = prev.bodies
        owns_shard = (lambda key: True) if scope is None else scope.owns_resource
        self.owns_body = owns_shard if prev.bodies else (lambda key: False)
        self.endpoint_versions = prev.endpoint_versions
        # whether this render names the version of a shared endpoint: always, but at the latest in a scoped
        # render (only the endpoints of its shards: no membership it writes names another's version)
        self.names_endpoint = owns_shard if not prev.endpoint_versions else (lambda key: True)
        self.r = Renderer(state)
        idx = prev._index
        own = (lambda d: d) if consume else dict  # ``consume``: ``previous``'s maps are this step's to change
        self.resources = own(prev.resources)
        self.versions = own(prev.versions)
        self.membership = own(prev.membership)
        self.owners = own(prev.owners)
        self.node_deps = own(idx.node_deps)
        self.dependents = own(idx.dependents)
        self.holders = own(idx.holders)
        self.shared_by_service = own(idx.shared_by_service)
        self.served = own(idx.served)
        self.rule_problems = own(idx.rule_problems)
        self.res_problems = own(idx.res_problems)
        self.node_problems = own(idx.node_problems)
        self.held = own(idx.held)
        # ``consume``: whether each key whose version this step set was named before it (``_drop`` reports a
        # removal only for those; ``previous.versions`` is this step's own map then, so it cannot tell)
        self._named_before: dict[ResourceKey, bool] | None = {} if consume else None
        # The index's sets are shared with ``previous`` (frozen): one this step changes is copied into a set
        # of its own once (its key noted here), grown or shrunk in place, and frozen again at the end, so a
        # resource gaining n holders costs O(n), not a new frozenset per holder (O(n²)).
        self._thawed_holders: set[ResourceKey] = set()
        self._thawed_services: set[str] = set()
        self._thawed_dependents: set[str] = set()
        self.changed: set[ResourceKey] = set()
        self.removed: set[ResourceKey] = set()
        self.changed_nodes: set[str] = set()
        self.removed_nodes: set[str] = set()

    # ------------------------------------------------ small helpers

    def _put(self, key: ResourceKey, inputs: tuple) -> bool:
        """Name a resource's version from its render inputs; build its body if this render keeps it (a
        per-node one whenever it keeps bodies, its node being in scope; a shared one only if the scope owns
        its shard) and the version is new or the body is not held yet. True if its version is new or changed."""
        version = self.r.inputs_version(key[0], key[1], inputs)
        new_version = self.versions.get(key) != version
        if new_version:
            if self._named_before is not None and key not in self._named_before:
                self._named_before[key] = key in self.versions
            self.versions[key] = version
            self.changed.add(key)
            self.removed.discard(key)
        keeps_body = self.bodies if naming.is_per_node(key[1]) else self.owns_body(key)
        if keeps_body and (new_version or key not in self.resources):
            self.resources[key] = self.r.build(key[0], key[1], inputs).SerializeToString(deterministic=True)
            self.changed.add(key)
        return new_version

    def _note_problems(self, key: ResourceKey, problems: tuple[str, ...]) -> None:
        if problems:
            self.res_problems[key] = problems
        else:
            self.res_problems.pop(key, None)

    def _drop(self, key: ResourceKey) -> None:
        if self._named_before is None:
            named_before = key in self.prev.versions
        else:  # noted here too: a key dropped, put again and dropped in one step was still named before it
            named_before = self._named_before.setdefault(key, key in self.versions)
        if self.versions.pop(key, None) is not None:
            self.resources.pop(key, None)
            self.changed.discard(key)
            if named_before:
                self.removed.add(key)
        self.res_problems.pop(key, None)

    def _acquire(self, key: ResourceKey, node: str, fresh: set[ResourceKey]) -> None:
        new_key = key not in self.holders
        _thawed(self.holders, self._thawed_holders, key).add(node)
        if new_key:
            svc = _service_of(key)
            if svc is not None:
                _thawed(self.shared_by_service, self._thawed_services, svc).add(key)
            fresh.add(key)

    def _release(self, key: ResourceKey, node: str, released: set[ResourceKey]) -> None:
        cur = self.holders.get(key)
        if cur is None or node not in cur:
            return
        if len(cur) == 1:
            del self.holders[key]
            svc = _service_of(key)
            if svc is not None:
                rest = _thawed(self.shared_by_service, self._thawed_services, svc)
                rest.discard(key)
                if not rest:
                    del self.shared_by_service[svc]
            released.add(key)
        else:
            _thawed(self.holders, self._thawed_holders, key).discard(node)

    def _set_dependents(self, node: str, deps: tuple[str, ...] | None) -> None:
        dependents, thawed = self.dependents, self._thawed_dependents
        for svc in self.node_deps.pop(node, ()):
            rest = _thawed(dependents, thawed, svc)
            rest.discard(node)
            if not rest:
                del dependents[svc]
        if deps:
            self.node_deps[node] = deps
            for svc in deps:
                _thawed(dependents, thawed, svc).add(node)

    def _freeze_index(self) -> None:
        """The sets this step thawed, frozen again (the index is shared with the next render)."""
        for index, thawed in ((self.holders, self._thawed_holders), (self.shared_by_service, self._thawed_services),
                              (self.dependents, self._thawed_dependents)):
            for key in thawed:
                got = index.get(key)
                if got is not None:
                    index[key] = frozenset(got)
            thawed.clear()

    def _rescope(self) -> set[str]:
        """The scope changed since ``previous``: the records of the nodes it lost leave the render (their
        shared keys move to ``held``); returns the nodes it gained."""
        prev_scope = self.prev.scope
        for node in [n for n in self.membership if not self.owns(n)]:
            m = self.membership.pop(node)
            self.owners.pop(node, None)
            self.node_problems.pop(node, None)
            shared = set()
            for type_url, named in m.items():
                for name in named:
                    if naming.is_per_node(name):
                        self.resources.pop((type_url, name), None)
                        self.versions.pop((type_url, name), None)
                    else:
                        shared.add((type_url, name))
            if shared:
                self.held[node] = frozenset(shared)
        # shared bodies follow their own shards: the lost ones leave (their versions stay: memberships
        # name them), the gained ones are built below (``_put``), like a new body
        for key in [k for k in self.resources if not naming.is_per_node(k[1]) and not self.owns_body(k)]:
            del self.resources[key]
        if not self.endpoint_versions:  # at the latest, an endpoint of a lost shard leaves its version too
            for key in [k for k in self.versions if k[0] == ENDPOINT and not self.names_endpoint(k)]:
                del self.versions[key]
        if prev_scope is None:
            return set()  # it owned every node
        return {n for n in self.state.nodes if self.owns(n) and not prev_scope.owns_node(n)}

    # ------------------------------------------------ the step

    def run(self) -> RenderedMesh:
        old, new, r = self.prev.state, self.state, self.r

        # 1. what changed in the model
        regs_changed = changed_keys(old.instances, new.instances)
        health_changed = changed_keys(old.health, new.health)
        # what rendering reads of a ServiceMeta is its protocol and port (ts/key only pick the latest)
        meta_changed = {
            svc
            for svc in changed_keys(old.services, new.services)
            if (m0 := old.services.get(svc)) is None
            or (m1 := new.services.get(svc)) is None
            or (m0.protocol, m0.port, m0.trust_domain) != (m1.protocol, m1.port, m1.trust_domain)
        }
        policies_changed = changed_keys(old.policies, new.policies)
        rules_changed = changed_keys(old.route_rules, new.route_rules)
        dirty_nodes = set(changed_keys(old.nodes, new.nodes))
        endpoint_services = {naming.service_of_key(k) for k in health_changed}
        # a run-time subscription changes only the subscriber's dependencies: not its endpoints, and not
        # the resources that depend on its own instance only (like a dependency's change, below); so does
        # a change of who may call a secure HTTP sidecar (its inbound route)
        subscribers: set[str] = set()
        for key in regs_changed:
            only_subscriptions = _only_subscriptions_changed(old, new, key)
            if not only_subscriptions:
                endpoint_services.add(naming.service_of_key(key))
            for s in (old, new):
                inst = s.instances.get(key)
                if inst is not None and inst.reg.node_id is not None:
                    (subscribers if only_subscriptions else dirty_nodes).add(inst.reg.node_id)

        # 2. which hosts' served rule changed
        recheck = set(rules_changed)
        if any(svc not in new.services for svc in meta_changed):
            # known services only grow along a log; a ``previous`` from another history may know more
            recheck |= set(self.served) | set(new.route_rules.keys())
        elif any(svc not in old.services for svc in meta_changed):
            recheck |= set(self.rule_problems)  # an unknown destination may be known now
        served_changed = set()
        for host in recheck:
            self.rule_problems.pop(host, None)
            now = r.served_rule(host)
            if host in r.rule_problems:
                self.rule_problems[host] = r.rule_problems[host]
            if self.served.get(host) is not now:
                served_changed.add(host)
            if host in new.route_rules:
                self.served[host] = now
            else:
                self.served.pop(host, None)
        # a secure sidecar's inbound listener admits its service's callers: re-render the nodes of a
        # service whose set of calling services or access policy changed
        admitted_changed = set(changed_keys(old.access, new.access))
        for svc in changed_keys(old.callers, new.callers):
            if old.caller_services(svc) != new.caller_services(svc):
                admitted_changed.add(svc)
        for svc in admitted_changed:
            for key in new.by_service.get(svc, ()):
                reg = new.instances[key].reg
                if reg.node_id is not None and reg.sidecar is not None and reg.sidecar.trust_domain is not None:
                    # HTTP/gRPC: the policy is in the inbound route (re-rendered like a dependency's change);
                    # TCP: in the inbound listener, one of the node's own resources
                    (dirty_nodes if reg.protocol == "tcp" else subscribers).add(reg.node_id)
        gained: set[ResourceKey] = set()  # shared keys new to this render's scope: bodies, endpoints at the latest
        if _scope_key(self.prev.scope) != _scope_key(self.scope):
            dirty_nodes |= self._rescope()  # the nodes it gained: rendered whole, like a new node
            gained = {k for k in self.holders if k not in self.resources and self.owns_body(k)}
            if not self.endpoint_versions:  # named at the latest, a gained shard's endpoints get their versions
                gained.update(k for k in self.holders
                              if k[0] == ENDPOINT and k not in self.versions and self.names_endpoint(k))
        # a node whose own instance changed is re-rendered whole; one whose dependencies changed
        # keeps its inbound/outbound listeners and local cluster (they depend on its instance only)
        self_dirty = set(dirty_nodes)
        dirty_nodes |= subscribers
        for svc in meta_changed | served_changed:
            dirty_nodes |= self.dependents.get(svc, frozenset())

        # 3. re-view dirty nodes; the own resources of those in scope are re-rendered right away (a node
        # out of scope costs its view's names: the holders of shared resources stay whole)
        fresh: set[ResourceKey] = set()
        released: set[ResourceKey] = set()
        views: dict[str, dict[str, tuple[str, ...]]] = {}
        owners_now: dict[str, tuple[str, str]] = {}
        for node in sorted(dirty_nodes):
            owned = self.owns(node)
            old_m = self.membership.get(node)  # as in ``previous`` (only ``_rescope`` has changed it yet)
            if old_m is not None:
                old_keys = {(u, n) for u, named in old_m.items() for n in named}
            else:
                old_keys = set(self.held.get(node, ()))
            inst = new.node_instance(node)
            self.node_problems.pop(node, None)
            r.take_problems()
            if inst is None:
                new_keys: set[ResourceKey] = set()
                self._set_dependents(node, None)
            else:
                view = r.view(node)
                if owned:
                    views[node] = view
                    owners_now[node] = (inst.reg.service, inst.reg.instance_id)
                new_keys = {(u, n) for u, names in view.items() for n in names}
                self._set_dependents(node, inst.dependencies())
            for key in old_keys - new_keys:
                if naming.is_per_node(key[1]):
                    self._drop(key)
                else:
                    self._release(key, node, released)
            if not owned:
                shared = frozenset(key for key in new_keys if not naming.is_per_node(key[1]))
                for key in shared - old_keys:
                    self._acquire(key, node, fresh)
                if shared:
                    self.held[node] = shared
                else:
                    self.held.pop(node, None)
                r.take_problems()  # its owner reports them
                continue
            self.held.pop(node, None)  # owned now: its membership will hold its names
            own = None if node in self_dirty else _own_resources(node)
            # the view names the node's own resources (``node_resources``: each with its inputs) and the shared
            # ones it holds; a per-node name without inputs would fail below (step 5 finds no version for it)
            per_node = r.node_resources(node)
            assert per_node.keys() <= new_keys, node  # and every per-node resource is in the view
            for key, inputs in per_node.items():
                if own is not None and key in own and key in old_keys:
                    continue
                self._put(key, inputs)
            for key in new_keys:
                if key not in old_keys and key not in per_node:
                    self._acquire(key, node, fresh)
            problems = r.take_problems()
            if problems:
                self.node_problems[node] = problems

        # 4. shared resources whose inputs changed, plus newly held ones
        todo = fresh | gained
        by_service = self.shared_by_service
        for svc in meta_changed | policies_changed:
            todo.update(k for k in by_service.get(svc, ()) if k[0] == CLUSTER)
        for svc in endpoint_services | policies_changed:
            todo.update(k for k in by_service.get(svc, ()) if k[0] == ENDPOINT)
        for svc in meta_changed | served_changed:
            todo.update(k for k in by_service.get(svc, ()) if k[0] == ROUTE)
        moved: dict[str, list[ResourceKey]] = {}  # node out of ``dirty_nodes`` -> its shared keys with new bytes
        at_latest = not self.endpoint_versions
        for key in sorted(todo):
            holders = self.holders.get(key)
            if holders is None:
                continue
            if at_latest and key[0] == ENDPOINT:
                # a leaf named at the latest: its version moves its body only, never a holder's membership
                if self.names_endpoint(key):
                    r.take_problems()
                    inputs = r.shared_inputs(key[0], key[1])
                    assert inputs is not None, key
                    self._note_problems(key, r.take_problems())
                    self._put(key, inputs)
                continue
            r.take_problems()
            inputs = r.shared_inputs(key[0], key[1])
            assert inputs is not None, key
            self._note_problems(key, r.take_problems())
            if self._put(key, inputs):
                membership = self.membership
                for node in holders:
                    if node in dirty_nodes or node not in membership:
                        continue  # rebuilt (or removed) below; or out of scope
                    moved.setdefault(node, []).append(key)
        # the new versions go into each holder's membership at once (a node often holds several of them)
        for node, keys in moved.items():
            m = dict(self.membership[node])
            for type_url in {k[0] for k in keys}:
                m[type_url] = dict(m[type_url])
            for key in keys:
                m[key[0]][key[1]] = self.versions[key]
            self.membership[node] = m
            self.changed_nodes.add(node)
        for key in released:
            if key not in self.holders:
                self._drop(key)

        # 5. memberships of the dirty nodes in scope
        for node in dirty_nodes:
            if not self.owns(node):
                continue
            view = views.get(node)
            if view is None:
                self.owners.pop(node, None)
                if self.membership.pop(node, None) is not None:
                    self.removed_nodes.add(node)
                continue
            versions = self.versions
            m = {u: (dict.fromkeys(view[u], LATEST) if at_latest and u == ENDPOINT
                     else {n: versions[(u, n)] for n in view[u]}) for u in TYPE_URLS}
            # another instance taking over a node id changes its membership record even with equal names (a dirty
            # owned node's membership and owner are written here only, so ``prev``'s hold the old ones even when
            # this step owns ``prev``'s maps)
            if self.prev.membership.get(node) != m or self.prev.owners.get(node) != owners_now[node]:
                self.changed_nodes.add(node)
            self.membership[node] = m
            self.owners[node] = owners_now[node]

        self._freeze_index()
        problems = set(self.rule_problems.values())
        for group in (self.res_problems, self.node_problems):
            for ps in group.values():
                problems.update(ps)
        return RenderedMesh(
            resources=self.resources,
            membership=self.membership,
            versions=self.versions,
            owners=self.owners,
            problems=tuple(sorted(problems)),
            changed=frozenset(self.changed),
            removed=frozenset(self.removed),
            changed_nodes=frozenset(self.changed_nodes),
            removed_nodes=frozenset(self.removed_nodes),
            state=new,
            scope=self.scope,
            bodies=self.bodies,
            endpoint_versions=self.endpoint_versions,
            _index=_Index(
                node_deps=self.node_deps,
                dependents=self.dependents,
                holders=self.holders,
                shared_by_service=self.shared_by_service,
                served=self.served,
                rule_problems=self.rule_problems,
                res_problems=self.res_problems,
                node_problems=self.node_problems,
                held=self.held,
            ),
        )
