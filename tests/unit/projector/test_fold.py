"""Stories about the fold: given these events, the mesh model is this."""

from __future__ import annotations

import copy

import pytest

from events import topics
from events import types as t
from projector.fold import fold, fold_many, fold_with_decisions
from projector.state import empty_state, state_to_bytes
from tests.unit.projector.helpers import Log, fold_log, logged, route


# ---------------------------------------------------------------- registrations


def test_registration_adds_instance_service_and_node():
    log = Log()
    log.register("reviews", "r1", node_id="reviews-1", sidecar=(15006, 15001), depends_on=("ratings",), at=100)
    s, decisions = fold_log(log.events)
    assert decisions == []
    inst = s.instances["reviews/r1"]
    assert inst.ts == 100 and inst.reg.depends_on == ("ratings",)
    assert s.by_service["reviews"] == {"reviews/r1"}
    assert s.nodes["reviews-1"] == {"reviews/r1"}
    assert s.services["reviews"].protocol == "http"
    assert s.effective_health("reviews/r1") == "healthy"


def test_re_registration_replaces_the_instance_and_moves_its_node():
    log = Log()
    log.register("reviews", "r1", port=1000, node_id="old", at=100)
    log.register("reviews", "r1", port=2000, node_id="new", at=200)
    s, _ = fold_log(log.events)
    assert s.instances["reviews/r1"].reg.port == 2000
    assert "old" not in s.nodes and s.nodes["new"] == {"reviews/r1"}
    assert len(s.instances) == 1


def test_deregistration_removes_instance_and_indexes_but_service_stays_known():
    log = Log()
    log.register("reviews", "r1", node_id="n1")
    log.register("reviews", "r2")
    log.deregister("reviews", "r1")
    s, _ = fold_log(log.events)
    assert "reviews/r1" not in s.instances
    assert s.by_service["reviews"] == {"reviews/r2"}
    assert "n1" not in s.nodes
    log.deregister("reviews", "r2")
    s, _ = fold_log(log.events)
    assert "reviews" not in s.by_service and len(s.instances) == 0
    assert "reviews" in s.services  # ever registered: still a known destination


def test_deregistering_an_unknown_instance_changes_nothing():
    s0, _ = fold_log([Log().register("a", "1")])
    s1 = fold(s0, logged(t.InstanceDeregistered(service="b", instance_id="x"), ts=5))
    assert s1 == s0


def test_service_protocol_follows_the_latest_registration():
    log = Log()
    log.register("ratings", "a", protocol="http", at=100)
    log.register("ratings", "b", protocol="grpc", at=200)
    s, _ = fold_log(log.events)
    assert s.services["ratings"].protocol == "grpc"
    # interleaving-proof: folding the later one first gives the same answer
    s2, _ = fold_log(reversed(log.events))
    assert s2.services["ratings"] == s.services["ratings"]


def test_node_claimed_by_two_instances_is_the_latest_registration():
    log = Log()
    log.register("web", "old", node_id="web-1", at=100)
    log.register("web", "new", node_id="web-1", at=200)
    s, _ = fold_log(log.events)
    assert s.node_instance("web-1").reg.instance_id == "new"
    log.deregister("web", "new", at=300)
    s, _ = fold_log(log.events)
    assert s.node_instance("web-1").reg.instance_id == "old"


# ---------------------------------------------------------------- health


@pytest.mark.parametrize("status", ["unhealthy", "draining"])
def test_health_after_registration_applies(status):
    log = Log()
    log.register("a", "1", at=100)
    log.health("a", "1", status, at=150)
    s, _ = fold_log(log.events)
    assert s.effective_health("a/1") == status


def test_healthy_again_is_the_default_and_not_stored():
    log = Log()
    log.register("a", "1", at=100)
    log.health("a", "1", "unhealthy", at=150)
    log.health("a", "1", "healthy", at=160)
    s, _ = fold_log(log.events)
    assert s.effective_health("a/1") == "healthy" and len(s.health) == 0


def test_health_logged_before_the_registration_does_not_apply_whatever_the_fold_order():
    reg = logged(t.InstanceRegistered(service="a", instance_id="1", address="10.0.0.1", port=80), ts=200, offset=0)
    hc = logged(t.InstanceHealthChanged(service="a", instance_id="1", status="unhealthy", observer="x"), ts=150)
    for order in ([reg, hc], [hc, reg]):
        s, _ = fold_log(order)
        assert s.effective_health("a/1") == "healthy", order
        assert len(s.health) == 0


def test_health_logged_after_the_registration_applies_even_if_folded_first():
    # the health topic ran ahead of the registrations topic in the consumer
    reg = logged(t.InstanceRegistered(service="a", instance_id="1", address="10.0.0.1", port=80), ts=100)
    hc = logged(t.InstanceHealthChanged(service="a", instance_id="1", status="draining", observer="x"), ts=150)
    for order in ([reg, hc], [hc, reg]):
        s, _ = fold_log(order)
        assert s.effective_health("a/1") == "draining"


def test_same_millisecond_health_applies():
    reg = logged(t.InstanceRegistered(service="a", instance_id="1", address="10.0.0.1", port=80), ts=100)
    hc = logged(t.InstanceHealthChanged(service="a", instance_id="1", status="draining", observer="x"), ts=100)
    for order in ([reg, hc], [hc, reg]):
        assert fold_log(order)[0].effective_health("a/1") == "draining"


def test_re_registration_resets_health():
    log = Log()
    log.register("a", "1", at=100)
    log.health("a", "1", "unhealthy", at=150)
    log.register("a", "1", at=300)
    s, _ = fold_log(log.events)
    assert s.effective_health("a/1") == "healthy"


def test_deregistration_drops_older_health():
    log = Log()
    log.register("a", "1", at=100)
    log.health("a", "1", "unhealthy", at=150)
    log.deregister("a", "1", at=200)
    s, _ = fold_log(log.events)
    assert len(s.health) == 0


# ---------------------------------------------------------------- rules


def _policy(service="reviews", revision=1, subsets=("v1", "v2"), **kw):
    return t.DestinationPolicyUpserted(
        service=service, revision=revision,
        subsets=tuple(t.Subset(name=s, labels={"version": s}) for s in subsets), **kw,
    )


def _rule(host="reviews", revision=1, *routes):
    return t.RouteRuleUpserted(host=host, revision=revision, routes=routes or (route(("v1", 90), ("v2", 10)),))


def _fold_rules(*payloads):
    s = empty_state()
    decisions = []
    for i, p in enumerate(payloads):
        s, d = fold_with_decisions(s, logged(p, ts=1000 + i, offset=i))
        decisions.append(d[0] if d else None)
    return s, decisions


def test_route_rule_and_policy_are_accepted_in_revision_order():
    s, d = _fold_rules(_policy(), _rule(), _rule("reviews", 2, route(("v2", 100))))
    assert d == [None, None, None]
    assert s.route_rules["reviews"].revision == 2
    assert s.revisions["route/reviews"] == 2 and s.revisions["policy/reviews"] == 1
    assert s.subset_users["reviews"] == {"reviews"}


@pytest.mark.parametrize("revision", [2, 5])
def test_first_revision_must_be_one(revision):
    s, d = _fold_rules(_policy(revision=revision))
    assert "reviews" not in s.policies
    assert d[0].kind == "destination_policy" and d[0].revision == revision
    assert "first revision must be 1" in d[0].reason


@pytest.mark.parametrize("revision", [1, 3])
def test_revision_must_be_previous_plus_one(revision):
    s, d = _fold_rules(_policy(), _rule(), _rule("reviews", revision, route(("v2", 100))))
    assert d[2] is not None and "expected 2" in d[2].reason
    assert s.route_rules["reviews"].revision == 1  # the last valid rule keeps serving


def test_rejection_carries_the_source_position():
    bad = logged(_policy(revision=7), ts=5, offset=42, partition=0, topic=topics.RULES)
    s, d = fold_with_decisions(empty_state(), bad)
    assert s == empty_state()
    (r,) = d
    assert (r.source_topic, r.source_partition, r.source_offset) == (topics.RULES, 0, 42)
    assert (r.kind, r.name, r.revision) == ("destination_policy", "reviews", 7)


def test_route_to_a_subset_the_policy_does_not_define_is_rejected():
    s, d = _fold_rules(_policy(subsets=("v1",)), _rule())
    assert "reviews" not in s.route_rules
    assert d[1].kind == "route_rule" and "'v2' is not defined" in d[1].reason and "v1" in d[1].reason


def test_route_to_a_subset_without_any_policy_is_rejected():
    s, d = _fold_rules(_rule())
    assert "no destination policy" in d[0].reason
    assert "route/reviews" not in s.revisions  # a rejected revision is not consumed


def test_subset_of_another_destination_service_is_checked_against_that_service():
    other = _policy("ratings", 1, ("blue",))
    good = _rule("reviews", 1, route(("blue", 100, "ratings")))
    bad = _rule("reviews", 2, route(("v1", 100, "ratings")))
    s, d = _fold_rules(other, good, bad)
    assert d == [None, None, d[2]] and d[2] is not None and "'ratings'" in d[2].reason
    assert s.subset_users["ratings"] == {"reviews"}


def test_deleting_a_policy_used_by_a_rule_is_rejected_then_allowed_after_the_rule_goes():
    s, d = _fold_rules(
        _policy(), _rule(),
        t.DestinationPolicyDeleted(service="reviews", revision=2),
        t.RouteRuleDeleted(host="reviews", revision=2),
        t.DestinationPolicyDeleted(service="reviews", revision=2),
    )
    assert d[2] is not None and "used by current route rules" in d[2].reason
    assert d[3] is None and d[4] is None
    assert "reviews" not in s.policies and "reviews" not in s.route_rules
    assert "reviews" not in s.subset_users


def test_policy_upsert_dropping_a_used_subset_is_rejected():
    s, d = _fold_rules(_policy(), _rule(), _policy(revision=2, subsets=("v1",)))
    assert d[2] is not None and "v2 would be dropped" in d[2].reason
    assert [x.name for x in s.policies["reviews"].subsets] == ["v1", "v2"]
    # adding subsets is fine
    s, d = _fold_rules(_policy(), _rule(), _policy(revision=2, subsets=("v1", "v2", "v3")))
    assert d[2] is None


def test_delete_needs_an_existing_document_and_the_next_revision():
    s, d = _fold_rules(
        t.RouteRuleDeleted(host="reviews", revision=1),
        _policy(),
        t.DestinationPolicyDeleted(service="reviews", revision=1),
    )
    assert "no route rule" in d[0].reason
    assert "expected 2" in d[2].reason


def test_revisions_continue_after_a_delete():
    s, d = _fold_rules(
        _policy(), t.DestinationPolicyDeleted(service="reviews", revision=2),
        _policy(revision=1),  # a reset to 1 is refused: stale writers must not win
        _policy(revision=3),
    )
    assert d[0] is None and d[1] is None
    assert d[2] is not None and "expected 3" in d[2].reason
    assert d[3] is None and s.policies["reviews"].revision == 3


def test_rule_rejected_events_fold_to_nothing():
    r = t.RuleRejected(kind="route_rule", name="a", revision=1, reason="x", source_topic="t",
                       source_partition=0, source_offset=0)
    assert fold(empty_state(), logged(r, ts=1)) is empty_state()


# ---------------------------------------------------------------- purity and batching


def _story() -> Log:
    log = Log()
    log.register("reviews", "r1", labels={"version": "v1"}, node_id="n1", depends_on=("ratings",))
    log.register("ratings", "a1", labels={"version": "v1"})
    log.health("ratings", "a1", "unhealthy")
    log.policy("ratings", 1, {"v1": {"version": "v1"}})
    log.rule("ratings", 1, route(("v1", 100)))
    log.rule("ratings", 5, route(("v1", 100)))  # rejected
    log.deregister("reviews", "r1")
    log.delete_rule("ratings", 2)
    return log


def test_fold_never_mutates_its_input():
    log = _story()
    s = empty_state()
    for ev in log.events:
        before_bytes = state_to_bytes(s)
        before = copy.copy(s)
        snapshot = {f: getattr(s, f).to_dict() for f in s.__slots__}
        s2 = fold(s, ev)
        assert state_to_bytes(s) == before_bytes
        assert s == before
        assert {f: getattr(s, f).to_dict() for f in s.__slots__} == snapshot
        s = s2


def test_fold_many_equals_folding_one_by_one():
    log = _story()
    one_by_one, decisions = fold_log(log.events)
    batched, batch_decisions = fold_many(empty_state(), log.events)
    assert batched == one_by_one
    assert list(batch_decisions) == decisions and len(decisions) == 1
    assert state_to_bytes(batched) == state_to_bytes(one_by_one)


def test_fold_is_deterministic():
    log = _story()
    assert state_to_bytes(fold_log(log.events)[0]) == state_to_bytes(fold_log(log.events)[0])
