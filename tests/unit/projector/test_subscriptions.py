"""Stories about run-time subscriptions: given these events, this node receives these clusters.

A ``dependency.subscribed`` event adds a dependency to one instance's closure
(its node's view), ``dependency.unsubscribed`` removes it; refused ones leave
the state unchanged and yield a ``SubscriptionRejected`` with the reason.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from events import types as t
from projector.fold import fold_many
from projector.render import CLUSTER, ENDPOINT, ROUTE, node_view, render, render_all
from projector.state import Subscription, empty_state, state_from_bytes, state_to_bytes
from tests.unit.projector.helpers import Log, fold_log


def _mesh() -> Log:
    log = Log()
    log.register("web", "w1", "10.0.0.1", node_id="web-1", sidecar=(15006, 15001), depends_on=("reviews",), at=100)
    log.register("reviews", "r1", "10.0.1.1", at=110)
    log.register("ratings", "t1", "10.0.2.1", at=120)
    log.register("details", "d1", "10.0.3.1", at=130)
    return log


def _clusters(log: Log, node: str = "web-1") -> tuple[str, ...]:
    state, _ = fold_log(log.events)
    return node_view(state, node).names[CLUSTER]


def test_a_subscription_adds_the_dependency_to_the_nodes_view_with_its_origin_and_time():
    log = _mesh()
    assert _clusters(log) == ("reviews", "web-1~local")
    log.subscribe("web", "w1", "ratings", at=500)
    state, decisions = fold_log(log.events)
    assert decisions == []
    view = node_view(state, "web-1").names
    assert view[CLUSTER] == ("ratings", "reviews", "web-1~local")
    assert view[ENDPOINT] == ("ratings", "reviews")
    inst = state.instances["web/w1"]
    assert inst.subscriptions == (Subscription("ratings", "explicit", 500),)
    assert inst.dependencies() == ("ratings", "reviews")
    # the outbound route gets a virtual host for the new dependency
    route = render(state, "web-1")[ROUTE]["web-1~outbound"]
    assert [vh.name for vh in route.virtual_hosts] == ["ratings", "reviews", "~on-demand"]


def test_unsubscribing_removes_the_cluster_from_that_node_only():
    log = _mesh()
    log.register("api", "a1", "10.0.0.2", node_id="api-1", sidecar=(15006, 15001), depends_on=("ratings",))
    log.subscribe("web", "w1", "ratings")
    log.unsubscribe("web", "w1", "ratings")
    state, decisions = fold_log(log.events)
    assert decisions == []
    assert node_view(state, "web-1").names[CLUSTER] == ("reviews", "web-1~local")
    assert "ratings" in node_view(state, "api-1").names[CLUSTER]
    assert state.instances["web/w1"].subscriptions == ()


def test_subscribing_again_or_to_a_declared_dependency_changes_nothing():
    log = _mesh()
    log.subscribe("web", "w1", "ratings", at=500)
    before, _ = fold_log(log.events)
    log.subscribe("web", "w1", "ratings", origin="learned", at=600)  # the first one's origin and time stay
    log.subscribe("web", "w1", "reviews", at=700)  # declared already
    after, decisions = fold_log(log.events)
    assert decisions == []
    assert after.instances["web/w1"] == before.instances["web/w1"]


@pytest.mark.parametrize(
    ("event", "problem", "reason"),
    [
        (t.DependencySubscribed(service="web", instance_id="nope", dependency="ratings"),
         "unknown_instance", "instance 'web/nope' is not registered"),
        (t.DependencySubscribed(service="web", instance_id="w1", dependency="unknown-svc"),
         "unknown_service", "unknown service 'unknown-svc': no instance of it has ever registered"),
        (t.DependencyUnsubscribed(service="web", instance_id="nope", dependency="ratings"),
         "unknown_instance", "instance 'web/nope' is not registered"),
        (t.DependencyUnsubscribed(service="web", instance_id="w1", dependency="ratings"),
         "not_subscribed", "'web/w1' is not subscribed to 'ratings'"),
        (t.DependencyUnsubscribed(service="web", instance_id="w1", dependency="reviews"),
         "declared", "'reviews' is declared in the registration of 'web/w1' (depends_on); only a re-registration without it "
         "drops it"),
    ],
)
def test_a_refused_subscription_leaves_the_state_unchanged_and_records_why(event, problem, reason):
    log = _mesh()
    before, _ = fold_log(log.events)
    bad = log.append(event)
    after, decisions = fold_log([bad], before)
    assert after == before
    (j,) = decisions
    assert isinstance(j, t.SubscriptionRejected)
    assert (j.problem, j.reason) == (problem, reason)
    assert (j.service, j.instance_id, j.dependency) == (event.service, event.instance_id, event.dependency)
    assert j.action == ("subscribe" if isinstance(event, t.DependencySubscribed) else "unsubscribe")
    assert (j.source_topic, j.source_partition, j.source_offset) == (bad.topic, bad.partition, bad.offset)
    assert j.key() == "subscription/web/" + event.instance_id


def test_a_subscription_to_a_service_whose_instances_all_left_is_accepted_it_is_still_known():
    log = _mesh()
    log.deregister("ratings", "t1")
    log.subscribe("web", "w1", "ratings")
    state, decisions = fold_log(log.events)
    assert decisions == []
    assert "ratings" in node_view(state, "web-1").names[CLUSTER]


def test_re_registration_keeps_subscriptions_except_those_it_now_declares():
    log = _mesh()
    log.subscribe("web", "w1", "ratings", at=500)
    log.subscribe("web", "w1", "details", origin="learned", at=510)
    log.register("web", "w1", "10.0.0.1", node_id="web-1", sidecar=(15006, 15001),
                 depends_on=("reviews", "details"), at=600)
    state, _ = fold_log(log.events)
    inst = state.instances["web/w1"]
    assert inst.subscriptions == (Subscription("ratings", "explicit", 500),)
    assert inst.dependencies() == ("details", "ratings", "reviews")


def test_deregistration_ends_the_subscriptions():
    log = _mesh()
    log.subscribe("web", "w1", "ratings")
    log.deregister("web", "w1")
    log.register("web", "w1", "10.0.0.1", node_id="web-1", sidecar=(15006, 15001), depends_on=("reviews",))
    state, _ = fold_log(log.events)
    assert state.instances["web/w1"].subscriptions == ()
    assert node_view(state, "web-1").names[CLUSTER] == ("reviews", "web-1~local")


def test_folding_in_a_batch_equals_folding_one_by_one():
    log = _mesh()
    log.subscribe("web", "w1", "ratings")
    log.subscribe("web", "w1", "nope-svc")
    log.subscribe("web", "w1", "details", origin="learned")
    log.unsubscribe("web", "w1", "ratings")
    one_by_one, decisions = fold_log(log.events)
    batch, batch_decisions = fold_many(empty_state(), log.events)
    assert batch == one_by_one and list(batch_decisions) == decisions and len(decisions) == 1


def test_incremental_render_of_a_subscription_equals_a_full_render_and_touches_only_the_subscriber():
    log = _mesh()
    log.register("api", "a1", "10.0.0.2", node_id="api-1", sidecar=(15006, 15001), depends_on=("details",))
    before, _ = fold_log(log.events)
    prev = render_all(before)
    for change in (lambda: log.subscribe("web", "w1", "ratings"), lambda: log.unsubscribe("web", "w1", "ratings")):
        change()
        after, _ = fold_log(log.events)
        inc = render_all(after, previous=prev)
        full = render_all(after)
        assert (inc.resources, inc.membership, inc.problems) == (full.resources, full.membership, full.problems)
        assert inc.changed_nodes | inc.removed_nodes == {"web-1"}
        assert all(name in ("web-1~outbound", "ratings") for _u, name in inc.changed | inc.removed)
        prev = inc


def test_subscriptions_survive_a_snapshot_round_trip_and_an_empty_one_keeps_the_old_bytes():
    log = _mesh()
    plain, _ = fold_log(log.events)
    assert b"subs" not in state_to_bytes(plain)
    log.subscribe("web", "w1", "ratings", origin="learned")
    state, _ = fold_log(log.events)
    assert state_from_bytes(state_to_bytes(state)) == state


def test_a_subscription_event_is_keyed_like_its_instance_and_cannot_name_itself():
    ev = t.DependencySubscribed(service="web", instance_id="w1", dependency="ratings")
    reg = t.InstanceRegistered(service="web", instance_id="w1", address="10.0.0.1", port=80)
    assert ev.key() == reg.key() and ev.TOPIC == reg.TOPIC
    with pytest.raises(ValidationError, match="cannot depend on itself"):
        t.DependencySubscribed(service="web", instance_id="w1", dependency="web")
    with pytest.raises(ValidationError, match="origin"):
        t.DependencySubscribed(service="web", instance_id="w1", dependency="ratings", origin="guessed")


# ---------------------------------------------------------------- restricted services


def _restricted_mesh() -> Log:
    """``ratings`` is restricted to declared callers; ``reviews`` declares it, ``web`` does not."""
    log = _mesh()
    log.register("reviews", "r2", "10.0.1.2", node_id="reviews-2", sidecar=(15006, 15001), depends_on=("ratings",),
                 at=140)
    log.policy("ratings", 1, restricted=True)
    return log


@pytest.mark.parametrize("origin", ["explicit", "learned"])
def test_a_restricted_service_refuses_run_time_subscriptions_with_the_reason(origin):
    log = _restricted_mesh()
    before, _ = fold_log(log.events)
    bad = log.subscribe("web", "w1", "ratings", origin=origin, at=500)
    after, decisions = fold_log([bad], before)
    assert after == before and _clusters(log) == ("reviews", "web-1~local")
    (j,) = decisions
    assert (j.action, j.problem, j.dependency) == ("subscribe", "restricted", "ratings")
    assert j.reason == ("service 'ratings' is restricted to the callers that declare it (destination policy "
                        "revision 1): a run-time subscription to it is refused")


def test_a_restricted_service_still_reaches_the_callers_that_declare_it():
    log = _restricted_mesh()
    assert "ratings" in _clusters(log, "reviews-2")
    log.subscribe("reviews", "r2", "ratings", at=500)  # already declared: a no-op, not a refusal
    _, decisions = fold_log(log.events)
    assert decisions == []


def test_lifting_the_restriction_lets_subscriptions_in_and_earlier_ones_stay_when_it_returns():
    log = _restricted_mesh()
    log.policy("ratings", 2, restricted=False)
    log.subscribe("web", "w1", "ratings", origin="learned", at=500)
    log.policy("ratings", 3, restricted=True)
    state, decisions = fold_log(log.events)
    assert decisions == []
    assert state.instances["web/w1"].subscriptions == (Subscription("ratings", "learned", 500),)
    assert "ratings" in _clusters(log)
    log.subscribe("web", "w1", "ratings", at=600)  # subscribed before the restriction: re-subscribing is a no-op
    assert fold_log(log.events)[1] == []
