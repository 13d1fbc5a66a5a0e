"""Dead-letter records keep the reason, where the record came from, and what identifies its bytes; they always fit."""

from __future__ import annotations

import base64
import hashlib
import random
from datetime import datetime, timezone

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.codec import decode
from events.errors import EventValidationError
from events.errors import FieldProblem
from projector.deadletter import (
    DEAD_LETTER_MAX_BYTES,
    PREFIX_BYTES,
    dead_letter_key,
    dead_letter_record,
    parse_dead_letter,
)

from .helpers import Rec


def test_an_undecodable_record_becomes_a_dead_letter_with_its_reason_and_bytes():
    rec = Rec("meshlog.registrations", 0, 42, 1_700_000_000_000, b"svc/i1", b"\xffnot json", (("h", b"\x01"),))
    with pytest.raises(EventValidationError) as info:
        decode(rec.value)
    key, value = dead_letter_record(rec, info.value, now=datetime(2020, 1, 1, tzinfo=timezone.utc))
    assert key == b"meshlog.registrations/0/42" == dead_letter_key("meshlog.registrations", 0, 42)
    letter = parse_dead_letter(value)
    assert letter.stage == "decode" and "not valid JSON" in letter.reason
    assert (letter.topic, letter.partition, letter.offset, letter.timestamp_ms) == (
        "meshlog.registrations", 0, 42, 1_700_000_000_000)
    assert letter.key == b"svc/i1" and letter.value == b"\xffnot json"
    assert letter.value_bytes.exact == b"\xffnot json" and letter.value_bytes.size == 9
    assert letter.value_bytes.sha256 == hashlib.sha256(b"\xffnot json").hexdigest()
    assert letter.raw["headers"] == [["h", {"prefix_b64": "AQ==", "sha256": hashlib.sha256(b"\x01").hexdigest(),
                                            "size": 1, "truncated": False}]]
    assert letter.raw["dead_lettered_at"].startswith("2020-01-01T00:00:00")
    assert orjson.loads(value) == letter.raw  # plain JSON, sorted keys
    assert list(orjson.loads(value)) == sorted(orjson.loads(value))


def test_field_problems_are_listed_by_field():
    rec = Rec("meshlog.health", 0, 1, 5, None, None)
    err = EventValidationError.single("payload.port", "must be <= 65535")
    letter = parse_dead_letter(dead_letter_record(rec, err)[1])
    assert letter.problems == (("payload.port", "must be <= 65535"),)
    assert letter.key is None and letter.value is None  # no key, tombstone: kept as null


def test_a_fold_failure_names_the_exception():
    rec = Rec("meshlog.rules", 0, 3, 5, b"k", b"{}")
    letter = parse_dead_letter(dead_letter_record(rec, RuntimeError("boom"), stage="fold")[1])
    assert letter.stage == "fold" and letter.reason == "RuntimeError: boom"


def test_other_formats_are_refused():
    with pytest.raises(ValueError):
        parse_dead_letter(b'{"format": 99}')


def test_a_900_kb_record_becomes_a_small_dead_letter_that_identifies_it():
    big = random.Random(7).randbytes(921_600)
    with pytest.raises(EventValidationError) as info:
        decode(big)
    plain = dead_letter_record(Rec("meshlog.registrations", 0, 9, 5, b"svc/i1", big), info.value)[1]
    assert len(plain) < 4 * 1024  # measured: 2,112 bytes (format 1 carried all of it in base64: 1.23 MB)
    rec = Rec("meshlog.registrations", 0, 9, 5, b"k" * 5000, big, (("h", b"x" * 10_000),) * 40)
    key, value = dead_letter_record(rec, info.value)
    assert len(value) < 16 * 1024  # with a 5 KB key and 40 headers of 10 KB: measured 11,058 bytes
    letter = parse_dead_letter(value)
    assert letter.value_bytes.size == 921_600 and letter.value_bytes.truncated and letter.value_bytes.exact is None
    assert letter.value_bytes.sha256 == hashlib.sha256(big).hexdigest()
    assert letter.value == big[:PREFIX_BYTES]
    assert letter.key_bytes.size == 5000 and letter.key == b"k" * PREFIX_BYTES
    assert letter.raw["headers_total"] == 40 and len(letter.raw["headers"]) == 16


hostile_text = st.text(max_size=300) | st.text(min_size=1000, max_size=1500).map(lambda s: s * 4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    key=st.none() | st.binary(max_size=3000),
    value=st.none() | st.binary(max_size=5000),
    headers=st.lists(st.tuples(st.text(max_size=300), st.none() | st.binary(max_size=600)), max_size=30),
    problems=st.lists(st.tuples(hostile_text, hostile_text), min_size=1, max_size=60),
    topic=st.text(max_size=400),
)
def test_a_dead_letter_always_fits_whatever_the_record_and_its_problems(key, value, headers, problems, topic):
    rec = Rec(topic, 0, 1, 2, key, value, tuple(headers))
    error = EventValidationError([FieldProblem(f, p) for f, p in problems])
    _key, letter = dead_letter_record(rec, error)
    assert len(letter) <= DEAD_LETTER_MAX_BYTES
    parsed = parse_dead_letter(letter)
    assert len(parsed.problems) <= 20 and parsed.raw["problems_total"] == len(problems)
    assert all(ch >= " " for ch in parsed.reason)  # control characters escaped
    if value is not None:
        assert parsed.value_bytes.size == len(value) and parsed.value == value[:PREFIX_BYTES]


def test_format_1_dead_letters_in_the_log_still_read_back():
    old = orjson.dumps({
        "format": 1, "stage": "decode", "reason": "not valid JSON", "problems": [],
        "source": {"topic": "meshlog.health", "partition": 0, "offset": 4, "timestamp_ms": 9},
        "key_b64": None, "value_b64": base64.b64encode(b"garbage").decode(), "headers": [],
        "dead_lettered_by": "projector", "dead_lettered_at": "2025-01-01T00:00:00+00:00",
    })
    letter = parse_dead_letter(old)
    assert letter.value == b"garbage" and letter.value_bytes.size == 7 and letter.key is None
    assert (letter.topic, letter.offset) == ("meshlog.health", 4)
