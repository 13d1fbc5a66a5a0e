"""Stories about authorship: given these signed events, this fact is refused with this reason, and the
proxies receive exactly what they would without it.

One story per rule of ``projector.authz`` and per verification problem of
``identity.verifier``; the fold runs with a verifier, as the projector and
replay do by default.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from events import types as t
from events.codec import decode, encode
from identity import pki
from projector.authz import MAX_INSTANCE_WEIGHT
from projector.fold import fold_many, fold_with_decisions
from projector.render import ENDPOINT, render
from projector.state import empty_state
from projector.versioning import version_of
from tests.unit.projector.helpers import route
from tests.unit.projector.signed import MS0, T0, SignedLog, Trust, checker, operator, sidecar, signed


@pytest.fixture(scope="module")
def trust() -> Trust:
    return Trust()


def fold_signed(log: SignedLog, verifier=None):
    verifier = verifier or log.trust.verifier()
    state, decisions = empty_state(), []
    for ev in log.events:
        state, d = fold_with_decisions(state, ev, verifier)
        decisions.extend(d)
    batch_state, batch_decisions = fold_many(empty_state(), log.events, verifier)
    assert batch_state == state and list(batch_decisions) == decisions  # one at a time == in a batch
    return state, decisions


def view(state, node: str) -> dict[str, dict[str, str]]:
    """What ``node``'s proxy receives: every resource name and version, by type."""
    return {type_url: {name: version_of(res.SerializeToString(deterministic=True)) for name, res in named.items()}
            for type_url, named in render(state, node).items()}


def endpoints(state, node: str, cluster: str) -> list[tuple[str, int, int]]:
    cla = render(state, node)[ENDPOINT].get(cluster)
    if cla is None:
        return []
    return sorted((ep.endpoint.address.socket_address.address, ep.endpoint.address.socket_address.port_value,
                   ep.load_balancing_weight.value) for loc in cla.endpoints for ep in loc.lb_endpoints)


def bookinfo(trust: Trust) -> SignedLog:
    """web-1 calls reviews; reviews has one instance r1 (each sidecar registers itself)."""
    log = SignedLog(trust)
    log.by(sidecar("web", "w1")).register("web", "w1", "10.0.0.1", 8080, node_id="web-1", sidecar=(15006, 15001),
                                          depends_on=("reviews",))
    log.by(sidecar("reviews", "r1")).register("reviews", "r1", "10.0.0.2", 9080, node_id="reviews-1",
                                              sidecar=(15006, 15001))
    return log


def refused(decisions) -> list[tuple[str, str, str | None]]:
    return [(d.problem, d.reason, d.author) for d in decisions if isinstance(d, t.EventRefused)]


# ---------------------------------------------------------------- honest facts pass


def test_every_role_states_what_it_may(trust):
    log = bookinfo(trust)
    log.by(checker()).health("reviews", "r1", "unhealthy")
    log.by(operator()).rule("reviews", 1, route((None, 100)))
    log.by(sidecar("reviews", "r1")).health("reviews", "r1", "draining")
    state, decisions = fold_signed(log)
    assert decisions == []
    assert state.health["reviews/r1"].status == "draining"
    assert "reviews" in state.route_rules
    assert endpoints(state, "web-1", "reviews") == [("10.0.0.2", 15006, 1)]


# ---------------------------------------------------------------- a sidecar speaks only for itself


def test_a_sidecar_cannot_register_another_instance_of_its_service(trust):
    log = bookinfo(trust)
    before = view(fold_signed(log)[0], "web-1")
    log.by(sidecar("reviews", "r1")).register("reviews", "r2", "10.6.6.6", 9080, sidecar=(15006, 15001))
    state, decisions = fold_signed(log)
    assert refused(decisions) == [(
        "not_permitted",
        "spiffe://mesh.local/sidecar/reviews/r1 may not state instance.registered of instance reviews/r2: "
        "a sidecar may state facts only about its own instance reviews/r1",
        "spiffe://mesh.local/sidecar/reviews/r1",
    )]
    assert view(state, "web-1") == before
    assert "reviews/r2" not in state.instances


def test_a_sidecar_cannot_deregister_or_mark_a_peer_unhealthy(trust):
    log = bookinfo(trust)
    log.by(sidecar("reviews", "r2")).register("reviews", "r2", "10.0.0.3", 9080, sidecar=(15006, 15001))
    before = view(fold_signed(log)[0], "web-1")
    log.deregister("reviews", "r1")
    log.health("reviews", "r1", "unhealthy")
    state, decisions = fold_signed(log)
    assert [(p, a) for p, _r, a in refused(decisions)] == [
        ("not_permitted", "spiffe://mesh.local/sidecar/reviews/r2")] * 2
    assert view(state, "web-1") == before
    assert endpoints(state, "web-1", "reviews") == [("10.0.0.2", 15006, 1), ("10.0.0.3", 15006, 1)]


def test_a_sidecar_cannot_subscribe_for_another_instance(trust):
    log = bookinfo(trust)
    log.by(sidecar("reviews", "r1")).subscribe("web", "w1", "reviews")
    _state, decisions = fold_signed(log)
    assert [p for p, _r, _a in refused(decisions)] == ["not_permitted"]


# ---------------------------------------------------------------- node ids are bound


def test_a_node_id_held_by_a_live_registration_cannot_be_claimed(trust):
    log = bookinfo(trust)
    before = view(fold_signed(log)[0], "web-1")
    # a process with a valid certificate of another service registers itself with web-1's node id
    log.by(sidecar("reviews", "evil")).register("reviews", "evil", "10.6.6.6", 22, node_id="web-1",
                                                sidecar=(15006, 15001))
    state, decisions = fold_signed(log)
    assert refused(decisions) == [(
        "node_id_taken",
        "node id 'web-1' is held by the live registration of 'web/w1'; it is bound to that instance until it "
        "deregisters",
        "spiffe://mesh.local/sidecar/reviews/evil",
    )]
    assert view(state, "web-1") == before  # web-1's ~local still points at its app, its dependencies stay
    assert endpoints(state, "web-1", "reviews") == [("10.0.0.2", 15006, 1)]


def test_a_node_id_is_free_again_once_its_holder_deregistered(trust):
    log = bookinfo(trust)
    log.by(sidecar("web", "w1")).deregister("web", "w1")
    log.by(sidecar("web", "w2")).register("web", "w2", "10.0.0.9", 8080, node_id="web-1", sidecar=(15006, 15001))
    state, decisions = fold_signed(log)
    assert decisions == [] and state.nodes["web-1"] == frozenset({"web/w2"})


# ---------------------------------------------------------------- weights are bounded


def test_an_instance_cannot_give_itself_a_huge_weight(trust):
    log = bookinfo(trust)
    before = view(fold_signed(log)[0], "web-1")
    log.by(sidecar("reviews", "evil")).register("reviews", "evil", "10.6.6.6", 9080, weight=128,
                                                sidecar=(15006, 15001))
    state, decisions = fold_signed(log)
    assert refused(decisions) == [(
        "weight_too_high",
        f"weight 128 is over the {MAX_INSTANCE_WEIGHT} an instance may give itself (an operator may set more)",
        "spiffe://mesh.local/sidecar/reviews/evil",
    )]
    assert view(state, "web-1") == before


def test_an_operator_may_set_a_larger_weight(trust):
    log = bookinfo(trust)
    log.by(operator()).register("reviews", "big", "10.0.0.7", 9080, weight=50, sidecar=(15006, 15001))
    state, decisions = fold_signed(log)
    assert decisions == []
    assert ("10.0.0.7", 15006, 50) in endpoints(state, "web-1", "reviews")


def test_a_sidecar_cannot_claim_another_trust_domain(trust):
    """The render admits callers and names destinations by the registration's trust domain: a sidecar of
    mesh.local claiming another domain would have its peers trust certificates of that other root."""
    log = bookinfo(trust)
    before = view(fold_signed(log)[0], "web-1")
    log.by(sidecar("reviews", "r2")).append(t.InstanceRegistered(
        service="reviews", instance_id="r2", address="10.0.0.3", port=9080,
        sidecar=t.SidecarPorts(inbound_port=15006, outbound_port=15001, trust_domain="evil.example")))
    state, decisions = fold_signed(log)
    assert refused(decisions) == [(
        "trust_domain", "the registration claims trust domain 'evil.example', but its author's identity is of "
                        "'mesh.local'", "spiffe://mesh.local/sidecar/reviews/r2")]
    assert view(state, "web-1") == before


def test_a_sidecar_may_claim_its_own_trust_domain(trust):
    log = bookinfo(trust)
    log.by(sidecar("reviews", "r2")).append(t.InstanceRegistered(
        service="reviews", instance_id="r2", address="10.0.0.3", port=9080,
        sidecar=t.SidecarPorts(inbound_port=15006, outbound_port=15001, trust_domain="mesh.local")))
    state, decisions = fold_signed(log)
    assert decisions == [] and state.services["reviews"].trust_domain == "mesh.local"


# ---------------------------------------------------------------- service-wide settings


def test_one_instance_cannot_change_the_protocol_for_its_peers(trust):
    log = bookinfo(trust)
    before = view(fold_signed(log)[0], "web-1")
    log.by(sidecar("reviews", "r2")).register("reviews", "r2", "10.0.0.3", 9080, protocol="tcp",
                                              sidecar=(15006, 15001))
    state, decisions = fold_signed(log)
    assert refused(decisions) == [(
        "service_setting",
        "protocol is a service-wide setting of 'reviews' (http); one instance may not change it to tcp for its 1 "
        "peer(s): an operator re-registers to change it",
        "spiffe://mesh.local/sidecar/reviews/r2",
    )]
    assert state.services["reviews"].protocol == "http"
    assert view(state, "web-1") == before


def test_the_only_instance_sets_the_protocol_and_an_operator_may_change_it(trust):
    log = bookinfo(trust)
    log.by(sidecar("reviews", "r1")).register("reviews", "r1", "10.0.0.2", 9080, protocol="grpc", node_id="reviews-1",
                                              sidecar=(15006, 15001))  # no peer: its own setting
    log.by(sidecar("reviews", "r2")).register("reviews", "r2", "10.0.0.3", 9080, protocol="grpc",
                                              sidecar=(15006, 15001))
    log.by(operator()).register("reviews", "r3", "10.0.0.4", 9080, protocol="http", sidecar=(15006, 15001))
    state, decisions = fold_signed(log)
    assert decisions == [] and state.services["reviews"].protocol == "http"


# ---------------------------------------------------------------- who writes rules and health


@pytest.mark.parametrize("who", [sidecar("web", "w1"), checker()], ids=["sidecar", "checker"])
def test_only_operators_open_a_service_with_an_access_policy(trust, who):
    log = bookinfo(trust)
    log.by(who).append(t.AccessPolicyUpserted(service="reviews", revision=1, allow="mesh"))
    state, decisions = fold_signed(log)
    assert refused(decisions) == [(
        "not_permitted", f"{who.uri} may not state access_policy.upserted of access/reviews: only operators edit rules",
        who.uri)]
    assert "reviews" not in state.access


@pytest.mark.parametrize("who", [sidecar("web", "w1"), checker()], ids=["sidecar", "checker"])
def test_only_operators_edit_rules(trust, who):
    log = bookinfo(trust)
    log.by(operator()).policy("reviews", 1, {"v1": {"version": "v1"}})
    before = view(fold_signed(log)[0], "web-1")
    log.by(who).rule("reviews", 1, route(("v1", 100)))
    state, decisions = fold_signed(log)
    assert refused(decisions) == [(
        "not_permitted", f"{who.uri} may not state route_rule.upserted of route/reviews: only operators edit rules",
        who.uri)]
    assert "reviews" not in state.route_rules and view(state, "web-1") == before


def test_checkers_report_health_of_any_instance_and_nothing_else(trust):
    log = bookinfo(trust)
    log.by(checker()).health("reviews", "r1", "unhealthy")
    log.by(checker()).deregister("reviews", "r1")
    state, decisions = fold_signed(log)
    assert refused(decisions) == [(
        "not_permitted", "spiffe://mesh.local/checker/c1 may not state instance.deregistered of instance reviews/r1: "
        "a checker may only report health", "spiffe://mesh.local/checker/c1")]
    assert state.health["reviews/r1"].status == "unhealthy" and "reviews/r1" in state.instances


def test_an_operator_may_deregister_any_instance(trust):
    log = bookinfo(trust)
    log.by(operator()).deregister("reviews", "r1")
    state, decisions = fold_signed(log)
    assert decisions == [] and endpoints(state, "web-1", "reviews") == []


def test_control_plane_roles_state_no_mesh_facts(trust):
    from identity import spiffe
    log = bookinfo(trust)
    log.by(spiffe.projector("mesh.local")).register("reviews", "x", "10.6.6.6", 9080)
    log.by(spiffe.gateway("mesh.local", "g1")).subscribe("web", "w1", "reviews", origin="explicit")
    _state, decisions = fold_signed(log)
    assert [p for p, _r, _a in refused(decisions)] == ["not_permitted", "not_permitted"]


# ---------------------------------------------------------------- signatures


def test_unsigned_events_are_refused(trust):
    log = bookinfo(trust)
    before = view(fold_signed(log)[0], "web-1")
    log.by(None).register("reviews", "r9", "10.6.6.6", 9080)
    state, decisions = fold_signed(log)
    assert refused(decisions) == [("unsigned", "the event is not signed", None)]
    assert decisions[0].producer == "test" and decisions[0].signer is None
    assert decisions[0].source_topic == "meshlog.registrations" and decisions[0].source_offset == 2
    assert view(state, "web-1") == before


def test_a_tampered_event_is_refused_as_badly_signed(trust):
    log = bookinfo(trust)
    honest = signed(t.InstanceHealthChanged(service="reviews", instance_id="r1", status="healthy", observer="c"),
                    trust.signers[sidecar("reviews", "r1").uri])
    forged = encode(honest).replace(b'"healthy"', b'"unhealthy"')
    env = decode(forged, "meshlog.health")
    ev = dataclasses.replace(log.events[-1], envelope=env, topic="meshlog.health", offset=0, timestamp_ms=MS0 + 10)
    state, decisions = fold_many(fold_signed(log)[0], [ev], trust.verifier())
    assert refused(decisions) == [("bad_signature", "the signature does not verify with the key of "
                                   f"spiffe://mesh.local/sidecar/reviews/r1 (serial {env.signer})", None)]
    assert "reviews/r1" not in state.health


def test_a_signer_unknown_to_the_log_is_refused(trust):
    log = bookinfo(trust)
    stranger = trust.issue(sidecar("reviews", "ghost"), log_it=False)  # a real certificate, never logged
    log.by(stranger).register("reviews", "ghost", "10.6.6.6", 9080)
    _state, decisions = fold_signed(log)
    assert refused(decisions) == [("unknown_signer", f"no certificate with serial {stranger.serial} was issued "
                                   "before the event was logged", None)]


def test_a_certificate_from_another_root_is_refused(trust):
    other = pki.create_root("mesh.local", now=T0 - timedelta(days=1))
    log = bookinfo(trust)
    rogue = trust.issue(sidecar("reviews", "rogue"), ca=other)  # logged, but not signed by our root
    log.by(rogue).register("reviews", "rogue", "10.6.6.6", 9080)
    _state, decisions = fold_signed(log)
    assert refused(decisions) == [("untrusted_certificate", f"serial {rogue.serial}: the certificate is not signed "
                                   "by a trusted root", None)]
    assert fold_signed(log, trust.verifier(roots=False))[1] == []  # without roots the identities topic is trusted


def test_an_expired_certificate_signs_nothing(trust):
    log = bookinfo(trust)
    short = trust.issue(sidecar("reviews", "short"), at=T0 - timedelta(hours=2), lifetime=timedelta(hours=1))
    log.by(short).register("reviews", "short", "10.0.0.8", 9080)
    _state, decisions = fold_signed(log)
    assert [(p, a) for p, _r, a in refused(decisions)] == [("expired", None)]
    assert "expired at" in decisions[0].reason


def test_a_revoked_certificate_signs_nothing_from_the_revocation_on(trust):
    log = SignedLog(trust)
    who = sidecar("reviews", "leaky")
    key = trust.issue(who)
    log.by(key).register("reviews", "leaky", "10.0.0.8", 9080, at=MS0 + 1000)
    trust.revoke(who, key, MS0 + 2000)
    log.health("reviews", "leaky", "unhealthy", at=MS0 + 2000)
    state, decisions = fold_signed(log)
    # the registration, logged before the revocation, still verifies (replay verifies with what was valid then)
    assert "reviews/leaky" in state.instances and "reviews/leaky" not in state.health
    assert [(p, a) for p, _r, a in refused(decisions)] == [("revoked", None)]
    assert "key leaked" in decisions[0].reason


# ---------------------------------------------------------------- modes and cost


def test_without_a_verifier_nothing_is_refused_for_its_authorship(trust):
    log = bookinfo(trust)
    log.by(None).register("reviews", "r9", "10.6.6.6", 9080, node_id="web-1", weight=128)
    state = empty_state()
    for ev in log.events:
        state, decisions = fold_with_decisions(state, ev)  # insecure mode: as before signing existed
        assert decisions == ()
    assert "reviews/r9" in state.instances


def test_a_certificate_is_checked_once_and_each_signature_every_time(trust, monkeypatch):
    log = bookinfo(trust)
    for i in range(5):
        log.by(checker()).health("reviews", "r1", "unhealthy" if i % 2 else "healthy")
    verifier = trust.verifier()
    calls = []
    original = verifier._check_certificate
    monkeypatch.setattr(verifier, "_check_certificate", lambda serial: calls.append(serial) or original(serial))
    fold_many(empty_state(), log.events, verifier)
    assert sorted(calls) == sorted({ev.envelope.signer for ev in log.events})  # three identities, once each
    assert verifier.checked == len(log.events) == 7


def test_refusals_are_valid_records_with_bounded_escaped_fields(trust):
    log = bookinfo(trust)
    log.by(None)
    ev = log.register("reviews", "r9", "10.6.6.6", 9080)
    ev = dataclasses.replace(ev, envelope=dataclasses.replace(ev.envelope, producer="evil\x1b[2J" + "x" * 5000))
    _state, decisions = fold_many(empty_state(), [ev], trust.verifier())
    (d,) = decisions
    assert len(d.producer) <= 256 and "\x1b" not in d.producer and d.producer.startswith("evil\\x1b[2J")
    assert decode(encode(__import__("events.envelope", fromlist=["new_event"]).new_event(d)), "meshlog.rejections")


def test_a_batch_signed_once_is_verified_once_and_a_forged_member_is_refused(trust):
    from events.envelope import Logged, new_event

    log = bookinfo(trust)
    state, _ = fold_signed(log)
    signer = trust.signers.get(checker().uri) or trust.issue(checker())
    payloads = [t.InstanceHealthChanged(service="reviews", instance_id="r1", status=s, observer="c")
                for s in ("unhealthy", "healthy", "draining", "healthy", "unhealthy")]
    batch = [decode(encode(env), "meshlog.health")
             for env in signer.sign_batch([new_event(p, producer="checker") for p in payloads])]
    forged_doc = encode(batch[4]).replace(b'"unhealthy"', b'"draining"')  # same signature and proof, new fact
    events = [Logged(env, "meshlog.health", 0, i, MS0 + 100 + i) for i, env in enumerate(batch)]
    events.append(Logged(decode(forged_doc, "meshlog.health"), "meshlog.health", 0, 5, MS0 + 200))
    garbled = dataclasses.replace(batch[3], proof=("L" + "!" * 44, *batch[3].proof[1:]))  # not base64: no root
    events.append(Logged(garbled, "meshlog.health", 0, 6, MS0 + 201))
    verifier = trust.verifier()
    state, decisions = fold_many(state, events, verifier)
    # one ECDSA verification for the five honest events of the batch, one more for the root the forgery leads to
    assert verifier.checked == 2
    assert refused(decisions) == [("bad_signature", "the signature does not verify with the key of "
                                   f"spiffe://mesh.local/checker/c1 (serial {signer.serial})", None)] * 2
    assert state.health["reviews/r1"].status == "unhealthy"
