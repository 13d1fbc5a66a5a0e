"""Stories: replay takes the projector's attestations instead of checking each signature, and nothing else.

Given a log mixing honest events (signed alone, and a batch signed once), a
tampered event, a forged member of the batch, an unsigned event and one
signed by a revoked certificate, and the projector's attestation of the
signatures its fold found good:

- the attestation verified once stands for every honest event's ECDSA
  check, and the fold gives the very state and refusals of a full check;
- a forged attestation (altered after signing), one signed by an identity
  that is not a projector, and one the projector signed but that lists a
  digest matching no event's signature are not believed, or vouch for
  nothing: the tampered and forged events are still refused, the state is
  the same;
- ``rebuild`` reads the attestations from the log by itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import random

import orjson
import pytest
from aiokafka import TopicPartition

from events import topics
from events import types as t
from events.codec import encode
from events.envelope import received_digest_of
from projector.attestations import FORMAT, MAGIC, AttestationError, decode_attestation, encode_attestation
from projector.framing import HEADER_LEN as _LEN
from projector.fold import fold_many
from projector.state import empty_state
from replay import attestations
from replay.attestations import vouch_records
from replay.engine import rebuild
from tests.unit.projector.signed import DOMAIN, MS0, Trust, checker
from tests.unit.identity.test_verify_ahead import mixed_log
from tests.unit.replay.fake_consumer import FakeConsumer, Rec
from identity import spiffe


@pytest.fixture(scope="module")
def trust() -> Trust:
    return Trust()


@pytest.fixture(scope="module")
def story(trust):
    """The log, the projector's fold of it (state, refusals) and the digests its verifier found good."""
    events = mixed_log(trust)
    projector_signer(trust)  # issued (logged) before any verifier is made from the trust
    trust.signers.get(checker().uri) or trust.issue(checker())
    projector = trust.verifier()
    projector.record_vouches = good = []
    expected = fold_many(empty_state(), events, projector)
    return events, expected, good


def record(value: bytes, offset: int = 0, at: int = MS0 + 10_000) -> Rec:
    return Rec(topics.ATTESTATIONS, 0, offset, at, value, b"attestation")


def projector_signer(trust: Trust):
    ident = spiffe.projector(DOMAIN)
    return trust.signers.get(ident.uri) or trust.issue(ident)


def refused_problems(decisions) -> list[str]:
    return sorted(d.problem for d in decisions if isinstance(d, t.EventRefused))


def test_a_projector_attestation_stands_for_the_ecdsa_checks_and_changes_no_answer(trust, story):
    events, expected, good = story
    replaying = trust.verifier()
    vouched = vouch_records(replaying, [record(encode_attestation(good, projector_signer(trust)))])
    assert (vouched.accepted, vouched.refused, vouched.digests) == (1, 0, 7)
    checked_for_the_attestation = replaying.checked
    got = fold_many(empty_state(), events, replaying)
    assert got == expected
    assert refused_problems(got[1]) == ["bad_signature", "bad_signature", "revoked", "unsigned"]
    assert replaying.vouched_hits == 7
    # only the tampered event and the forged batch member are checked the full way
    assert replaying.checked - checked_for_the_attestation == 2


def test_a_forged_attestation_is_not_believed_and_the_tampered_events_are_still_refused(trust, story):
    events, expected, good = story
    bad = [lg.envelope.received_digest for lg in events if lg.envelope.signer is not None]  # the tampered ones too
    honest = encode_attestation(good, projector_signer(trust))
    header, _digests = decode_attestation(honest)
    body = b"".join(bad)
    # the projector's header, re-pointed at a body listing the bad signatures too: its signature no longer holds
    forged_header = {**header, "digests": len(bad), "digests_sha256": hashlib.sha256(body).hexdigest()}
    head = orjson.dumps(forged_header, option=orjson.OPT_SORT_KEYS)
    forged = MAGIC + bytes((FORMAT,)) + _LEN.pack(len(head)) + head + body
    altered_body = honest[:-32] + bad[-1]  # one digest swapped, the header left as signed
    replaying = trust.verifier()
    vouched = vouch_records(replaying, [record(forged, 0), record(altered_body, 1), record(b"MLATTEST\x01", 2)])
    assert (vouched.accepted, vouched.refused) == (0, 3)
    assert vouched.why[0].startswith("offset 0: bad_signature: the signature does not verify")
    assert vouched.why[1] == "offset 1: attestation body does not match its header's SHA-256"
    assert vouched.why[2] == "offset 2: not a meshlog attestation (bad magic)"
    got = fold_many(empty_state(), events, replaying)
    assert got == expected and replaying.vouched_hits == 0
    assert refused_problems(got[1]) == ["bad_signature", "bad_signature", "revoked", "unsigned"]


def test_an_attestation_by_an_identity_that_is_not_a_projector_is_not_believed(trust, story):
    events, expected, _good = story
    bad = [lg.envelope.received_digest for lg in events if lg.envelope.signer is not None]
    by_checker = encode_attestation(bad, trust.signers.get(checker().uri) or trust.issue(checker()))
    replaying = trust.verifier()
    vouched = vouch_records(replaying, [record(by_checker)])
    assert (vouched.accepted, vouched.refused) == (0, 1)
    assert vouched.why == [f"offset 0: it is signed by {checker().uri}, not by a projector"]
    assert fold_many(empty_state(), events, replaying) == expected


def test_a_projector_attestation_of_digests_that_match_no_event_makes_no_bad_event_pass(trust, story):
    events, expected, good = story
    tampered = events[-6]  # the registration altered after signing (mixed_log appends it before the batch)
    assert tampered.offset == 9
    env = tampered.envelope
    # the digest of the record as it was signed (the original bytes), of the tampered record spelled otherwise
    # (the same fields, a space more), and of nothing: none is the digest of the tampered record's bytes
    original = next(lg for lg in events if lg.envelope.signature == env.signature and lg is not tampered)
    respelled = encode(env).replace(b'"payload":', b'"payload": ')
    listed = [original.envelope.received_digest, received_digest_of(respelled), hashlib.sha256(b"x").digest()]
    assert env.received_digest not in listed
    replaying = trust.verifier()
    vouched = vouch_records(replaying, [record(encode_attestation(listed, projector_signer(trust)))])
    assert vouched.accepted == 1
    got = fold_many(empty_state(), events, replaying)
    assert got == expected
    refusal = next(d for d in got[1] if isinstance(d, t.EventRefused) and d.source_offset == 9
                   and d.source_topic == topics.REGISTRATIONS)
    assert refusal.problem == "bad_signature"


def test_decoding_refuses_what_is_not_a_whole_attestation(trust, story):
    _events, _expected, good = story
    value = encode_attestation(good, projector_signer(trust))
    for broken, why in ((b"MLSNAP\x01", "bad magic"), (value[:30], "truncated"), (value[:-1], "does not hold"),
                        (value[:8] + b"\x01" + value[9:], "format 1")):
        with pytest.raises(AttestationError, match=why):
            decode_attestation(broken)
    with pytest.raises(ValueError):
        encode_attestation([], projector_signer(trust))


def test_rebuild_reads_the_attestations_of_the_log_and_folds_the_same_state(trust, story, monkeypatch):
    events, expected, good = story
    monkeypatch.setattr(attestations, "MIN_EVENTS", 1)  # the story's log is short
    logs: dict[TopicPartition, list[Rec]] = {}
    for lg in events:
        tp = TopicPartition(lg.topic, 0)
        logs.setdefault(tp, []).append(Rec(lg.topic, 0, len(logs.get(tp, [])), lg.timestamp_ms,
                                           encode(lg.envelope), lg.envelope.payload.key().encode()))
    at = max(lg.timestamp_ms for lg in events)
    logs[TopicPartition(topics.ATTESTATIONS, 0)] = [record(encode_attestation(good, projector_signer(trust)), 0,
                                                           at + 5)]
    verifier = trust.verifier()
    rebuilt = asyncio.run(rebuild(FakeConsumer(logs, random.Random(3)), at, verifier=verifier))
    assert rebuilt.stats["attestations"] == {"accepted": 1, "refused": 0, "digests": 7}
    assert verifier.vouched_hits == 7
    full = asyncio.run(rebuild(FakeConsumer({tp: r for tp, r in logs.items() if tp.topic != topics.ATTESTATIONS},
                                            random.Random(3)), at, verifier=trust.verifier()))
    assert rebuilt.state == full.state == expected[0]
