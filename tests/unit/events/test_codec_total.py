"""The decoder is total and topic-aware; the upcaster converts, it does not repair (issue 11, items 2 and 3)."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import topics
from events.codec import DECODER_BUG, decode, decode_record, encode
from events.envelope import Envelope, Logged, new_event
from events.errors import EventValidationError
from events.types import InstanceHealthChanged, InstanceRegistered, RouteRuleUpserted
from events.record_decoder import RecordDecoder
from tests.support import poison

HEALTH = InstanceHealthChanged(service="web", instance_id="w1", status="unhealthy", reason="probe", observer="hc/1")
ROUTE = RouteRuleUpserted(host="gbhost", revision=1, routes=[{"destinations": [{"weight": 100}]}])
REG = InstanceRegistered(service="gb", instance_id="gb-1", address="10.0.0.9", port=80)


@dataclass
class Rec:
    value: bytes | None
    topic: str
    partition: int = 0
    offset: int = 3
    timestamp: int = 1_700_000_000_000
    key: bytes | None = None


def outcome(fn, rec: Rec):
    """What a reader sees: the event, or the validation error's text. Any other exception fails the test."""
    try:
        got = fn(rec)
    except EventValidationError as exc:
        assert DECODER_BUG not in str(exc), f"a validator raised outside the contract: {exc}"
        return ("invalid", str(exc))
    assert isinstance(got, Logged) and isinstance(got.envelope, Envelope)
    return ("ok", got)


def doc_of(payload) -> dict:
    return orjson.loads(encode(new_event(payload, producer="t")))


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+14:00", "0001-01-01T13:59:59+14:00", "9999-12-31T23:59:59-00:01"])
def test_a_time_that_overflows_in_utc_is_a_validation_error_for_codec_and_replay_decoder(when):
    doc = doc_of(HEALTH)
    valid = Rec(orjson.dumps(doc), topics.HEALTH)
    doc["occurred_at"] = when
    rec = Rec(orjson.dumps(doc), topics.HEALTH)
    with pytest.raises(EventValidationError) as info:
        decode_record(rec)
    assert info.value.fields == ("occurred_at",) and "out of range" in str(info.value)
    decoder = RecordDecoder()
    decoder(valid)  # warm the memo: the overflowing record then takes the fast path
    assert outcome(decoder, rec) == outcome(decode_record, rec)


@pytest.mark.parametrize(
    "payload, topic",
    [(ROUTE, topics.REGISTRATIONS), (REG, topics.HEALTH), (HEALTH, topics.RULES), (REG, topics.REJECTIONS)],
)
def test_an_event_on_another_topic_than_its_own_is_invalid_there(payload, topic):
    value = encode(new_event(payload, producer="t"))
    with pytest.raises(EventValidationError) as info:
        decode(value, topic)
    assert info.value.fields == ("type",)
    assert f"belong on {payload.TOPIC}, not on '{topic}'" in str(info.value)
    decoder = RecordDecoder()
    decoder(Rec(value, payload.TOPIC))  # the memo knows the payload from its own topic
    assert outcome(decoder, Rec(value, topic)) == outcome(decode_record, Rec(value, topic))
    assert outcome(decoder, Rec(value, topic))[0] == "invalid"
    assert decode(value, payload.TOPIC).payload == payload  # and valid on its own topic


def _v1(payload: dict) -> bytes:
    return orjson.dumps({"event_id": "e-1", "type": "instance.registered", "schema_version": 1,
                         "occurred_at": "2020-01-01T10:00:00+00:00", "producer": "old", "payload": payload})


V1 = {"service": "reviews", "instance_id": "r1", "address": "10.0.0.2", "port": 9080}


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"labels": [1], "version": "v2"}, "payload.labels"),
        ({"labels": [1]}, "payload.labels"),
        ({"labels": "zone=a", "version": "v1"}, "payload.labels"),
        ({"weight": 5, "version": "v1"}, "payload.weight"),
        ({"labels": {"version": "v1"}, "version": "v2"}, "payload.version"),
    ],
)
def test_the_v1_upcaster_converts_and_never_repairs(extra, field):
    with pytest.raises(EventValidationError) as info:
        decode(_v1({**V1, **extra}), topics.REGISTRATIONS)
    assert field in info.value.fields


def test_a_valid_v1_registration_still_upcasts():
    env = decode(_v1({**V1, "version": "v2", "labels": {"zone": "a"}}), topics.REGISTRATIONS)
    assert env.payload.labels == {"version": "v2", "zone": "a"} and env.payload.weight == 1


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(poison.small_poison, st.booleans())
def test_no_record_makes_the_decoders_raise_anything_but_a_validation_error(record, warm):
    """Arbitrary bytes and near-valid envelopes: an event or EventValidationError, and replay agrees."""
    topic, value = record
    rec = Rec(value, topic)
    decoder = RecordDecoder()
    if warm:  # the same payload seen before in a sane envelope: near-valid envelopes take the fast path
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("payload"), dict):
            clean = {**doc, "occurred_at": "2024-01-01T00:00:00+00:00", "event_id": "x", "producer": "p"}
            try:
                outcome(decoder, Rec(orjson.dumps(clean), topic))
            except TypeError:  # orjson writes less deeply nested JSON than it reads
                pass
    assert outcome(decoder, rec) == outcome(decode_record, rec)


def test_a_deep_payload_in_a_non_canonical_layout_is_no_crash_for_the_replay_decoder():
    doc = doc_of(REG)
    value = orjson.dumps(doc, option=orjson.OPT_INDENT_2).replace(b'"gb-1"', b"[" * 600 + b"1" + b"]" * 600)
    rec = Rec(value, topics.REGISTRATIONS)
    assert outcome(RecordDecoder(), rec) == outcome(decode_record, rec)
    assert outcome(decode_record, rec)[0] == "invalid"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096), poison.event_topics | st.text(max_size=40))
def test_arbitrary_bytes_on_any_topic(value, topic):
    assert outcome(decode_record, Rec(value, topic))[0] == "invalid"
