"""Property: for any interleaving of honest and forged events, the served view is the view of the honest events.

Honest events are signed by the identity allowed to state them; forged ones
are refused whatever comes before them (a sidecar speaking for a peer, a huge
self-given weight, a node id claim made with a huge weight, unsigned, tampered
after signing, signed by a certificate the log never issued, a rule written by
a sidecar, a checker deregistering). Events are signed once per module; the
interleaving only decides where each lands in the log.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings, strategies as st

from events import types as t
from events.codec import decode, encode
from events.envelope import Envelope
from projector.fold import fold_many
from projector.render import node_ids, render
from projector.state import empty_state
from tests.unit.projector.helpers import route
from tests.unit.projector.signed import MS0, Trust, checker, operator, sidecar, signed

TRUST = Trust()


def by(who):
    return TRUST.signers.get(who.uri) or TRUST.issue(who)


def reg(service, instance, address, **kw) -> t.InstanceRegistered:
    return t.InstanceRegistered(service=service, instance_id=instance, address=address, port=9080,
                                sidecar=t.SidecarPorts(inbound_port=15006, outbound_port=15001), **kw)


def health(service, instance, status) -> t.InstanceHealthChanged:
    return t.InstanceHealthChanged(service=service, instance_id=instance, status=status, observer="c")


W1, R1, R2, EVIL = sidecar("web", "w1"), sidecar("reviews", "r1"), sidecar("reviews", "r2"), sidecar("reviews", "evil")
HONEST: list[Envelope] = [
    signed(reg("web", "w1", "10.0.0.1", node_id="web-1", depends_on=("reviews",)), by(W1)),
    signed(reg("reviews", "r1", "10.0.0.2", node_id="reviews-1", labels={"version": "v1"}), by(R1)),
    signed(reg("reviews", "r2", "10.0.0.3", node_id="reviews-2", labels={"version": "v2"}, weight=3), by(R2)),
    signed(health("reviews", "r1", "unhealthy"), by(checker())),
    signed(t.DestinationPolicyUpserted(service="reviews", revision=1, subsets=(
        t.Subset(name="v1", labels={"version": "v1"}), t.Subset(name="v2", labels={"version": "v2"}))), by(operator())),
    signed(t.RouteRuleUpserted(host="reviews", revision=1, routes=(route(("v1", 90), ("v2", 10)),)), by(operator())),
    signed(health("reviews", "r1", "healthy"), by(checker())),
    signed(health("reviews", "r2", "draining"), by(R2)),
    signed(t.InstanceDeregistered(service="reviews", instance_id="r2"), by(R2)),
    signed(reg("reviews", "r2", "10.0.0.4", node_id="reviews-2", labels={"version": "v2"}), by(R2)),
]


def _tampered() -> Envelope:
    honest = signed(health("reviews", "r1", "draining"), by(R1))
    return decode(encode(honest).replace(b'"draining"', b'"unhealthy"'), "meshlog.health")


FORGED: list[Envelope] = [
    signed(reg("reviews", "evil", "10.6.6.6", weight=128), by(EVIL)),
    signed(reg("reviews", "evil", "10.6.6.6", node_id="web-1", weight=128), by(EVIL)),
    signed(reg("reviews", "r1", "10.6.6.6", node_id="reviews-1"), by(EVIL)),
    signed(t.InstanceDeregistered(service="reviews", instance_id="r1"), by(EVIL)),
    signed(health("reviews", "r2", "unhealthy"), by(EVIL)),
    signed(reg("reviews", "r9", "10.6.6.6"), None),
    dataclasses.replace(signed(reg("reviews", "r1", "10.6.6.6"), None), producer="sidecar/reviews/r1"),
    _tampered(),
    signed(reg("reviews", "ghost", "10.6.6.6"), TRUST.issue(sidecar("reviews", "ghost"), log_it=False)),
    signed(t.RouteRuleUpserted(host="reviews", revision=2, routes=(route(("v2", 100)),)), by(W1)),
    signed(reg("reviews", "c", "10.6.6.6"), by(checker())),
    signed(t.InstanceDeregistered(service="web", instance_id="w1"), by(checker())),
]
VERIFIER = TRUST.verifier()


def interleave(honest, forged, picks):
    """Merge two sequences keeping each one's order: ``picks[i]`` True takes the next forged event."""
    out, pending_h, pending_f = [], list(honest), list(forged)
    for pick in picks:
        if pick and pending_f:
            out.append((False, pending_f.pop(0)))
        elif pending_h:
            out.append((True, pending_h.pop(0)))
    return out + [(True, e) for e in pending_h] + [(False, e) for e in pending_f]


def logged_in_order(merged):
    from events.envelope import Logged
    offsets: dict[str, int] = {}
    out = []
    for i, (honest, env) in enumerate(merged):
        topic = env.payload.TOPIC
        off = offsets[topic] = offsets.get(topic, -1) + 1
        out.append((honest, Logged(env, topic, 0, off, MS0 + 10 * i)))
    return out


def views(state) -> dict:
    return {node: {type_url: {name: res.SerializeToString(deterministic=True) for name, res in named.items()}
                   for type_url, named in render(state, node).items()}
            for node in sorted(node_ids(state))}


@settings(max_examples=60, deadline=None)
@given(forged=st.lists(st.sampled_from(range(len(FORGED))), max_size=12),
       picks=st.lists(st.booleans(), max_size=30))
def test_forged_events_change_nothing_any_proxy_receives(forged, picks):
    events = logged_in_order(interleave(HONEST, [FORGED[i] for i in forged], picks))
    state, decisions = fold_many(empty_state(), [lg for _h, lg in events], VERIFIER)
    honest_state, honest_decisions = fold_many(empty_state(), [lg for h, lg in events if h], VERIFIER)
    assert honest_decisions == ()  # the honest story is honest
    assert all(isinstance(d, t.EventRefused) for d in decisions) and len(decisions) == len(forged)
    assert views(state) == views(honest_state)
    assert state == honest_state


def test_without_verification_the_same_forgeries_would_change_the_view():
    """The property is not vacuous: folded insecurely, the forged events do reach proxies."""
    events = logged_in_order([(True, e) for e in HONEST] + [(False, e) for e in FORGED])
    insecure, _ = fold_many(empty_state(), [lg for _h, lg in events])
    honest, _ = fold_many(empty_state(), [lg for h, lg in events if h], VERIFIER)
    assert views(insecure) != views(honest)
