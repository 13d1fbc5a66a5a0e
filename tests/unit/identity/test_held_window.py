"""Stories: the verifier's memo of a serial's held window answers attested events exactly as the full checks do.

Once a serial has signed a verified event, ``Verifier.verdict`` answers its
attested events with two comparisons against the memoized window (see
``identity.verifier``). The memo must never outlive the registry it was
computed from:

- a revocation folded (``update``) between two attested events of the same
  signer refuses the later one (``revoked``), though the memo held the
  serial before;
- so does a registry replaced by assignment;
- an attested event logged outside the window (before the issuance was
  logged, at or after the not-after) is refused as the full checks refuse
  it, memo or not.
"""

from __future__ import annotations

from datetime import timedelta

from events import types as t
from events.envelope import Logged
from identity.registry import fold_many as fold_identities
from tests.unit.identity.flapping import IDENT, health
from tests.unit.projector.signed import MS0, Trust, as_attested, signed



def attested_verifier(trust: Trust, signer, count: int):
    """A verifier holding the trust's identities so far, and ``count`` envelopes by ``signer`` as replay decodes
    them in a matched attested run."""
    verifier = trust.verifier()
    return verifier, [as_attested(signed(health(n), signer)) for n in range(count)]


def test_a_revocation_folded_between_two_events_of_a_signer_refuses_the_later_one(trust):
    signer = trust.issue(IDENT)
    verifier, (first, second, third) = attested_verifier(trust, signer, 3)
    assert verifier.verdict(first, MS0 + 1).author == IDENT
    assert verifier.verdict(second, MS0 + 2).author == IDENT  # the window is memoized now
    hits = verifier.vouched_hits
    trust.revoke(IDENT, signer, MS0 + 3)
    verifier.update(trust.identity_events[-1:])
    later = verifier.verdict(third, MS0 + 4)
    assert (later.author, later.problem) == (None, "revoked")
    assert verifier.vouched_hits == hits  # refused by the full checks, not answered from the memo
    # an event logged before the revocation is still verified: the answer depends on the log time only
    assert verifier.verdict(second, MS0 + 2).author == IDENT


def test_a_registry_replaced_by_assignment_empties_the_memo(trust):
    signer = trust.issue(IDENT)
    verifier, (first, second) = attested_verifier(trust, signer, 2)
    assert verifier.verdict(first, MS0 + 1).author == verifier.verdict(first, MS0 + 2).author == IDENT
    trust.revoke(IDENT, signer, MS0 + 3)
    verifier.registry = fold_identities(verifier.registry, trust.identity_events[-1:])
    assert verifier.verdict(second, MS0 + 4).problem == "revoked"


def test_an_attested_event_outside_the_memoized_window_gets_the_full_checks_answer(trust):
    issued_ms = MS0 - 60_000  # ``Trust.issue`` logs the issuance at its not-before, a minute before MS0
    signer = trust.issue(IDENT, lifetime=timedelta(hours=1))
    not_after_ms = issued_ms + 3_600_000
    verifier, (first, second, early, late) = attested_verifier(trust, signer, 4)
    assert verifier.verdict(first, MS0).author == verifier.verdict(second, MS0 + 1).author == IDENT
    assert verifier.verdict(early, issued_ms - 1).problem == "unknown_signer"
    assert verifier.verdict(late, not_after_ms - 1).author == IDENT
    assert verifier.verdict(late, not_after_ms).problem == "expired"
    # the same answers as a verifier that never memoized this serial
    fresh = trust.verifier()
    assert fresh.verdict(early, issued_ms - 1).problem == "unknown_signer"
    assert fresh.verdict(late, not_after_ms).problem == "expired"


def test_the_fold_refuses_the_event_after_a_revocation_of_its_signer(trust):
    """Live: identities folded between two batches of the fold; the memo from the first batch is not used."""
    from projector.fold import fold_many
    from projector.state import empty_state

    signer = trust.issue(IDENT)
    verifier, envs = attested_verifier(trust, signer, 3)
    events = [Logged(env, t.InstanceHealthChanged.TOPIC, 0, n, MS0 + 1 + n) for n, env in enumerate(envs)]
    state, refused = fold_many(empty_state(), events[:2], verifier)
    assert refused == ()
    trust.revoke(IDENT, signer, MS0 + 2)
    verifier.update(trust.identity_events[-1:])
    state, refused = fold_many(state, events[2:], verifier)
    assert [(d.problem, d.source_offset) for d in refused] == [("revoked", 2)]
