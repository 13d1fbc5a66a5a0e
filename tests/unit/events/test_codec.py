"""Encoding round-trips, upcasting, and garbage never escaping as anything but EventValidationError."""

from datetime import datetime, timezone

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.codec import decode, decode_record, encode
from events.envelope import new_event
from events.errors import EventValidationError
from events.types import InstanceRegistered

from .strategies import any_payload

FIXED = datetime(2020, 1, 1, 10, 0, tzinfo=timezone.utc)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(any_payload)
def test_every_event_type_round_trips_through_bytes(payload):
    env = new_event(payload, producer="test", occurred_at=FIXED)
    decoded = decode(encode(env))
    assert decoded == env
    assert encode(decoded) == encode(env)  # deterministic bytes


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_are_rejected_with_a_validation_error(data):
    with pytest.raises(EventValidationError):
        decode(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500)
@given(json_values)
def test_random_json_is_rejected_with_a_validation_error(value):
    with pytest.raises(EventValidationError):
        decode(orjson.dumps(value))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(any_payload, st.sampled_from(["payload", "type", "schema_version", "occurred_at", "event_id"]), json_values)
def test_a_valid_envelope_with_one_field_replaced_by_garbage_never_raises_anything_else(payload, field, garbage):
    doc = orjson.loads(encode(new_event(payload, producer="t", occurred_at=FIXED)))
    doc[field] = garbage
    try:
        decode(orjson.dumps(doc))
    except EventValidationError:
        pass  # the only acceptable failure


def test_garbage_payload_names_the_field():
    doc = orjson.loads(
        encode(
            new_event(
                InstanceRegistered(service="web", instance_id="w1", address="10.0.0.1", port=80),
                producer="t",
                occurred_at=FIXED,
            )
        )
    )
    doc["payload"]["port"] = 70000
    with pytest.raises(EventValidationError) as info:
        decode(orjson.dumps(doc))
    assert info.value.fields == ("payload.port",)


def test_a_tombstone_on_an_event_topic_is_invalid():
    with pytest.raises(EventValidationError, match="tombstone"):
        decode(None)


def test_a_newer_schema_version_than_this_build_knows_is_refused():
    doc = orjson.loads(
        encode(new_event(InstanceRegistered(service="web", instance_id="w1", address="10.0.0.1", port=80), producer="t"))
    )
    doc["schema_version"] = 99
    with pytest.raises(EventValidationError) as info:
        decode(orjson.dumps(doc))
    assert info.value.fields == ("schema_version",)


def test_v1_registration_is_upcast_to_the_current_version():
    v1 = {
        "event_id": "e-1",
        "type": "instance.registered",
        "schema_version": 1,
        "occurred_at": "2020-01-01T10:00:00+00:00",
        "producer": "old-sidecar",
        "payload": {"service": "reviews", "instance_id": "r1", "address": "10.0.0.2", "port": 9080, "version": "v2"},
    }
    env = decode(orjson.dumps(v1))
    assert env.schema_version == InstanceRegistered.SCHEMA_VERSION == 2
    assert env.payload.labels == {"version": "v2"}
    assert env.payload.weight == 1


def test_occurred_at_in_another_offset_is_normalised_to_utc():
    doc = orjson.loads(
        encode(new_event(InstanceRegistered(service="web", instance_id="w1", address="10.0.0.1", port=80), producer="t"))
    )
    doc["occurred_at"] = "2020-01-01T12:00:00+02:00"
    assert decode(orjson.dumps(doc)).occurred_at == datetime(2020, 1, 1, 10, 0, tzinfo=timezone.utc)


def test_naive_occurred_at_is_refused():
    doc = orjson.loads(
        encode(new_event(InstanceRegistered(service="web", instance_id="w1", address="10.0.0.1", port=80), producer="t"))
    )
    doc["occurred_at"] = "2020-01-01T12:00:00"
    with pytest.raises(EventValidationError) as info:
        decode(orjson.dumps(doc))
    assert info.value.fields == ("occurred_at",)


def test_decode_record_keeps_the_log_position():
    class Record:
        topic, partition, offset, timestamp = "meshlog.registrations", 0, 41, 1_577_872_800_000
        value = encode(new_event(InstanceRegistered(service="web", instance_id="w1", address="10.0.0.1", port=80), producer="t"))

    logged = decode_record(Record)
    assert (logged.topic, logged.partition, logged.offset, logged.timestamp_ms) == (
        "meshlog.registrations",
        0,
        41,
        1_577_872_800_000,
    )
    assert logged.payload.service == "web"
