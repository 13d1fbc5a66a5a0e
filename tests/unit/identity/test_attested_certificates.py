"""Stories: an attested event's certificate is vouched for with its signature; the time checks still run.

Replay answers an attested event (decoded from a record in a projector's
attested run it matched: ``as_attested``) without checking its signature, and without
parsing and checking its signer's certificate: the projector attested the
signature only after verifying it with a certificate that passed that check
(``identity.verifier``). What depends on the event's log time (issued, valid,
revoked) is still checked for every event, and a certificate this verifier
found untrusted stays untrusted.
"""

from __future__ import annotations

import pytest

from events import types as t
from identity import pki
from tests.unit.identity.flapping import IDENT, health
from tests.unit.projector.signed import DOMAIN, MS0, T0, as_attested, sidecar, signed


def test_an_attested_event_is_verified_without_checking_its_signers_certificate(trust, monkeypatch):
    signer = trust.issue(IDENT)
    verifier = trust.verifier()
    attested, unattested = as_attested(signed(health(0), signer)), signed(health(1), signer)

    def no_certificate_check(serial):
        raise AssertionError(f"the certificate of {serial} was checked")

    monkeypatch.setattr(verifier, "_check_chain", no_certificate_check)
    verdict = verifier.verdict(attested, MS0 + 1)
    assert (verdict.author, verdict.problem) == (IDENT, None)
    assert verifier.vouched_hits == 1
    with pytest.raises(AssertionError, match="was checked"):  # an unattested event of the serial: the full checks
        verifier.verdict(unattested, MS0 + 2)


def test_the_log_time_checks_still_refuse_an_attested_event(trust):
    signer = trust.issue(IDENT)
    verifier = trust.verifier()
    envs = [as_attested(signed(health(n), signer)) for n in range(3)]
    issued_ms = MS0 - 60_000  # ``Trust.issue`` logs the issuance at its not-before, a minute before MS0
    assert verifier.verdict(envs[0], issued_ms - 1).problem == "unknown_signer"
    assert verifier.verdict(envs[1], issued_ms + 24 * 3_600_000).problem == "expired"
    trust.revoke(IDENT, signer, MS0 + 5)
    verifier.update(trust.identity_events[-1:])
    assert verifier.verdict(envs[2], MS0 + 4).author == IDENT
    assert verifier.verdict(envs[2], MS0 + 5).problem == "revoked"


def test_a_certificate_found_untrusted_stays_untrusted_for_attested_events(trust):
    other = pki.create_root(DOMAIN, now=T0)
    rogue = trust.issue(IDENT, ca=other)  # logged by our root, but the certificate is not signed by it
    verifier = trust.verifier()
    first, second = signed(health(0), rogue), signed(health(1), rogue)
    assert verifier.verdict(first, MS0 + 1).problem == "untrusted_certificate"
    assert verifier.verdict(as_attested(second), MS0 + 2).problem == "untrusted_certificate"


def test_attested_events_after_the_certificate_is_found_untrusted_are_refused_too(trust):
    """The other order: attested events first (answered from the issuance, memoized), then an unattested one
    finds the certificate untrusted; the attested events after it are refused, not answered from the memo."""
    other = pki.create_root(DOMAIN, now=T0)
    rogue = trust.issue(IDENT, ca=other)
    verifier = trust.verifier()
    before, unattested, after = (as_attested(signed(health(0), rogue)), signed(health(1), rogue),
                                 as_attested(signed(health(2), rogue)))
    assert verifier.verdict(before, MS0 + 1).author == IDENT
    assert verifier.verdict(unattested, MS0 + 2).problem == "untrusted_certificate"
    assert verifier.verdict(after, MS0 + 3).problem == "untrusted_certificate"


def test_a_verifier_never_attests_an_event_whose_certificate_is_untrusted(trust):
    """Why the attestation can stand for the certificate check: the projector's verifier (``record_vouches``)
    names only events it verified with a certificate that passed it."""
    other = pki.create_root(DOMAIN, now=T0)
    rogue, honest = trust.issue(IDENT, ca=other), trust.issue(sidecar("web", "web-2"))
    live = trust.verifier()
    live.record_vouches = vouches = []
    rogue_event = signed(health(0), rogue)
    honest_event = signed(t.InstanceHealthChanged(service="web", instance_id="web-2", status="unhealthy",
                                                  observer="web-2"), honest)
    assert live.verdict(rogue_event, MS0 + 1).problem == "untrusted_certificate"
    assert live.verdict(honest_event, MS0 + 2).verified
    assert vouches == [honest_event.received_digest]
