"""Stories about incremental ``render_all(state, previous=...)``: what a change touches."""

from __future__ import annotations

from projector.render import CLUSTER, ENDPOINT, LISTENER, ROUTE, render_all
from tests.unit.projector.helpers import Log, fold_log, route


def _mesh() -> Log:
    log = Log()
    log.register("web", "w1", "10.0.0.1", node_id="web-1", sidecar=(15006, 15001), depends_on=("reviews",))
    log.register("web", "w2", "10.0.0.2", node_id="web-2", sidecar=(15006, 15001), depends_on=("reviews",))
    log.register("api", "a1", "10.0.0.3", node_id="api-1", sidecar=(15006, 15001), depends_on=("details",))
    log.register("reviews", "r1", "10.0.1.1", labels={"version": "v1", "zone": "a"})
    log.register("reviews", "r2", "10.0.1.2", labels={"version": "v2", "zone": "b"})
    log.register("details", "d1", "10.0.2.1")
    log.policy("reviews", 1, {"v1": {"version": "v1"}, "v2": {"version": "v2"}})
    log.rule("reviews", 1, route(("v1", 90), ("v2", 10)))
    return log


def _step(log: Log, change):
    before, _ = fold_log(log.events)
    prev = render_all(before)
    change(log)
    after, _ = fold_log(log.events)
    inc = render_all(after, previous=prev)
    full = render_all(after)
    assert (inc.resources, inc.membership, inc.problems) == (full.resources, full.membership, full.problems)
    return inc


def test_health_change_touches_only_endpoints_and_their_holders():
    inc = _step(_mesh(), lambda log: log.health("reviews", "r2", "unhealthy"))
    assert inc.changed == {(ENDPOINT, "reviews"), (ENDPOINT, "reviews|v2")}
    assert inc.changed_nodes == {"web-1", "web-2"}  # their membership versions moved; api-1 untouched
    assert not inc.removed and not inc.removed_nodes


def test_policy_relabel_re_renders_subset_endpoints_and_clusters():
    inc = _step(_mesh(), lambda log: log.policy(
        "reviews", 2, {"v1": {"zone": "b"}, "v2": {"version": "v2"}}, lb_policy="random"))
    assert inc.changed == {
        (CLUSTER, "reviews"), (CLUSTER, "reviews|v1"), (CLUSTER, "reviews|v2"), (ENDPOINT, "reviews|v1"),
    }


def test_rule_change_touches_the_route_configs_of_dependents_only():
    inc = _step(_mesh(), lambda log: log.rule("reviews", 2, route(("v1", 50), ("v2", 50))))
    assert inc.changed == {(ROUTE, "web-1~outbound"), (ROUTE, "web-2~outbound")}
    assert inc.changed_nodes == {"web-1", "web-2"}


def test_rule_deletion_drops_subset_clusters_nobody_holds_any_more():
    inc = _step(_mesh(), lambda log: log.delete_rule("reviews", 2))
    assert inc.removed == {(CLUSTER, "reviews|v1"), (CLUSTER, "reviews|v2"), (ENDPOINT, "reviews|v1"),
                           (ENDPOINT, "reviews|v2")}


def test_registering_a_missing_destination_serves_the_waiting_rule():
    log = _mesh()
    log.rule("details", 1, route((None, 80), (None, 20, "details-next")))
    before, _ = fold_log(log.events)
    assert any("details-next" in p for p in render_all(before).problems)
    inc = _step(log, lambda log: log.register("details-next", "n1", "10.0.3.1"))
    assert inc.problems == ()
    assert {(CLUSTER, "details-next"), (ENDPOINT, "details-next"), (ROUTE, "api-1~outbound")} <= inc.changed
    assert inc.changed_nodes == {"api-1"}


def test_node_leaving_removes_its_own_resources():
    inc = _step(_mesh(), lambda log: log.deregister("api", "a1"))
    assert inc.removed_nodes == {"api-1"}
    assert inc.removed == {(LISTENER, "api-1~outbound"), (LISTENER, "api-1~inbound"), (ROUTE, "api-1~outbound"),
                           (CLUSTER, "api-1~local"), (CLUSTER, "details"), (ENDPOINT, "details")}


def test_unchanged_state_renders_nothing_new():
    s, _ = fold_log(_mesh().events)
    rm = render_all(s)
    again = render_all(s, previous=rm)
    assert again.resources is rm.resources
    assert not (again.changed or again.removed or again.changed_nodes or again.removed_nodes)
    full = render_all(s)
    assert full.changed == set(full.resources) and full.changed_nodes == set(full.membership)


def test_each_node_names_its_owner_the_instance_it_stands_for():
    inc = _step(_mesh(), lambda log: None)
    assert inc.owners == {"web-1": ("web", "w1"), "web-2": ("web", "w2"), "api-1": ("api", "a1")}


def test_another_instance_taking_over_a_node_id_changes_the_node_even_with_an_identical_view():
    # same address, ports and dependencies: the same names and bodies, only the owner differs
    inc = _step(_mesh(), lambda log: log.register("web", "w9", "10.0.0.1", node_id="web-1", sidecar=(15006, 15001),
                                                  depends_on=("reviews",)))
    assert inc.owners["web-1"] == ("web", "w9")
    assert inc.changed_nodes == {"web-1"}
    assert render_all(fold_log(_mesh().events)[0]).membership["web-1"] == inc.membership["web-1"]


def test_a_render_leaves_its_previous_whole_so_two_histories_can_branch_from_it():
    # the live projector keeps its last render; replay's walks and a worker's takeover render from one
    # ``previous`` more than once: what one incremental render changes must never leak into ``previous``
    base = _mesh()
    before, _ = fold_log(base.events)
    prev = render_all(before)
    index_before = {name: dict(getattr(prev._index, name)) for name in ("holders", "dependents", "shared_by_service")}

    leaving = _mesh()
    leaving.deregister("web", "w2")  # web-2 lets go of reviews' resources and of its place among its dependents
    leaving.register("api", "a1", "10.0.0.3", node_id="api-1", sidecar=(15006, 15001), depends_on=("details", "reviews"))
    one = render_all(fold_log(leaving.events)[0], previous=prev)

    joining = _mesh()
    joining.register("web", "w3", "10.0.0.4", node_id="web-3", sidecar=(15006, 15001), depends_on=("reviews",))
    joined_state = fold_log(joining.events)[0]
    other = render_all(joined_state, previous=prev)

    for name, entries in index_before.items():
        assert dict(getattr(prev._index, name)) == entries, name
        assert all(type(v) is frozenset for v in getattr(one._index, name).values()), name
    assert one._index.holders[(ENDPOINT, "reviews")] == {"web-1", "api-1"}
    assert other._index.holders[(ENDPOINT, "reviews")] == {"web-1", "web-2", "web-3"}
    full = render_all(joined_state)
    assert (other.membership, other.versions, other._index.holders, other._index.dependents) == (
        full.membership, full.versions, full._index.holders, full._index.dependents)
