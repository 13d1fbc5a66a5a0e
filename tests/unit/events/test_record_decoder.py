"""events.record_decoder: the memoizing decoder agrees with events.codec on every input."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from datetime import datetime, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import types as t
from events.codec import decode_record, encode
from events.envelope import Envelope, Logged, new_event
from events.errors import EventValidationError
from events.record_decoder import RecordDecoder
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
        assert len(decoder._memo) + len(decoder._old) <= 10


def test_memo_is_bounded_by_payload_bytes_too():
    decoder = RecordDecoder(max_bytes=2_000)
    for p in RandomHistory("dec", 6).payloads(300):
        decoder(Rec(encode(new_event(p)), p.TOPIC))
        kept = [*decoder._memo, *decoder._old]
        assert sum(len(raw) for _t, _v, raw in kept) <= 2_000 + max(len(raw) for _t, _v, raw in kept) * 2


def test_a_payload_the_log_keeps_repeating_stays_in_the_memo_while_one_offs_age_out():
    decoder = RecordDecoder(max_entries=8)
    flap = [t.InstanceHealthChanged(service="s", instance_id="i", status=s, observer="c") for s in ("unhealthy", "draining")]
    one_offs = [t.InstanceHealthChanged(service="s", instance_id=f"o{i}", status="unhealthy", observer="c") for i in range(40)]
    for i, p in enumerate(one_offs):
        for again in flap:
            decoder(Rec(encode(new_event(again)), again.TOPIC))
        decoder(Rec(encode(new_event(p)), p.TOPIC))
    assert decoder.misses == len(flap) + len(one_offs)  # the flapping payloads were validated once each
    got = decoder(Rec(encode(new_event(flap[0])), flap[0].TOPIC))
    assert got.envelope.payload == flap[0]


def test_revisioned_rule_edits_never_take_a_place_in_the_memo_so_a_flood_of_them_leaves_the_flaps_there():
    """A rule edit carries its revision, so the log never repeats its payload: memoized, a burst of edits
    would push out the health flaps that do repeat (the 1,000,000-event bench log: 46,528 more validations)."""
    decoder = RecordDecoder(max_entries=8)
    flap = t.InstanceHealthChanged(service="s", instance_id="i", status="unhealthy", observer="c")
    decoder(Rec(encode(new_event(flap)), flap.TOPIC))
    edits = [t.DestinationPolicyUpserted(service="s", revision=r) for r in range(1, 41)]
    for edit in edits:
        same(decoder, encode(new_event(edit)), edit.TOPIC)  # decoded exactly as the codec decodes it
    assert not [key for key in [*decoder._memo, *decoder._old] if key[0] == edits[0].TYPE]
    misses = decoder.misses
    assert decoder(Rec(encode(new_event(flap)), flap.TOPIC)).envelope.payload == flap
    assert decoder.misses == misses  # still a memo hit after 40 edits in a memo of 8
    again = edits[-1]  # a repeated edit (a stale re-send) is validated again, and decodes the same
    same(decoder, encode(new_event(again)), again.TOPIC)


def _valid_text() -> bytes:
    return orjson.dumps(_doc(), option=orjson.OPT_SORT_KEYS)


# Where msgspec (the header reader) and orjson (the codec) part ways: msgspec skips a raw payload without
# checking UTF-8 or number range, refuses floats and bools for an int, reads huge ints exactly. Each must
# end as the codec says, before and after the memo knows the valid payload.
MSGSPEC_EDGES = [
    lambda v: v.replace(b'"port":', b'"port":1e999,"x":', 1),  # a number orjson refuses, inside the payload
    lambda v: v.replace(b'"address":"', b'"address":"\xff', 1),  # invalid UTF-8 inside the payload
    lambda v: v.replace(b'"address":"', b'"address":"\\ud800', 1),  # a lone surrogate inside the payload
    lambda v: v.replace(b'"schema_version":2', b'"schema_version":2.0', 1),
    lambda v: v.replace(b'"schema_version":2', b'"schema_version":true', 1),
    lambda v: v.replace(b'"schema_version":2', b'"schema_version":99999999999999999999999', 1),
    lambda v: v.replace(b'"producer":"x"', b'"producer":"\\ud800"', 1),
    lambda v: v.replace(b'"producer":"x"', b'"producer":"x","producer":""', 1),  # duplicate key: the last wins
    lambda v: v.replace(b'"producer":"x"', b'"producer":"","producer":"y"', 1),
    lambda v: v[:-1] + b',"payload":{}}',  # a second payload: the last wins, for both readers
    lambda v: v + b"\x00",
    lambda v: b" \n" + v.replace(b",", b" , ") + b"\t",  # whitespace anywhere JSON allows it
    lambda v: v.replace(b'"event_id"', b'"event\\u005fid"', 1),  # an escaped key
]


@pytest.mark.parametrize("edge", range(len(MSGSPEC_EDGES)))
def test_where_msgspec_and_orjson_differ_the_codec_decides(edge):
    decoder = RecordDecoder()
    same(decoder, _valid_text())  # warm the memo with the valid payload
    value = MSGSPEC_EDGES[edge](_valid_text())
    assert value != _valid_text()
    same(decoder, value)
    same(decoder, value)


def test_the_same_payload_in_another_envelope_layout_is_a_memo_hit():
    """The memo key is the payload's own bytes, wherever the envelope puts them (keys in any order, spaces)."""
    decoder = RecordDecoder()
    doc = _doc()
    same(decoder, orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
    payload = orjson.dumps(doc["payload"], option=orjson.OPT_SORT_KEYS)
    other = orjson.dumps({k: v for k, v in reversed(doc.items()) if k != "payload"})
    other = other[:-1] + b', "payload" : ' + payload + b" }"
    hits = decoder.hits
    same(decoder, other)
    assert decoder.hits == hits + 1


def test_a_memo_hit_builds_the_envelope_the_codec_builds_still_frozen():
    import dataclasses

    from events.record_decoder import _UNSIGNED_ENVELOPE

    assert _UNSIGNED_ENVELOPE is not None  # the envelope's fields are the ones the fast constructor sets
    decoder = RecordDecoder()
    payload = t.InstanceHealthChanged(service="s", instance_id="i", status="unhealthy", observer="c")
    for _ in range(2):
        rec = Rec(encode(new_event(payload)), payload.TOPIC)
        got = decoder(rec)
        want = decode_record(rec)
        assert got == want and hash(got.envelope) == hash(want.envelope) and repr(got) == repr(want)
    assert decoder.hits == 1
    assert type(got.envelope) is Envelope and type(got) is Logged  # built as a draft, then made one
    assert pickle.loads(pickle.dumps(got)) == want  # as replay's reading process sends it
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.envelope.producer = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.offset = 8  # type: ignore[misc]


def test_the_fast_logged_is_a_plain_frozen_logged():
    import dataclasses

    from events.record_decoder import LOGGED

    env = new_event(RandomHistory("lg", 1).payloads(1)[0], producer="tester")
    fast, slow = LOGGED(env, "meshlog.health", 3, 42, 1_700_000_000_123), Logged(env, "meshlog.health", 3, 42,
                                                                                1_700_000_000_123)
    assert type(fast) is Logged and fast == slow and repr(fast) == repr(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.offset = 43
