"""events.record_decoder given what a read matched of the projector's attested runs: a record in a matched run
is decoded without its signature fields; any other signed record is decoded (and refused) exactly as before.

A run's digest covers the records' bytes as received, so respelling a record (the same fields, other bytes),
changing its proof or its signature leaves its run unmatched: every record of it decoded whole, verified the
full way. An envelope decoded lazily verifies only as attested (``ATTESTED_RUN``), which only that path sets.
"""

from __future__ import annotations

import dataclasses
import hashlib

import orjson
import pytest

from events import topics
from events.codec import decode_record, encode
from events.envelope import ATTESTED_RUN, Logged, new_event, received_digest_of
from events.errors import EventValidationError
from events.record_decoder import RecordDecoder
from identity import records as identity_records
from projector.attestations import runs_of
from projector.fold import fold_many
from projector.state import empty_state
from replay.attested_runs import AttestedRuns
from tests.unit.events.test_record_decoder import Rec
from tests.unit.events.test_record_decoder_signed import TOPIC, _payloads, batch_signed, single_signed
from tests.unit.projector.helpers import OCCURRED
from tests.unit.projector.signed import MS0, Trust, sidecar


@pytest.fixture(scope="module")
def trust():
    trust = Trust()
    trust.issue(sidecar("web", "1"))
    return trust


def _records(values: list[bytes], topic: str = TOPIC) -> list[Rec]:
    return [Rec(v, topic, 0, i, MS0 + i) for i, v in enumerate(values)]


def _logged(decoder, values: list[bytes]) -> list[Logged]:
    return [decoder(r) for r in _records(values)]


def matched(attested: list[bytes], found: list[bytes] | None = None, topic: str = TOPIC):
    """What a read finding ``found`` (default: the same) at offsets 0.. matches of a projector's attestation of
    ``attested`` there: the ``RunScreen`` a decoder is given."""
    runs = AttestedRuns(runs_of((topic, 0, r.offset, r.value, True) for r in _records(attested, topic)))
    screen = runs.screen()
    records = _records(found if found is not None else attested, topic)
    assert screen.offer(topic, 0, records) + screen.finish(topic, 0) == records
    return screen


def test_the_codec_and_the_fast_path_give_a_signed_record_the_digest_of_its_bytes(trust):
    single, batch = single_signed(trust, _payloads()[0]), batch_signed(trust, _payloads())[1]
    decoder = RecordDecoder()
    for value in (single, batch):
        codec_env = decode_record(Rec(value, TOPIC)).envelope
        decoder(Rec(value, TOPIC))
        fast_env = decoder(Rec(value, TOPIC)).envelope  # the memo hit
        assert codec_env.received_digest == fast_env.received_digest == hashlib.sha256(value).digest()
    unsigned = encode(new_event(_payloads()[0], producer="p", occurred_at=OCCURRED))
    assert decode_record(Rec(unsigned, TOPIC)).envelope.received_digest is None
    assert decoder(Rec(unsigned, TOPIC)).envelope.received_digest is None


def test_attested_records_are_decoded_without_their_signature_fields_and_fold_as_verified_ones(trust):
    values = [single_signed(trust, p) for p in _payloads()] + batch_signed(trust, _payloads())
    projector = trust.verifier()
    projector.record_vouches = vouches = []
    expected = fold_many(empty_state(), _logged(RecordDecoder(), values), projector)
    assert vouches == [received_digest_of(v) for v in values]  # every signature good: all attested
    replaying = trust.verifier()
    decoder = RecordDecoder(attested=matched(values))
    first = _logged(decoder, values)  # first sightings of a payload: the codec reads all but the signature fields
    again = _logged(decoder, values)  # memo hits
    assert decoder.lazy == 2 * len(values) and decoder.misses == 3
    assert all(lg.envelope.signed_bytes is None and lg.envelope.proof is None and lg.envelope.signer
               and lg.envelope.received_digest is ATTESTED_RUN for lg in first + again)
    assert first == again  # envelopes compare without signed_bytes, proof included: none has one
    assert fold_many(empty_state(), first, replaying) == fold_many(empty_state(), again, replaying) == expected
    assert replaying.checked == 0 and replaying.vouched_hits == 2 * len(values)


def test_a_record_not_attested_is_decoded_whole_and_a_bad_one_still_refused(trust):
    """The log holds other bytes where the attested run says: a respelled copy, a changed proof, a bad signature
    or a malformed proof in its place leaves the run unmatched, and each record is decoded (or refused) and
    verified exactly as without attestations."""
    good = batch_signed(trust, _payloads())
    warm = RecordDecoder(attested=matched(good))
    _logged(warm, good)  # the run matched whole: every record lazily
    assert warm.lazy == len(good)
    verifier = trust.verifier()
    doc = orjson.loads(good[1])
    respelled = good[1].replace(b'"payload":', b'"payload": ')
    other_proof = orjson.dumps({**doc, "proof": orjson.loads(good[0])["proof"]}, option=orjson.OPT_SORT_KEYS)
    forged = orjson.dumps({**doc, "producer": "q"}, option=orjson.OPT_SORT_KEYS)  # the signature no longer holds
    for value, problem in ((respelled, None), (other_proof, "bad_signature"), (forged, "bad_signature")):
        found = [good[0], value, *good[2:]]
        decoder = RecordDecoder(attested=matched(good, found))
        envs = [lg.envelope for lg in _logged(decoder, found)]
        assert decoder.lazy == 0 and all(env.signed_bytes is not None for env in envs)  # their signatures checked
        assert verifier.verdict(envs[1], MS0).problem == problem
    malformed = orjson.dumps({**doc, "proof": ["X" + "A" * 44]}, option=orjson.OPT_SORT_KEYS)
    decoder = RecordDecoder(attested=matched(good, [good[0], malformed, *good[2:]]))
    with pytest.raises(EventValidationError, match="proof"):
        decoder(_records([good[0], malformed])[1])
    assert verifier.checked == 3  # the batch root (for the respelled record), and the roots the others lead to


def test_an_envelope_without_its_signed_bytes_verifies_only_as_attested(trust):
    value = single_signed(trust, _payloads()[0])
    decoder = RecordDecoder(attested=matched([value]))
    env = _logged(decoder, [value])[0].envelope
    assert env.signed_bytes is None and env.received_digest is ATTESTED_RUN
    assert trust.verifier().verdict(env, MS0).verified
    # the same envelope naming its record by the record's own digest, not as attested: its signature is not checked
    unmarked = dataclasses.replace(env, received_digest=received_digest_of(value))
    verdict = trust.verifier().verdict(unmarked, MS0)
    assert (verdict.verified, verdict.problem) == (False, "bad_signature")
    assert "decoded without its signed bytes" in verdict.detail


def test_identity_events_are_never_decoded_lazily():
    """The root's identity facts are checked with their signed bytes (``Verifier.identity_refusal``)."""
    from identity import pki, spiffe

    ca = pki.create_root("mesh.local")
    root = identity_records.authority_signer(ca)
    cert = pki.issue(ca, spiffe.sidecar("mesh.local", "db", "1"), pki.generate_key().public_key())
    value = encode(root.sign(new_event(identity_records.issued(cert, ca.certificate, how="offline",
                                                               requested_by="t"))))
    decoder = RecordDecoder(attested=matched([value], topic=topics.IDENTITIES))
    for _ in range(2):
        env = decoder(Rec(value, topics.IDENTITIES)).envelope
        assert env.signed_bytes is not None
    assert decoder.lazy == 0


def test_a_received_envelope_signed_again_does_not_keep_the_digest_of_its_record(trust):
    """Else the attestation of the record it was decoded from would stand for the new signature."""
    value = single_signed(trust, _payloads()[0])
    received = decode_record(Rec(value, TOPIC)).envelope
    assert received.received_digest is not None
    other = trust.issue(sidecar("web", "2"))
    assert other.sign(received).received_digest is None
    assert all(env.received_digest is None for env in other.sign_batch([received, received]))
