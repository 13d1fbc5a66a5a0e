"""The checker folds registrations verified like the projector: a forged one is refused and never probed.

Stories, on the checker's own fold (``Checker.fold``, the projector's
``fold_many`` with the verifier ``identity.verifier``):
- given reviews/r1 registered by its own sidecar, and reviews/evil
  registered by web's sidecar identity (a valid certificate of another
  service), the checker tracks r1 and refuses evil as not permitted;
- given an unsigned registration, it is refused as unsigned;
- in the explicit insecure mode, both are folded (unverified), as before.
"""

from __future__ import annotations

import pytest

from events import types as t
from registrar.healthcheck.checker import Checker, Settings
from tests.unit.projector.signed import SignedLog, Trust, sidecar


@pytest.fixture(scope="module")
def trust() -> Trust:
    return Trust()


def log_with_forgeries(trust: Trust) -> SignedLog:
    log = SignedLog(trust)
    log.by(sidecar("reviews", "r1")).register("reviews", "r1", "10.0.0.2", 9080)
    log.by(sidecar("web", "w1")).register("reviews", "evil", "10.6.6.6", 22, weight=5)  # another service's identity
    log.by(None).register("reviews", "ghost", "10.6.6.7", 22)  # unsigned
    return log


def checker(trust: Trust, *, insecure: bool = False) -> Checker:
    c = Checker(Settings(bootstrap="h:1", checker_id="hc-1", insecure_events=insecure))
    if c.verifier is not None:
        c.verifier.update(trust.identity_events)  # what IdentityFeed folds from the identities topic
    return c


def test_a_checker_refuses_forged_and_unsigned_registrations_and_tracks_the_honest_one(trust):
    log = log_with_forgeries(trust)
    c = checker(trust)
    decisions = c.fold(log.events)
    assert sorted(c.state.instances) == ["reviews/r1"]
    refused = [(d.event_key, d.problem, d.reason) for d in decisions if isinstance(d, t.EventRefused)]
    assert refused == [
        ("reviews/evil", "not_permitted", "spiffe://mesh.local/sidecar/web/w1 may not state instance.registered of "
         "instance reviews/evil: a sidecar may state facts only about its own instance web/w1"),
        ("reviews/ghost", "unsigned", "the event is not signed"),
    ]


def test_in_insecure_mode_a_checker_folds_them_unverified(trust):
    c = checker(trust, insecure=True)
    assert c.verifier is None
    assert c.fold(log_with_forgeries(trust).events) == ()
    assert sorted(c.state.instances) == ["reviews/evil", "reviews/ghost", "reviews/r1"]
