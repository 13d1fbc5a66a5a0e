"""replay.decode: the memoizing decoder agrees with events.codec on every input."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.codec import decode_record, encode
from events.envelope import new_event
from events.errors import EventValidationError
from replay.decode import RecordDecoder
from tests.unit.events import strategies as S
from tests.unit.replay.history import RandomHistory


@dataclass
class Rec:
    value: bytes | None
    topic: str = "meshlog.registrations"
    partition: int = 0
    offset: int = 7
    timestamp: int = 1_700_000_000_000
    key: bytes | None = None


def outcome(fn, rec):
    try:
        return ("ok", fn(rec))
    except EventValidationError as exc:
        return ("error", str(exc))


def same(decoder: RecordDecoder, value: bytes | None, topic: str = "meshlog.registrations") -> None:
    rec = Rec(value, topic)
    assert outcome(decoder, rec) == outcome(decode_record, rec)


def test_valid_history_decodes_identically_and_repeats_hit_the_memo():
    decoder = RecordDecoder()
    payloads = RandomHistory("dec", 3).payloads(400)
    for p in payloads + payloads:  # the second round: every payload is known
        same(decoder, encode(new_event(p, producer="tester")), p.TOPIC)
    assert decoder.hits >= len(payloads)


@settings(max_examples=150, deadline=None)
@given(S.registered())
def test_any_valid_registration_twice(payload):
    decoder = RecordDecoder()
    for _ in range(2):
        same(decoder, encode(new_event(payload, producer="p")))


def _doc() -> dict:
    p = RandomHistory("dec", 1).registration(0, 0)
    return orjson.loads(encode(new_event(p, producer="x", occurred_at=datetime(2024, 1, 1, tzinfo=timezone.utc))))


MUTATIONS = [
    lambda d: d.pop("event_id"),
    lambda d: d.update(extra=1),
    lambda d: d.update(schema_version=True),
    lambda d: d.update(schema_version=99),
    lambda d: d.update(schema_version=0),
    lambda d: d.update(schema_version=1),  # an older version: upcast on read
    lambda d: d.update(occurred_at="2024-01-01T00:00:00"),  # naive
    lambda d: d.update(occurred_at="yesterday"),
    lambda d: d.update(occurred_at=5),
    lambda d: d.update(event_id=""),
    lambda d: d.update(producer=None),
    lambda d: d.update(type="nope"),
    lambda d: d.update(type=3),
    lambda d: d.update(payload=[]),
    lambda d: d["payload"].update(port="8080"),
    lambda d: d["payload"].update(port=8080.0),
    lambda d: d["payload"].update(bogus=True),
    lambda d: d.update(occurred_at="2024-01-01T02:00:00+02:00"),  # another offset: normalized to UTC
]


@pytest.mark.parametrize("mutate", range(len(MUTATIONS)))
def test_garbage_and_edge_cases_match_the_codec_before_and_after_the_memo_is_warm(mutate):
    decoder = RecordDecoder()
    same(decoder, orjson.dumps(_doc()))  # warm the memo with the valid payload
    doc = _doc()
    MUTATIONS[mutate](doc)
    same(decoder, orjson.dumps(doc))
    same(decoder, orjson.dumps(doc))


@pytest.mark.parametrize("value", [None, b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"a":1}'])
def test_raw_garbage(value):
    same(RecordDecoder(), value)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes(value):
    same(RecordDecoder(), value)


def test_memo_is_bounded():
    decoder = RecordDecoder(max_entries=10)
    for p in RandomHistory("dec", 5).payloads(200):
        decoder(Rec(encode(new_event(p)), p.TOPIC))
    assert len(decoder._memo) <= 10
