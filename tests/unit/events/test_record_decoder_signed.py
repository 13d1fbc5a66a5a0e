"""events.record_decoder on signed envelopes: the fast path agrees with events.codec, signed_bytes included.

A signed record decoded from the memo must carry what the verifier reads (signer, signature, proof and
the exact ``signed_bytes``), so a good signature verifies and a tampered record is still refused.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings

from events.codec import decode_record, encode
from events.envelope import new_event
from events.errors import EventValidationError
from events.record_decoder import RecordDecoder
from tests.unit.projector.signed import MS0, Trust, sidecar
from tests.unit.projector.helpers import OCCURRED
from tests.unit.events import strategies as S
from tests.unit.replay.history import RandomHistory
from tests.unit.events.test_record_decoder import Rec

TOPIC = "meshlog.registrations"


@pytest.fixture(scope="module")
def trust():
    trust = Trust()
    trust.issue(sidecar("web", "1"))
    return trust


def _signer(trust):
    return trust.signers[sidecar("web", "1").uri]


def _payloads(n: int = 3):
    history = RandomHistory("signed", 2)
    return [history.registration(0, i) for i in range(n)]


def single_signed(trust, payload, **kw) -> bytes:
    env = new_event(payload, producer="p", occurred_at=OCCURRED, **kw)
    return encode(_signer(trust).sign(env))


def batch_signed(trust, payloads) -> list[bytes]:
    envs = [new_event(p, producer="p", occurred_at=OCCURRED) for p in payloads]
    return [encode(env) for env in _signer(trust).sign_batch(envs)]


def outcome(fn, value: bytes):
    """The decoded envelope with what equality leaves out (signed_bytes), or the error."""
    try:
        env = fn(Rec(value, TOPIC)).envelope
    except EventValidationError as exc:
        return ("error", str(exc))
    return ("ok", env, env.signed_bytes)


def same(decoder: RecordDecoder, value: bytes):
    got = outcome(decoder, value)
    assert got == outcome(decode_record, value)
    return got


def test_single_and_batch_signed_records_hit_the_memo_and_decode_as_the_codec_does(trust):
    decoder = RecordDecoder()
    values = [single_signed(trust, p) for p in _payloads()] + batch_signed(trust, _payloads())
    for value in values:  # first sighting of each payload: the codec itself
        same(decoder, value)
    hits = decoder.hits
    for value in values:  # the payloads are known now: every signed record takes the fast path
        kind, env, signed_bytes = same(decoder, value)
        assert kind == "ok" and env.signed and signed_bytes is not None
    assert decoder.hits == hits + len(values)
    assert [outcome(decoder, v)[1].proof is not None for v in values] == [False] * 3 + [True] * 3


def test_fast_decoded_signatures_verify_and_a_tampered_record_does_not(trust):
    verifier = trust.verifier()
    decoder = RecordDecoder()
    good = batch_signed(trust, _payloads()) + [single_signed(trust, _payloads()[0])]
    for value in good:
        decoder(Rec(value, TOPIC))  # warm the memo
    hits = decoder.hits
    for value in good:
        assert verifier.verdict(decoder(Rec(value, TOPIC)).envelope, MS0).verified
    # the header changed under the signature (the payload is a memo hit): still decoded, no longer verified
    for value in good:
        tampered = value.replace(b'"producer":"p"', b'"producer":"q"', 1)
        assert tampered != value
        kind, env, _ = same(decoder, tampered)
        assert verifier.verdict(env, MS0).problem == "bad_signature"
    # another payload (known from the batch) under a signature made for the first one
    other = orjson.loads(single_signed(trust, _payloads()[1]))["payload"]
    doc = orjson.loads(good[-1])
    doc["payload"] = other
    swapped = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    kind, env, _ = same(decoder, swapped)
    assert verifier.verdict(env, MS0).problem == "bad_signature"
    assert decoder.hits == hits + 2 * len(good) + 1  # every check above went through the fast path


def _signed_doc(trust, batch: bool) -> dict:
    value = batch_signed(trust, _payloads())[1] if batch else single_signed(trust, _payloads()[0])
    return orjson.loads(value)


SIGNED_MUTATIONS = [
    lambda d: d.update(signer=None),
    lambda d: d.update(signer="ABC"),  # not lowercase hex
    lambda d: d.update(signer=""),
    lambda d: d.update(signer=17),
    lambda d: d.update(signature="not base64!"),
    lambda d: d.update(signature="A" * 201),
    lambda d: d.pop("signature"),
    lambda d: d.pop("signer"),
    lambda d: (d.pop("signer"), d.pop("signature")),  # a proof without a signature (unsigned when single)
    lambda d: d.update(proof=[]),
    lambda d: d.update(proof=["X" + "A" * 44]),
    lambda d: d.update(proof=["L" + "A" * 43]),
    lambda d: d.update(proof="L" + "A" * 44),
    lambda d: d.update(proof=None),
    lambda d: d.update(proof=["L" + "A" * 44] * 33),
    lambda d: d.update(proof=["L" + "A" * 44]),  # a well-shaped proof on a single-signed record
    lambda d: d.update(extra=1),
    lambda d: d.update(schema_version=1),  # an older version: upcast, signed_bytes keep the version read
    lambda d: d.update(occurred_at="2024-01-01T02:00:00+02:00"),  # signed_bytes keep the text read
    lambda d: d.update(producer="\u00e9\u2603 \"quoted\""),
]


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("mutate", range(len(SIGNED_MUTATIONS)))
def test_signed_garbage_and_edge_cases_match_the_codec_before_and_after_the_memo_is_warm(trust, batch, mutate):
    decoder = RecordDecoder()
    same(decoder, orjson.dumps(_signed_doc(trust, batch), option=orjson.OPT_SORT_KEYS))  # warm the memo
    doc = _signed_doc(trust, batch)
    SIGNED_MUTATIONS[mutate](doc)
    for _ in range(2):
        same(decoder, orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
        same(decoder, orjson.dumps(doc))  # keys in the order the mutation left them


def test_a_payload_not_written_canonically_signs_over_the_bytes_the_codec_would(trust):
    """signed_bytes re-serialize the payload (sorted keys, no spaces), as the codec does, whatever the record's layout."""
    decoder = RecordDecoder()
    doc = _signed_doc(trust, batch=True)
    payload = orjson.dumps(dict(reversed(doc["payload"].items())))
    header = orjson.dumps({k: v for k, v in doc.items() if k != "payload"})
    value = header[:-1] + b', "payload" :\n' + payload.replace(b",", b" , ") + b"}"
    assert orjson.loads(value) == doc
    same(decoder, value)
    hits = decoder.hits
    kind, env, signed_bytes = same(decoder, value)
    assert decoder.hits == hits + 1
    assert trust.verifier().verdict(env, MS0).verified


@settings(max_examples=60, deadline=None)
@given(S.registered())
def test_any_valid_registration_signed_decodes_twice_as_the_codec_does(trust, payload):
    decoder = RecordDecoder()
    value = single_signed(trust, payload)
    for _ in range(2):
        same(decoder, value)
    assert decoder.hits == 1
