"""events.attested: digests read in the order they were attested are found by a cursor, any other order by a
set built only then; either way the answer is exactly set membership.

Readers (the record decoder, the verifier) step a cursor of their own when the digest they hold is the one at
it; tests here drive the real readers with records in order, reversed, shuffled, with records nobody attested
and with a digest that is a prefix of an attested one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random

import pytest

from events.attested import DIGEST_BYTES, AttestedDigests
from events.envelope import received_digest_of
from events.record_decoder import RecordDecoder
from projector.fold import fold_many
from projector.state import empty_state
from tests.unit.events.test_record_decoder import Rec
from tests.unit.events.test_record_decoder_signed import TOPIC, _payloads, single_signed
from tests.unit.projector.signed import MS0, Trust, sidecar


def _digest(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest()


def _read(attested: AttestedDigests, queries: list[bytes]) -> list[bool]:
    """What a reader answers, stepping its cursor as the decoder and the verifier do."""
    cursor, answers = 0, []
    for d in queries:
        if attested.at(d, cursor):
            cursor += DIGEST_BYTES
            answers.append(True)
        else:
            answers.append(d in attested)
    return answers


def test_digests_read_in_the_order_attested_are_found_without_building_a_set():
    digests = [_digest(n) for n in range(1000)]
    attested = AttestedDigests(digests[:600])
    attested.add_body(b"".join(digests[600:]))  # a second attestation's body
    assert _read(attested, digests) == [True] * 1000
    assert attested._set is None and len(attested) == 1000


@pytest.mark.parametrize("seed", range(20))
def test_in_any_order_the_answer_is_set_membership(seed):
    rnd = random.Random(seed)
    digests = [_digest(n) for n in range(300)]
    attested = AttestedDigests(digests[:200])
    queries = digests[:]  # 100 never attested
    if seed % 3 == 0:
        queries.reverse()
    elif seed % 3 == 1:
        rnd.shuffle(queries)
    else:  # in order, with unattested ones and repeats mixed in
        queries = [q for d in digests[:200] for q in ([d, rnd.choice(digests[200:])] if rnd.random() < 0.2 else [d])]
        queries += rnd.sample(digests[:200], 20)
    queries += [d[:16] for d in digests[:5]] + [digests[0] + b"x", b""]  # a prefix, a longer one, none
    truth = set(digests[:200])
    assert _read(attested, queries) == [q in truth for q in queries]


def test_digests_added_after_the_set_was_built_are_in_it():
    attested = AttestedDigests([_digest(1)])
    assert _digest(2) not in attested  # builds the set
    attested.add([_digest(2)])
    assert _digest(2) in attested and list(attested) == [_digest(1), _digest(2)]


def test_only_whole_digests_are_taken():
    with pytest.raises(ValueError, match="32 bytes"):
        AttestedDigests([b"short"])
    with pytest.raises(ValueError, match="multiple of 32"):
        AttestedDigests().add_body(b"x" * 33)
    assert not AttestedDigests() and b"" not in AttestedDigests()


@pytest.fixture(scope="module")
def signed_values():
    trust = Trust()
    trust.issue(sidecar("web", "1"))
    return trust, [single_signed(trust, p) for p in _payloads()]


@pytest.mark.parametrize("order", ["attested", "reversed", "shuffled"])
def test_the_decoder_and_the_verifier_take_attested_records_in_any_order(signed_values, order):
    trust, values = signed_values
    attested_values = values[:-1]  # the last one no attestation names: decoded whole, verified the full way
    replaying = trust.verifier()
    replaying.vouch([received_digest_of(v) for v in attested_values])
    reading = list(enumerate(values))
    if order == "reversed":
        reading.reverse()
    elif order == "shuffled":
        random.Random(7).shuffle(reading)
    decoder = RecordDecoder(attested=replaying.attested())
    logged = [decoder(Rec(v, TOPIC, 0, i, MS0 + i)) for i, v in reading]
    assert decoder.lazy == len(attested_values)
    assert [lg.envelope.signed_bytes is None for lg in logged] == [i < len(attested_values) for i, _v in reading]
    whole = [RecordDecoder()(Rec(v, TOPIC, 0, i, MS0 + i)) for i, v in reading]
    assert fold_many(empty_state(), logged, replaying) == fold_many(empty_state(), whole, trust.verifier())
    assert replaying.vouched_hits == len(attested_values) and replaying.checked == 1


def test_records_folded_in_the_order_attested_need_no_set_in_the_decoder_or_the_verifier(signed_values):
    trust, values = signed_values
    replaying = trust.verifier()
    replaying.vouch([received_digest_of(v) for v in values])
    decoder = RecordDecoder(attested=replaying.attested())
    logged = [decoder(Rec(v, TOPIC, 0, i, MS0 + i)) for i, v in enumerate(values)]
    fold_many(empty_state(), logged, replaying)
    assert decoder.lazy == replaying.vouched_hits == len(values)
    assert replaying.attested()._set is None


def test_the_verifier_takes_no_prefix_of_the_digest_at_its_cursor(signed_values):
    trust, values = signed_values
    replaying = trust.verifier()
    replaying.vouch([received_digest_of(values[0])])
    lazy = RecordDecoder(attested=replaying.attested())(Rec(values[0], TOPIC, 0, 0, MS0)).envelope
    cut_short = dataclasses.replace(lazy, received_digest=lazy.received_digest[:16])
    assert replaying.verdict(cut_short, MS0).problem == "bad_signature"  # not attested: no signed bytes to check
    assert replaying.verdict(lazy, MS0).verified and replaying.vouched_hits == 1
