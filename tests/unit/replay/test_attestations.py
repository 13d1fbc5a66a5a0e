"""Stories: replay takes the projector's attestations instead of checking each signature, and nothing else.

Given a log mixing honest events (signed alone, and a batch signed once), a
tampered event, a forged member of the batch, an unsigned event and one
signed by a revoked certificate, and the projector's attestation of the runs
of records whose signatures its fold found good, ``rebuild`` reads it all
from the log (fetched in random slices) and:

- the attestation verified once stands for every honest event's ECDSA
  check, and the fold gives the very state and refusals of a full check;
- a forged attestation (altered after signing, or of a format this build
  does not read) and one signed by an identity that is not a projector are
  not believed; one the projector signed whose runs do not match the bytes
  at their offsets vouches for nothing: the tampered and forged events are
  still refused, the state is the same.
"""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest
from aiokafka import TopicPartition

from events import topics
from events.codec import encode
from events.envelope import received_digest_of
from projector.attestations import (FORMAT, MAGIC, AttestationError, Run, decode_attestation, encode_attestation,
                                    run_digest, runs_of)
from projector.framing import HEADER_LEN as _LEN
from projector.fold import fold_many
from projector.state import empty_state
from replay import attestations
from replay.engine import rebuild
from tests.unit.projector.signed import DOMAIN, MS0, Trust, checker
from tests.unit.identity.test_verify_ahead import mixed_log
from tests.unit.replay.fake_consumer import FakeConsumer, Rec
from identity import spiffe

REFUSED = {"bad_signature": 2, "revoked": 1, "unsigned": 1}


@pytest.fixture(scope="module")
def trust() -> Trust:
    return Trust()


@pytest.fixture(scope="module")
def story(trust):
    """The log's records, the projector's fold of it (state, refusals), and whether its verifier found each record
    well signed."""
    events = mixed_log(trust)
    projector_signer(trust)  # issued (logged) before any verifier is made from the trust
    trust.signers.get(checker().uri) or trust.issue(checker())
    projector = trust.verifier()
    projector.record_vouches = good = []
    expected = fold_many(empty_state(), events, projector)
    logs: dict[TopicPartition, list[Rec]] = {}
    for lg in events:
        tp = TopicPartition(lg.topic, 0)
        logs.setdefault(tp, []).append(Rec(lg.topic, 0, len(logs.get(tp, [])), lg.timestamp_ms,
                                           encode(lg.envelope), lg.envelope.payload.key().encode()))
    good = set(good)
    return logs, expected, lambda r: received_digest_of(r.value) in good


def record(value: bytes, offset: int = 0, at: int = MS0 + 10_000) -> Rec:
    return Rec(topics.ATTESTATIONS, 0, offset, at, value, b"attestation")


def projector_signer(trust: Trust):
    ident = spiffe.projector(DOMAIN)
    return trust.signers.get(ident.uri) or trust.issue(ident)


def in_merge_order(logs) -> list[Rec]:
    return sorted((r for records in logs.values() for r in records),
                  key=lambda r: topics.merge_order(r.timestamp, r.topic, r.partition, r.offset))


def replayed(trust, logs, attestation_values, seed: int = 3):
    """``rebuild`` of the story's log with these attestation records on it, and its verifier."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attestations, "MIN_EVENTS", 1)  # the story's log is short
        logs = {**logs, TopicPartition(topics.ATTESTATIONS, 0): [record(v, n) for n, v in
                                                                  enumerate(attestation_values)]}
        at = max(r.timestamp for tp, records in logs.items() if tp.topic != topics.ATTESTATIONS for r in records)
        verifier = trust.verifier()
        return asyncio.run(rebuild(FakeConsumer(logs, random.Random(seed)), at, verifier=verifier)), verifier


def test_a_projector_attestation_stands_for_the_ecdsa_checks_and_changes_no_answer(trust, story):
    logs, expected, good = story
    runs = runs_of((r.topic, r.partition, r.offset, r.value, good(r)) for r in in_merge_order(logs))
    # the registrations of w1 and r1, leaky's (r9 unsigned, the tampered one after it); the four honest batch members
    assert [(run.topic, run.first, run.last) for run in runs] == [
        (topics.REGISTRATIONS, 0, 1), (topics.REGISTRATIONS, 3, 3), (topics.HEALTH, 1, 4)]
    for seed in range(5):  # fetches cut the runs anywhere
        rebuilt, verifier = replayed(trust, logs, [encode_attestation(runs, projector_signer(trust))], seed)
        assert rebuilt.state == expected[0] and rebuilt.refused == REFUSED
        assert rebuilt.stats["attestations"] == {"accepted": 1, "refused": 0, "runs": 3, "records": 7,
                                                 "runs_matched": 3, "runs_mismatched": 0, "runs_unread": 0}
        assert verifier.vouched_hits == 7
        # the attestation's own signature, then only the tampered event and the forged batch member the full way
        assert verifier.checked == 3
    full, verifier = replayed(trust, logs, [])
    assert full.state == expected[0] and full.refused == REFUSED and verifier.vouched_hits == 0


def test_a_forged_attestation_is_not_believed_and_the_tampered_events_are_still_refused(trust, story):
    logs, expected, good = story
    merged = in_merge_order(logs)
    honest = encode_attestation(runs_of((r.topic, r.partition, r.offset, r.value, good(r)) for r in merged),
                                projector_signer(trust))
    header, _runs = decode_attestation(honest)
    # the projector's header, one run stretched over every registration (its digest made to match): the
    # signature no longer holds
    registrations = logs[TopicPartition(topics.REGISTRATIONS, 0)]
    stretched = Run(topics.REGISTRATIONS, 0, 0, len(registrations) - 1, len(registrations),
                    run_digest([r.value for r in registrations]))
    head = orjson.dumps({**header, "runs": [stretched.as_list(), *header["runs"][1:]]}, option=orjson.OPT_SORT_KEYS)
    forged = MAGIC + bytes((FORMAT,)) + _LEN.pack(len(head)) + head
    older = MAGIC + bytes((2,)) + honest[len(MAGIC) + 1:]
    rebuilt, verifier = replayed(trust, logs, [forged, honest + b"\x00", older])
    assert rebuilt.stats["attestations"]["accepted"] == 0 and rebuilt.stats["attestations"]["refused"] == 3
    assert rebuilt.state == expected[0] and rebuilt.refused == REFUSED and verifier.vouched_hits == 0
    got = attestations.vouch_records(trust.verifier(), [record(forged, 0), record(honest + b"\x00", 1),
                                                        record(older, 2)])
    assert got.why[0].startswith("offset 0: bad_signature: the signature does not verify")
    assert got.why[1] == "offset 1: attestation has bytes after its header"
    assert got.why[2] == "offset 2: attestation format 2 is not understood by this build (knows 3)"


def test_an_attestation_by_an_identity_that_is_not_a_projector_is_not_believed(trust, story):
    logs, expected, _good = story
    everything = runs_of((r.topic, r.partition, r.offset, r.value, True) for r in in_merge_order(logs))
    by_checker = encode_attestation(everything, trust.signers.get(checker().uri) or trust.issue(checker()))
    got = attestations.vouch_records(trust.verifier(), [record(by_checker)])
    assert (got.accepted, got.refused) == (0, 1)
    assert got.why == [f"offset 0: it is signed by {checker().uri}, not by a projector"]
    rebuilt, verifier = replayed(trust, logs, [by_checker])
    assert rebuilt.state == expected[0] and rebuilt.refused == REFUSED and verifier.vouched_hits == 0


def test_a_projector_attested_run_that_does_not_match_the_log_makes_no_bad_event_pass(trust, story):
    """Runs the projector signed, but not of these bytes: the tampered registration named with the digest of the
    record as it was signed, the whole batch with the forged member as if honest, and a run counting one record
    more than its offsets hold on the log (a record the reader does not find): none is matched."""
    logs, expected, good = story
    registrations = logs[TopicPartition(topics.REGISTRATIONS, 0)]
    health = logs[TopicPartition(topics.HEALTH, 0)]
    tampered, forged = registrations[-1], health[-1]
    original = registrations[1]  # r1's registration as signed: the tampered record is a copy, altered
    listed = [Run(topics.REGISTRATIONS, 0, tampered.offset, tampered.offset, 1, run_digest([original.value])),
              Run(topics.HEALTH, 0, 1, forged.offset, forged.offset, run_digest(
                  [r.value for r in health[1:-1]] + [health[-2].value])),
              Run(topics.REGISTRATIONS, 0, 0, 1, 2, run_digest([registrations[0].value]))]
    rebuilt, verifier = replayed(trust, logs, [encode_attestation(listed, projector_signer(trust))])
    got = rebuilt.stats["attestations"]
    assert (got["accepted"], got["runs_matched"], got["runs_mismatched"]) == (1, 0, 3)
    assert rebuilt.state == expected[0] and rebuilt.refused == REFUSED and verifier.vouched_hits == 0
    assert good(original) and not good(tampered) and not good(forged)


def test_decoding_refuses_what_is_not_a_whole_attestation(trust, story):
    logs, _expected, good = story
    runs = runs_of((r.topic, r.partition, r.offset, r.value, good(r)) for r in in_merge_order(logs))
    value = encode_attestation(runs, projector_signer(trust))
    for broken, why in ((b"MLSNAP\x01", "bad magic"), (value[:30], "truncated"), (value + b"x", "after its header"),
                        (value[:8] + b"\x02" + value[9:], "format 2")):
        with pytest.raises(AttestationError, match=why):
            decode_attestation(broken)
    header, _runs = decode_attestation(value)
    for item, why in (([topics.HEALTH, 0, 5, 4, 1, "00" * 32], "cannot hold"),
                      ([topics.HEALTH, 0, 1, 2, 3, "00" * 32], "cannot hold 3 records"),
                      ([topics.HEALTH, 0, 1, 2, 1, "zz" * 32], "digest"), ([topics.HEALTH, 0, 1, 2], "is not"),
                      (["", 0, 1, 2, 1, "00" * 32], "topic"), ([topics.HEALTH, -1, 1, 2, 1, "00" * 32], "cannot hold"),
                      ([topics.HEALTH, 0, 1.0, 2, 1, "00" * 32], "integers")):
        head = orjson.dumps({**header, "runs": [item]}, option=orjson.OPT_SORT_KEYS)
        with pytest.raises(AttestationError, match=why):
            decode_attestation(MAGIC + bytes((FORMAT,)) + _LEN.pack(len(head)) + head)
    with pytest.raises(ValueError):
        encode_attestation([], projector_signer(trust))
