"""Workers sharing the view records: every key belongs to exactly one shard, and the workers' plans add up
to the single worker's plan, value for value."""

from __future__ import annotations

import pytest

from events.shard_group import shard_of
from projector import naming
from projector import publisher as pub
from projector.render import render_all
from projector.sharding import Ownership, resource_shard
from projector.typeurls import CLUSTER, LISTENER
from tests.unit.projector.helpers import Log, fold_log

SHARDS = 12
SPLITS = {
    "two workers": [range(0, 6), range(6, 12)],
    "four workers": [range(0, 3), range(3, 6), range(6, 9), range(9, 12)],
    "uneven": [{0, 5, 7}, {1, 2, 3, 4, 6, 8, 9, 10, 11}],
}


def a_mesh() -> Log:
    log = Log()
    services = [f"svc{i}" for i in range(6)]
    for i, svc in enumerate(services):
        for j in range(4):
            log.register(svc, f"i{j}", f"10.0.{i}.{j + 1}", sidecar=(15006, 15001), node_id=f"{svc}-n{j}", depends_on=(services[(i + 1) % 6], services[(i + 2) % 6]),
                         labels={"version": "v1" if j % 2 else "v2"})
    log.policy("svc1", 1, {"v1": {"version": "v1"}, "v2": {"version": "v2"}})
    return log


def records(plan: pub.ViewPlan) -> dict[tuple[str, bytes], bytes | None]:
    """The plan as the records it sends: (topic, key) -> value."""
    out = {}
    for phase in pub.plan_records(plan):
        for topic, key, value, _headers in phase:
            assert (topic, key) not in out, "a key twice in one plan"
            out[(topic, key)] = value
    return out


def split(whole: dict, parts: list[dict]) -> None:
    """``parts`` are disjoint and together exactly ``whole``."""
    union: dict = {}
    for part in parts:
        assert not set(part) & set(union), "two workers publish one key"
        union.update(part)
    assert union == whole


def owners(shards) -> list[Ownership]:
    return [Ownership(frozenset(s), SHARDS) for s in shards]


@pytest.mark.parametrize("shards", SPLITS.values(), ids=SPLITS.keys())
def test_workers_publish_disjoint_keys_that_add_up_to_the_single_workers_plan(shards):
    log = a_mesh()
    rendered = render_all(fold_log(log.events)[0])
    whole = records(pub.plan_views(rendered, pub.PublishedViews()))
    assert any(key[1].startswith(f"{CLUSTER}|svc".encode()) for key in whole)  # shared bodies are in play
    split(whole, [records(pub.plan_views(rendered, pub.PublishedViews(), own)) for own in owners(shards)])


@pytest.mark.parametrize("shards", SPLITS.values(), ids=SPLITS.keys())
def test_incremental_plans_split_the_same_way_with_tombstones_by_the_owner(shards):
    log = a_mesh()
    before = render_all(fold_log(log.events)[0])
    published = pub.PublishedViews()
    published.apply(pub.plan_views(before, published))
    n = len(log.events)
    log.health("svc2", "i1", "unhealthy")  # endpoints change: every holder's membership moves
    log.deregister("svc3", "i3")  # a node goes: its membership and per-node tombstones
    after = render_all(fold_log(log.events[n:], before.state)[0], previous=before)
    whole = records(pub.plan_changes(after, published))
    assert (pub.topics.VIEW_MEMBERSHIP, b"svc3-n3") in whole and whole[(pub.topics.VIEW_MEMBERSHIP, b"svc3-n3")] is None
    split(whole, [records(pub.plan_changes(after, published, own)) for own in owners(shards)])


def test_every_view_key_has_one_shard_the_node_for_per_node_names():
    node = "odd~node%id"  # escaped in names
    per_node = (LISTENER, naming.outbound_listener(node))
    assert naming.node_of(per_node[1]) == node
    assert resource_shard(per_node, SHARDS) == shard_of(node, SHARDS)
    assert resource_shard((CLUSTER, "svc1|v1"), SHARDS) == shard_of(f"{CLUSTER}|svc1|v1", SHARDS)
    assert naming.node_of("svc1|v1") is None


def test_a_gained_shard_is_republished_in_full_and_its_gone_nodes_tombstoned():
    log = a_mesh()
    rendered = render_all(fold_log(log.events)[0])
    published = pub.PublishedViews()
    published.apply(pub.plan_views(rendered, published))
    gained = Ownership(frozenset({0, 1, 2}), SHARDS)
    # a node published by a worker that died before removing it, in a gained shard
    ghost = next(f"ghost-{i}" for i in range(1000) if gained.owns_node(f"ghost-{i}"))
    published.membership[ghost] = {CLUSTER: {}}
    # a diff against what this worker thinks is published plans only the ghost's tombstone ...
    diff = pub.plan_views(rendered, published, gained)
    assert not diff.bodies and [(n, v) for n, v, _r in diff.membership] == [(ghost, None)]
    # ... a takeover trusts no one's record of the topic: every owned record goes out again, and the ghost goes
    takeover = records(pub.plan_takeover(rendered, published, gained))
    full = records(pub.plan_views(rendered, pub.PublishedViews(), gained))
    assert full  # the shards hold something
    assert takeover == {**full, (pub.topics.VIEW_MEMBERSHIP, ghost.encode()): None}


def test_merged_plans_keep_bodies_before_memberships_and_tombstones_last():
    log = a_mesh()
    rendered = render_all(fold_log(log.events)[0])
    a, b = owners(SPLITS["two workers"])
    merged = pub.merge_plans(pub.plan_views(rendered, pub.PublishedViews(), a),
                             pub.plan_takeover(rendered, pub.PublishedViews(), b))
    assert records(merged) == records(pub.plan_views(rendered, pub.PublishedViews()))
    ranks = [pub._type_order(rk) for rk, _b, _v in merged.bodies]
    assert ranks == sorted(ranks)


def test_owning_everything_is_the_single_worker():
    log = a_mesh()
    rendered = render_all(fold_log(log.events)[0])
    assert records(pub.plan_views(rendered, pub.PublishedViews(), Ownership(None))) == records(
        pub.plan_views(rendered, pub.PublishedViews()))
