"""Scoped renders (``render_all(state, previous, scope=Ownership)``): a worker of ``projector run --group``
renders the per-node resources and memberships of the nodes it owns only, and the bodies of the shared
resources of its shards; it names the version of every held shared resource (from its render inputs).

For every key its scope owns, a scoped render equals the unscoped one; the workers' plans built from scoped
renders (incremental, across takeovers and revocations) are the plans they would build from unscoped
renders, record for record.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projector import naming
from projector import publisher as pub
from projector.fold import fold_many
from projector.render import CLUSTER, ENDPOINT, LISTENER, render_all
from projector.sharding import Ownership
from projector.state import empty_state
from tests.unit.projector.helpers import Log, fold_log
from tests.unit.projector.test_properties import interleaving, topic_logs

SHARDS = 12


def in_scope(scope: Ownership, key: tuple[str, str], endpoint_versions: bool = True) -> bool:
    """Whose version a scoped render names: every shared resource (but, endpoints named at the latest, the
    endpoints of other shards), the per-node ones of the nodes it owns."""
    node = naming.node_of(key[1])
    if node is None:
        return endpoint_versions or key[0] != ENDPOINT or scope.owns_resource(key)
    return scope.owns_node(node)


def restricted(rm, scope: Ownership):
    """The part of a render a scope covers: (resources, versions, membership, owners); the bodies of its
    shards' keys only (a per-node resource's shard is its node's)."""
    return ({k: v for k, v in rm.resources.items() if scope.owns_resource(k)},
            {k: v for k, v in rm.versions.items() if in_scope(scope, k, rm.endpoint_versions)},
            {n: m for n, m in rm.membership.items() if scope.owns_node(n)},
            {n: o for n, o in rm.owners.items() if scope.owns_node(n)})


def parts(rm):
    return rm.resources, rm.versions, rm.membership, rm.owners


def delta(prev_parts, cur):
    """What a render reports as changed: new versions, and bodies it did not hold (shards gained)."""
    resources, versions, membership, owners = prev_parts
    return ({k for k, v in cur.versions.items() if versions.get(k) != v} | (set(cur.resources) - set(resources)),
            set(versions) - set(cur.versions),
            {n for n, m in cur.membership.items() if membership.get(n) != m or owners.get(n) != cur.owners.get(n)},
            set(membership) - set(cur.membership))


def records(plan: pub.ViewPlan) -> dict:
    return {(topic, key): value for phase in pub.plan_records(plan)
            for topic, key, value, _headers in phase}


shard_sets = st.frozensets(st.integers(0, SHARDS - 1))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_scoped_render_is_the_unscoped_one_for_its_keys_across_scope_changes(data):
    """Incremental scoped renders, the scope changing at random between them (takeovers, revocations, from
    and to unscoped), equal the unscoped render restricted to the scope, and report exactly what changed
    against the previous scoped render restricted to the new scope (gained nodes: new; lost ones: silent)."""
    events = data.draw(interleaving(data.draw(topic_logs())))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=6)))
    endpoint_versions = data.draw(st.booleans())  # False: endpoints named at the latest, as the projector renders
    bodies = data.draw(st.booleans())  # False: names and versions only
    s = empty_state()
    scoped = None
    start = 0
    for cut in [*cuts, len(events)]:
        s, _ = fold_many(s, events[start:cut])
        start = cut
        shards = data.draw(st.one_of(st.none(), shard_sets))
        scope = Ownership(shards, SHARDS)
        full = render_all(s, endpoint_versions=endpoint_versions, bodies=bodies)
        cur = render_all(s, previous=scoped, scope=scope, endpoint_versions=endpoint_versions, bodies=bodies)
        assert parts(cur) == restricted(full, scope)
        assert cur.scope is (None if shards is None or len(shards) == SHARDS else scope)
        assert set(cur.problems) <= set(full.problems)
        prev_parts = restricted(scoped, scope) if scoped is not None else ({}, {}, {}, {})
        assert (set(cur.changed), set(cur.removed), set(cur.changed_nodes), set(cur.removed_nodes)) == delta(
            prev_parts, cur)
        scoped = cur
    # back in time, to a smaller scope: still exact
    first = fold_log(events[: len(events) // 2])[0]
    half = Ownership(frozenset(range(6)), SHARDS)
    assert parts(render_all(first, previous=scoped, scope=half)) == restricted(
        render_all(first, endpoint_versions=endpoint_versions, bodies=bodies), half)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_workers_plan_from_scoped_renders_what_they_would_from_unscoped_ones(data):
    """Two workers splitting the shards, reassigned at random between batches (a shard moves, one worker
    holds all, one is revoked): each worker's plans from its scoped renders equal its plans from unscoped
    renders, record for record (takeovers included), and the records of the two add up to the keys of the
    unscoped render, each from the worker owning it."""
    events = data.draw(interleaving(data.draw(topic_logs())))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=5)))
    s = empty_state()
    unscoped = None
    # the workers name endpoints at the latest, as the projector renders; the reference keeps their versions:
    # the records are the same either way
    workers = [{"rendered": None, "published": pub.PublishedViews(), "shards": frozenset()} for _ in range(2)]
    start = 0
    for cut in [*cuts, len(events)]:
        s, _ = fold_many(s, events[start:cut])
        start = cut
        first = data.draw(shard_sets)
        assignment = [first, frozenset(range(SHARDS)) - first]
        reference = render_all(s) if unscoped is None else render_all(s, previous=unscoped)
        published_keys, published_nodes = {}, {}
        for w, shards in zip(workers, assignment):
            own = Ownership(shards, SHARDS)
            gained = shards - w["shards"]
            incremental = w["rendered"] is not None
            rendered = render_all(s, previous=w["rendered"], scope=own, endpoint_versions=False)
            plan = pub.plan_for_shards(rendered, w["published"], own, gained, incremental)
            ref_plan = pub.plan_for_shards(reference, w["published"], own, gained, unscoped is not None)
            assert records(plan) == records(ref_plan)
            w["published"].apply(plan)
            w.update(rendered=rendered, shards=shards)
            for rk, version in w["published"].resources.items():
                if own.owns_resource(rk):
                    published_keys[rk] = version
            for node, membership in w["published"].membership.items():
                if own.owns_node(node):
                    published_nodes[node] = membership
        unscoped = reference
        # what the owners have published is the unscoped render's view
        assert published_keys == reference.versions
        assert published_nodes == {node: pub.on_the_wire(m) for node, m in reference.membership.items()}


def _mesh() -> Log:
    log = Log()
    for i in range(8):
        log.register("web", f"w{i}", f"10.0.0.{i + 1}", node_id=f"web-{i}", sidecar=(15006, 15001),
                     depends_on=("reviews",))
    log.register("reviews", "r1", "10.0.1.1")
    log.register("reviews", "r2", "10.0.1.2")
    return log


def _half_rendered():
    """The mesh, its unscoped render, and a worker's render owning shards 0-5 (with the nodes they own)."""
    log = _mesh()
    state = fold_log(log.events)[0]
    full = render_all(state)
    own = Ownership(frozenset(range(6)), SHARDS)
    mine = {n for n in full.membership if own.owns_node(n)}
    assert mine and mine != set(full.membership)  # both halves of the split hold nodes
    return log, state, full, own, mine, render_all(state, scope=own)


def test_a_worker_keeps_the_memberships_and_per_node_resources_of_its_nodes_only_and_every_shared_body():
    log, state, full, own, mine, scoped = _half_rendered()
    assert set(scoped.membership) == mine
    assert {naming.node_of(n) for _u, n in scoped.resources if naming.node_of(n) is not None} == mine
    assert {(CLUSTER, "reviews"), (ENDPOINT, "reviews")} <= set(scoped.versions)  # held by nodes of both
    # the bodies of shared resources: only those of its shards (their versions come from their inputs)
    assert {k for k in scoped.resources if naming.node_of(k[1]) is None} == {
        k for k in full.resources if naming.node_of(k[1]) is None and own.owns_resource(k)}
    # a health change moves the endpoints every node holds: only the owned nodes' memberships are rebuilt
    n = len(log.events)
    log.health("reviews", "r2", "unhealthy")
    after = render_all(fold_log(log.events[n:], state)[0], previous=scoped, scope=own)
    assert after.changed == {(ENDPOINT, "reviews")} and after.changed_nodes == mine


def test_gaining_shards_renders_their_nodes_whole_and_losing_them_drops_them_silently():
    log, state, full, own, mine, scoped = _half_rendered()
    everything = own.only(frozenset(range(SHARDS)))
    grown = render_all(state, previous=scoped, scope=everything)
    others = set(full.membership) - mine
    assert grown.changed_nodes == others  # nothing changed in the mesh: the gained nodes are new to the render
    # new to the render: the gained nodes' per-node resources, and the shared bodies of the gained shards
    assert grown.changed == {k for k in full.resources if naming.node_of(k[1]) in others
                             or (naming.node_of(k[1]) is None and not own.owns_resource(k))}
    assert (grown.resources, grown.membership) == (full.resources, full.membership)
    shrunk = render_all(state, previous=grown, scope=own)
    assert not (shrunk.changed or shrunk.removed or shrunk.changed_nodes or shrunk.removed_nodes)
    assert set(shrunk.membership) == mine
    # a node leaving while out of scope still releases what it held
    for i in range(8):
        log.deregister("web", f"w{i}")
    gone = render_all(fold_log(log.events)[0], previous=shrunk, scope=own)
    assert gone.resources == {} and gone.removed_nodes == mine
    assert (LISTENER, naming.outbound_listener(sorted(mine)[0])) in gone.removed


def test_owning_everything_is_the_unscoped_render():
    state = fold_log(_mesh().events)[0]
    full = render_all(state)
    for scope in (Ownership(None), Ownership(None, SHARDS)):
        rm = render_all(state, scope=scope)
        assert rm.scope is None and parts(rm) == parts(full)
    every_shard = render_all(state, scope=Ownership(frozenset(range(SHARDS)), SHARDS))  # a worker alone in its group
    assert every_shard.scope is None and parts(every_shard) == parts(full)


def test_at_the_latest_an_endpoint_change_moves_one_body_and_only_in_the_worker_owning_it():
    """The projector renders endpoints as the view topic names them (``endpoint_versions=False``): a health
    change re-renders the endpoints' body in the worker owning its shard, and nothing else anywhere."""
    log = _mesh()
    state = fold_log(log.events)[0]
    key = (ENDPOINT, "reviews")
    owner = Ownership(frozenset({next(i for i in range(SHARDS) if Ownership(frozenset({i}), SHARDS).owns_resource(key))}),
                      SHARDS)
    scopes = {"owner": owner, "other": owner.only(frozenset(range(SHARDS)) - owner.shards)}
    before = {w: render_all(state, scope=scope, endpoint_versions=False) for w, scope in scopes.items()}
    assert key in before["owner"].versions and key in before["owner"].resources
    assert key not in before["other"].versions  # nothing the other worker writes names its version
    assert before["owner"].membership and before["other"].membership  # both own nodes holding it
    for rm in before.values():
        for m in rm.membership.values():
            assert m[ENDPOINT] == {"reviews": pub.LATEST} or not m[ENDPOINT]
    n = len(log.events)
    log.health("reviews", "r2", "unhealthy")
    state2 = fold_log(log.events[n:], state)[0]
    after = {w: render_all(state2, previous=before[w], scope=scope) for w, scope in scopes.items()}
    assert after["owner"].changed == {key} and not after["owner"].changed_nodes
    assert not (after["other"].changed or after["other"].changed_nodes or after["other"].removed)
    plan = pub.plan_changes(after["owner"], _published(before["owner"], owner), owner)
    assert [rk for rk, _body, _v in plan.bodies] == [key] and plan.membership == []
    # the body is the one the render with versions builds, and each membership is its record on the wire
    with_versions = render_all(state2)
    assert after["owner"].resources[key] == with_versions.resources[key]
    for w in scopes:
        for node, m in after[w].membership.items():
            assert m == pub.on_the_wire(with_versions.membership[node])


def _published(rm, scope):
    published = pub.PublishedViews()
    published.apply(pub.plan_views(rm, published, scope))
    return published


def test_a_render_keeps_how_its_previous_named_endpoints():
    state = fold_log(_mesh().events)[0]
    at_latest = render_all(state, endpoint_versions=False)
    assert render_all(state, previous=at_latest).endpoint_versions is False
    with pytest.raises(ValueError, match="endpoint_versions"):
        render_all(state, previous=at_latest, endpoint_versions=True)
    with pytest.raises(ValueError, match="endpoint_versions"):
        render_all(state, previous=render_all(state), endpoint_versions=False)
