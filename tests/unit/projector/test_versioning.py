"""Resources are versioned by their render inputs (``projector.versioning``); what keeps that honest.

- A version names one body: over every state of the render tests (each prefix of their logs, and random
  logs), two different bodies of one resource (shared or per-node) never share a version (so a proxy is
  never told it holds bytes it does not), and the version is what ``render_all`` and ``Renderer.version``
  name.
- The body is built from its inputs alone: built over an empty state from the inputs read in the real one,
  it is the same bytes.
- A renderer change that alters the bytes of the same inputs must bump ``RENDER_VERSION``: the golden
  digests below are of fixed inputs' bytes, one set per value of the constant.
- A version stays the same when what the body is built from did not change.
- A versions-only render (``bodies=False``) names exactly what the full render names, from scratch and
  incrementally, and builds nothing.
"""

from __future__ import annotations

from hashlib import sha256

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import types as t
from projector import naming
from projector.fold import fold_many
from projector.render import CLUSTER, ENDPOINT, LISTENER, ROUTE, render_all
from projector.render_view import Renderer
from projector.state import MeshState, empty_state
from projector.versioning import RENDER_VERSION, inputs_version
from tests.unit.projector.feature_mesh import feature_mesh
from tests.unit.projector.helpers import Log, fold_log, route
from tests.unit.projector.test_properties import interleaving, topic_logs
from tests.unit.projector.test_render import _bookinfo, _canary, _proxyless

# sha256 (first 16 hex) of the deterministic bytes of ``_golden_inputs()``'s resources, per
# RENDER_VERSION. A failure here means the renderer gives other bytes for the same inputs: bump
# RENDER_VERSION and add the new digests under the new value (keep the old ones).
GOLDEN = {
    1: {
        (CLUSTER, "reviews"): "33bfb00901e64002",
        (CLUSTER, "reviews|v2"): "d4eb004bf5f188af",
        (ENDPOINT, "reviews"): "25d2103a5dddc0e6",
        (ENDPOINT, "reviews|v2"): "90a29486bed04983",
        (LISTENER, "ratings"): "62664c5c8a6b25a0",
        (ROUTE, "ratings"): "ea3eff02cbb778f5",
        (CLUSTER, "web-1~local"): "2737f1203c05af66",
        (LISTENER, "web-1~outbound"): "ef43e1d2f5ca68a0",
        (LISTENER, "web-1~inbound"): "355ef0a638f3989b",
        (LISTENER, "db-1~inbound"): "881519a89393adb3",
        (LISTENER, "web-1~tcp~db"): "3d5d036c98d6c2f7",
        (ROUTE, "web-1~inbound"): "e4a062256c469715",
        (ROUTE, "web-1~outbound"): "5e9ddd9a8034825e",
    },
}


def _golden_inputs() -> dict[tuple[str, str], tuple]:
    policy = t.DestinationPolicyUpserted(
        service="reviews", revision=3, subsets=(t.Subset(name="v2", labels={"version": "v2"}),),
        lb_policy="least_request", connect_timeout_ms=250,
        circuit_breaker=t.CircuitBreaker(max_connections=7), outlier_detection=t.OutlierDetection(consecutive_5xx=4))
    rule = t.RouteRuleUpserted(host="ratings", revision=2, routes=(
        route(("v1", 80), ("v2", 20), timeout_ms=1500, retries=t.RetryPolicy(attempts=2)),))
    rows = (("", (("10.0.0.1", 15006, "healthy", 1),)),
            ("a", (("10.0.0.2", 9080, "unhealthy", 3), ("fd00::1", 9080, "draining", 1))))
    return {
        (CLUSTER, "reviews"): ("http", policy, "mesh.example"),
        (CLUSTER, "reviews|v2"): ("grpc", policy, None),
        (ENDPOINT, "reviews"): rows,
        (ENDPOINT, "reviews|v2"): (),
        (LISTENER, "ratings"): (),
        (ROUTE, "ratings"): (rule, True),
        # per-node resources of node web-1 (``Renderer.node_inputs``)
        (CLUSTER, naming.local_cluster("web-1")): ("local", 8080, "http"),
        (LISTENER, naming.outbound_listener("web-1")): ("outbound", 15001, naming.outbound_route("web-1")),
        (LISTENER, naming.inbound_listener("web-1")): (
            "inbound", "0.0.0.0", 15006, naming.local_cluster("web-1"), "http", True, None, naming.inbound_route("web-1")),
        (LISTENER, naming.inbound_listener("db-1")): (
            "inbound", "10.0.0.9", 15006, naming.local_cluster("db-1"), "tcp", True,
            ("spiffe://mesh.example/sidecar/web/",), None),
        (LISTENER, naming.tcp_listener("web-1", "db")): ("tcp", 5432, "db"),
        (ROUTE, naming.inbound_route("web-1")): (
            "inbound", naming.local_cluster("web-1"), "grpc", ("spiffe://mesh.example/sidecar/api/",)),
        (ROUTE, naming.outbound_route("web-1")): ("outbound", 15001, (("ratings", rule, False), ("reviews", None, True))),
    }


def _digest(body: bytes) -> str:
    return sha256(body).hexdigest()[:16]


def test_the_bytes_of_fixed_inputs_are_the_golden_ones_of_this_render_version():
    builder = Renderer(empty_state())
    got = {key: _digest(builder.build(key[0], key[1], inputs).SerializeToString(deterministic=True))
           for key, inputs in _golden_inputs().items()}
    assert got == GOLDEN.get(RENDER_VERSION), (
        "the renderer gives other bytes for the same inputs: bump projector.versioning.RENDER_VERSION "
        f"and record {got} under the new value")


def _states_of(log: Log) -> list[MeshState]:
    """The state after each prefix of the log."""
    out, state = [], empty_state()
    for event in log.events:
        state, _ = fold_log([event], state)
        out.append(state)
    return out


def _render_test_states() -> list[MeshState]:
    states = [feature_mesh()]
    for make in (_bookinfo, _canary, _proxyless):
        states += _states_of(make())
    return states


def _holder(rm, key) -> str | None:
    """A node holding a per-node resource (its inputs are read for that node); None for a shared one."""
    if not naming.is_per_node(key[1]):
        return None
    return next(node for node, m in rm.membership.items() if key[1] in m.get(key[0], {}))


def _check(states: list[MeshState], seen: dict) -> None:
    """Every resource of every state: its version is its inputs', as the render names it; its body is built
    from its inputs alone; and across all states one version never names two bodies."""
    empty = Renderer(empty_state())
    for state in states:
        rm = render_all(state)
        r = Renderer(state)
        for key, body in rm.resources.items():
            node = _holder(rm, key)
            inputs = r.inputs(key[0], key[1], node)
            version = rm.versions[key]
            assert version == inputs_version(key[0], key[1], inputs) == r.version(key[0], key[1], node)
            assert empty.build(key[0], key[1], inputs).SerializeToString(deterministic=True) == body
            assert seen.setdefault((key, version), body) == body, f"{key} version {version} names two bodies"


def test_a_version_names_one_body_over_the_render_tests_states():
    seen: dict = {}
    _check(_render_test_states(), seen)
    bodies_per_key: dict = {}
    for (key, _version), body in seen.items():
        bodies_per_key.setdefault(key, set()).add(body)
    assert any(len(b) > 2 for b in bodies_per_key.values())  # the states do move the bodies
    moved = {key[0] for key, b in bodies_per_key.items() if naming.is_per_node(key[1]) and len(b) > 1}
    assert moved >= {LISTENER, ROUTE}  # per-node bodies move too (a new dependency, a served rule)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_a_version_names_one_body_over_random_logs(data):
    events = data.draw(interleaving(data.draw(topic_logs())))
    states, state = [], empty_state()
    for i in range(len(events)):
        state, _ = fold_many(state, events[i:i + 1])
        states.append(state)
    _check(states, {})


def test_a_version_stays_when_what_the_body_is_built_from_did_not_change():
    log = _bookinfo()
    before = render_all(fold_log(log.events)[0])
    # another service's health moves; an instance registers again as it was (a new broker time)
    log.health("ratings", "a1", "unhealthy")
    log.register("details", "d1", "10.0.0.2", 9080, node_id="details-1", sidecar=(15006, 15001))
    after = render_all(fold_log(log.events)[0])
    for key in [(CLUSTER, "reviews"), (ENDPOINT, "reviews"), (CLUSTER, "details"), (ENDPOINT, "details"),
                (CLUSTER, "ratings")]:
        assert after.versions[key] == before.versions[key], key
    assert after.versions[(ENDPOINT, "ratings")] != before.versions[(ENDPOINT, "ratings")]


def _same_names(a, b) -> None:
    assert a.membership == b.membership
    assert a.versions == b.versions
    assert a.owners == b.owners
    assert a.problems == b.problems
    assert (a.changed, a.removed, a.changed_nodes, a.removed_nodes) == (b.changed, b.removed, b.changed_nodes,
                                                                        b.removed_nodes)


def test_a_versions_only_render_names_what_the_full_render_names_and_builds_nothing():
    for make in (_bookinfo, _canary, _proxyless):
        full = lean = None
        for state in _states_of(make()):
            full = render_all(state, previous=full)
            lean = render_all(state, previous=lean, bodies=False)
            _same_names(full, lean)
            assert lean.resources == {} and not lean.bodies
    _same_names(render_all(feature_mesh()), render_all(feature_mesh(), bodies=False))


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_a_versions_only_render_follows_random_logs_like_the_full_one(data):
    events = data.draw(interleaving(data.draw(topic_logs())))
    full = lean = None
    state = empty_state()
    for i in range(len(events)):
        state, _ = fold_many(state, events[i:i + 1])
        full = render_all(state, previous=full)
        lean = render_all(state, previous=lean, bodies=False)
        _same_names(full, lean)
    assert lean is None or lean.resources == {}


def test_an_incremental_render_keeps_its_previous_renders_choice_of_bodies():
    state = fold_log(_bookinfo().events)[0]
    with pytest.raises(ValueError, match="bodies"):
        render_all(state, previous=render_all(state, bodies=False), bodies=True)
    with pytest.raises(ValueError, match="bodies"):
        render_all(state, previous=render_all(state), bodies=False)
    lean = render_all(fold_log(_canary().events)[0], previous=render_all(state, bodies=False))  # kept
    assert not lean.bodies and lean.resources == {} and lean.versions


def test_a_node_resource_is_rebuilt_only_when_its_inputs_moved():
    log = _bookinfo()
    before = render_all(fold_log(log.events)[0])
    # reviews-1 registers again as it was (a new broker time): its own resources keep their versions
    log.register("reviews", "r1", "10.0.0.3", 9080, labels={"version": "v1", "zone": "a"}, node_id="reviews-1",
                 sidecar=(15006, 15001), depends_on=("ratings",))
    after = render_all(fold_log(log.events)[0], previous=before)
    own = {k for k in after.versions if k[1].startswith("reviews-1~")}
    assert own and not own & after.changed
    assert all(after.resources[k] is before.resources[k] for k in own)  # the same bytes object: not rebuilt
