"""The view diff: only real changes, in the order bodies -> memberships -> body tombstones."""

from __future__ import annotations

import orjson
import pytest

from events import topics
from projector.publisher import (
    LATEST,
    VERSION_HEADER,
    PublishedViews,
    ViewPlan,
    latest_body,
    membership_value,
    on_the_wire,
    parse_membership_value,
    parse_resource_key,
    plan_records,
    plan_views,
    record_version,
    resolve_told,
    resource_key,
    same_on_the_wire,
)
from projector.typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE
from projector.versioning import version_of


class Rendered:
    def __init__(self, resources, membership):
        self.resources = resources
        self.membership = membership
        self.versions = {rk: version_of(b) for rk, b in resources.items()}


def mesh(bodies: dict, nodes: dict) -> Rendered:
    """bodies: (type, name) -> bytes; nodes: node -> list of (type, name)."""
    membership = {}
    for node, keys in nodes.items():
        per = {u: {} for u in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
        for rk in keys:
            per[rk[0]][rk[1]] = version_of(bodies[rk])
        membership[node] = per
    return Rendered(bodies, membership)


def test_first_plan_publishes_every_body_in_type_order_then_memberships():
    bodies = {(ROUTE, "n~outbound"): b"r", (LISTENER, "n~outbound"): b"l", (ENDPOINT, "db"): b"e", (CLUSTER, "db"): b"c",
              (CLUSTER, "db|v1"): b"c1"}
    plan = plan_views(mesh(bodies, {"n": list(bodies)}), PublishedViews())
    assert [rk for rk, _b, _v in plan.bodies] == [
        (CLUSTER, "db"), (CLUSTER, "db|v1"), (ENDPOINT, "db"), (LISTENER, "n~outbound"), (ROUTE, "n~outbound")]
    assert [n for n, _v, _r in plan.membership] == ["n"]
    assert plan.removals == []
    phases = plan_records(plan)
    assert [r[0] for r in phases[0]] == [topics.VIEW_RESOURCES] * 5
    assert phases[0][0][1] == f"{CLUSTER}|db".encode()
    assert [r[0] for r in phases[1]] == [topics.VIEW_MEMBERSHIP]
    node, resources = parse_membership_value(phases[1][0][2])
    assert node == "n" and resources[CLUSTER]["db"] == version_of(b"c")
    # every body goes out with its version (a shared one's is not its bytes' hash: readers take the header)
    assert all(r[3] == [(VERSION_HEADER, rk_version.encode())]
               for r, (_rk, _b, rk_version) in zip(phases[0], plan.bodies))
    assert record_version(b"c", phases[0][0][3]) == plan.bodies[0][2]
    assert record_version(b"c", None) == version_of(b"c")  # a record from before the header: its bytes' hash
    # a header that is not a version is not passed on to proxies: the bytes' hash instead
    for bad in (b"x" * 16, b"0" * 15, b"0" * 17, b"ABCDEF0123456789", b"\x1b[31m0123456789ab", "é".encode() * 8):
        assert record_version(b"c", [("meshlog-version", bad)]) == version_of(b"c")
    assert record_version(b"c", [("meshlog-version", None)]) == version_of(b"c")  # a header without a value


def test_an_unchanged_mesh_plans_nothing():
    bodies = {(CLUSTER, "db"): b"c", (ENDPOINT, "db"): b"e"}
    rendered = mesh(bodies, {"n": list(bodies), "m": [(CLUSTER, "db")]})
    published = PublishedViews()
    published.apply(plan_views(rendered, published))
    again = plan_views(mesh(dict(bodies), {"n": list(bodies), "m": [(CLUSTER, "db")]}), published)
    assert again.empty and again.bodies == [] and again.membership == [] and again.removals == []


def test_a_changed_cluster_is_sent_with_the_memberships_naming_its_new_version():
    bodies = {(CLUSTER, "db"): b"c", (ENDPOINT, "db"): b"e"}
    published = PublishedViews()
    published.apply(plan_views(mesh(bodies, {"n": list(bodies), "m": [(ENDPOINT, "db")]}), published))
    bodies2 = {(CLUSTER, "db"): b"c2", (ENDPOINT, "db"): b"e"}
    plan = plan_views(mesh(bodies2, {"n": list(bodies2), "m": [(ENDPOINT, "db")]}), published)
    assert [(rk, b) for rk, b, _v in plan.bodies] == [((CLUSTER, "db"), b"c2")]
    assert [n for n, _v, _r in plan.membership] == ["n"]  # m does not name the cluster: unchanged
    assert parse_membership_value(plan.membership[0][1])[1][CLUSTER] == {"db": version_of(b"c2")}
    assert plan.removals == []


def test_changed_endpoints_are_one_body_record_and_no_membership_moves():
    """A ClusterLoadAssignment is named without its version: its holders hold the latest body."""
    holders = {f"n{i}": [(CLUSTER, "db"), (ENDPOINT, "db")] for i in range(3)}
    published = PublishedViews()
    first = plan_views(mesh({(CLUSTER, "db"): b"c", (ENDPOINT, "db"): b"e"}, holders), published)
    assert {n: parse_membership_value(v)[1][ENDPOINT] for n, v, _r in first.membership} == {n: {"db": LATEST} for n in holders}
    published.apply(first)
    plan = plan_views(mesh({(CLUSTER, "db"): b"c", (ENDPOINT, "db"): b"e2"}, holders), published)
    assert [(rk, b) for rk, b, _v in plan.bodies] == [((ENDPOINT, "db"), b"e2")]
    assert plan.membership == [] and plan.removals == []
    # a node starting to hold the endpoints is a membership change, as any new name is
    plan = plan_views(mesh({(CLUSTER, "db"): b"c", (ENDPOINT, "db"): b"e2"},
                           {**holders, "n3": [(CLUSTER, "db"), (ENDPOINT, "db")]}), published)
    assert [n for n, _v, _r in plan.membership] == ["n3"]


def test_a_membership_published_with_endpoint_versions_is_republished_once_without_them():
    """A record from before ClusterLoadAssignments were named at the latest moves to the new form."""
    bodies = {(CLUSTER, "db"): b"c", (ENDPOINT, "db"): b"e"}
    rendered = mesh(bodies, {"n": list(bodies)})
    published = PublishedViews(resources={rk: version_of(b) for rk, b in bodies.items()},
                               membership={"n": rendered.membership["n"]})  # as an older projector wrote it
    plan = plan_views(rendered, published)
    assert plan.bodies == [] and [n for n, _v, _r in plan.membership] == ["n"]
    published.apply(plan)
    assert plan_views(rendered, published).empty


def test_on_the_wire_and_back():
    rendered = {CLUSTER: {"db": "c1"}, ENDPOINT: {"db": "e1", "web": "e2"}, LISTENER: {}, ROUTE: {}}
    wire = on_the_wire(rendered)
    assert wire == {CLUSTER: {"db": "c1"}, ENDPOINT: {"db": LATEST, "web": LATEST}, LISTENER: {}, ROUTE: {}}
    assert same_on_the_wire(wire, rendered)
    assert same_on_the_wire(wire, {**rendered, ENDPOINT: {"db": "e9", "web": "e8"}})  # versions of a leaf: no matter
    assert not same_on_the_wire(wire, {**rendered, ENDPOINT: {"db": "e1"}})  # a name left
    assert not same_on_the_wire(wire, {**rendered, CLUSTER: {"db": "c2"}})  # a cluster's version did move
    assert not same_on_the_wire(rendered, rendered)  # an older record naming endpoint versions
    assert not same_on_the_wire(None, rendered)
    assert resolve_told(wire, {(ENDPOINT, "db"): "e7"}) == {
        CLUSTER: {"db": "c1"}, ENDPOINT: {"db": "e7", "web": LATEST}, LISTENER: {}, ROUTE: {}}


def test_a_vanished_node_and_its_orphaned_bodies_are_tombstoned_after_the_memberships():
    bodies = {(CLUSTER, "db"): b"c", (CLUSTER, "x"): b"x", (LISTENER, "gone~inbound"): b"l"}
    published = PublishedViews()
    published.apply(plan_views(mesh(bodies, {"gone": list(bodies), "stay": [(CLUSTER, "db")]}), published))
    plan = plan_views(mesh({(CLUSTER, "db"): b"c"}, {"stay": [(CLUSTER, "db")]}), published)
    assert plan.bodies == []
    assert plan.membership == [("gone", None, None)]
    assert sorted(plan.removals) == sorted([(CLUSTER, "x"), (LISTENER, "gone~inbound")])
    phases = plan_records(plan)
    assert phases[1] == [(topics.VIEW_MEMBERSHIP, b"gone", None, None)]
    assert {k for _t, k, v, _h in phases[2] if v is None} == {f"{CLUSTER}|x".encode(), f"{LISTENER}|gone~inbound".encode()}
    published.apply(plan)
    assert set(published.resources) == {(CLUSTER, "db")} and set(published.membership) == {"stay"}


def test_a_body_moving_between_nodes_is_not_removed():
    bodies = {(CLUSTER, "db"): b"c"}
    published = PublishedViews()
    published.apply(plan_views(mesh(bodies, {"a": [(CLUSTER, "db")]}), published))
    plan = plan_views(mesh(bodies, {"b": [(CLUSTER, "db")]}), published)
    assert plan.bodies == [] and plan.removals == []
    assert [(n, v is None) for n, v, _r in plan.membership] == [("b", False), ("a", True)]


def test_keys_and_values_round_trip():
    assert parse_resource_key(resource_key(CLUSTER, "db|v1")) == (CLUSTER, "db|v1")  # split at the first '|'
    with pytest.raises(ValueError):
        parse_resource_key(b"no-separator")
    value = membership_value("n~1", {CLUSTER: {"b": "2", "a": "1"}})
    assert value == orjson.dumps({"node": "n~1", "resources": {CLUSTER: {"a": "1", "b": "2"}}})
    assert parse_membership_value(value) == ("n~1", {CLUSTER: {"a": "1", "b": "2"}})
    assert ViewPlan([], [], []).empty


def test_planning_from_an_incremental_render_equals_the_full_diff():
    """plan_changes (change sets of render_all(state, previous=...)) == plan_views (full diff), step by step."""
    import random

    from events import types as t
    from events.envelope import Logged
    from projector.fold import fold_many
    from projector.publisher import plan_changes
    from projector.render import render_all
    from projector.state import empty_state

    from .helpers import envelope

    services = [f"s{i}" for i in range(6)]
    offset = 0

    def logged(p):
        nonlocal offset
        offset += 1
        return Logged(envelope(p), p.TOPIC, 0, offset, 1000 + offset)

    for seed in range(25):
        rnd = random.Random(seed)
        state, previous = empty_state(), None
        full_pub, inc_pub = PublishedViews(), PublishedViews()
        for _step in range(30):
            batch = []
            for _ in range(rnd.randint(1, 4)):
                svc, inst = rnd.choice(services), f"i{rnd.randrange(3)}"
                roll = rnd.random()
                if roll < 0.45:
                    deps = tuple(sorted(set(rnd.sample(services, 2)) - {svc}))
                    node = f"n-{svc}-{inst}" if rnd.random() < 0.8 else None
                    batch.append(logged(t.InstanceRegistered(
                        service=svc, instance_id=inst, address=f"10.0.0.{rnd.randrange(1, 9)}", port=8080,
                        node_id=node, depends_on=deps, protocol=rnd.choice(("http", "http", "grpc", "tcp")),
                        sidecar=t.SidecarPorts(inbound_port=15001, outbound_port=15002) if rnd.random() < 0.7 else None,
                    )))
                elif roll < 0.65:
                    batch.append(logged(t.InstanceDeregistered(service=svc, instance_id=inst)))
                else:
                    batch.append(logged(t.InstanceHealthChanged(
                        service=svc, instance_id=inst, status=rnd.choice(("healthy", "unhealthy", "draining")),
                        observer="test")))
            state, _ = fold_many(state, batch)
            full = render_all(state)
            rendered = render_all(state, previous=previous) if previous is not None else full
            expected = plan_views(full, full_pub)
            got = plan_changes(rendered, inc_pub) if previous is not None else plan_views(rendered, inc_pub)
            assert got.bodies == expected.bodies, seed
            assert got.membership == expected.membership, seed
            assert got.removals == expected.removals, seed
            full_pub.apply(expected)
            inc_pub.apply(got)
            previous = rendered


def test_a_membership_record_names_the_node_owner_and_a_new_owner_alone_is_republished():
    from projector.publisher import parse_membership_owner

    bodies = {(CLUSTER, "db"): b"c"}
    rendered = mesh(bodies, {"n": list(bodies)})
    rendered.owners = {"n": ("web", "w1")}
    published = PublishedViews()
    plan = plan_views(rendered, published)
    value = plan.membership[0][1]
    assert parse_membership_owner(value) == ("web", "w1")
    assert orjson.loads(value)["owner"] == {"service": "web", "instance": "w1"}
    published.apply(plan)
    assert published.owners == {"n": ("web", "w1")}
    assert plan_views(rendered, published).empty
    rendered.owners = {"n": ("web", "w9")}
    again = plan_views(rendered, published)
    assert [n for n, _v, _r in again.membership] == ["n"] and not again.bodies
    assert parse_membership_owner(again.membership[0][1]) == ("web", "w9")


def test_a_record_from_before_owners_has_none():
    from projector.publisher import parse_membership_owner

    assert parse_membership_owner(membership_value("n", {CLUSTER: {}})) is None


def test_latest_body_reads_only_the_bodies_memberships_name_at_the_latest():
    class Rec:
        def __init__(self, key, value, headers=()):
            self.key, self.value, self.headers = key, value, headers

    version = "c3" * 8
    got = latest_body(Rec(resource_key(ENDPOINT, "db|v1"), b"cla", ((VERSION_HEADER, version.encode()),)))
    assert got == ((ENDPOINT, "db|v1"), version)
    assert latest_body(Rec(resource_key(ENDPOINT, "db"), b"cla")) == ((ENDPOINT, "db"), version_of(b"cla"))
    assert latest_body(Rec(resource_key(ENDPOINT, "db"), None)) == ((ENDPOINT, "db"), None)  # a tombstone
    assert latest_body(Rec(resource_key(CLUSTER, "db"), b"c")) is None  # named with its version
    assert latest_body(Rec(f"{ENDPOINT}|\xff".encode("latin-1"), b"x")) is None  # not a key we wrote
    assert latest_body(Rec(None, b"x")) is None
