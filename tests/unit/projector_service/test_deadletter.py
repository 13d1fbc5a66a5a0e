"""Dead-letter records keep the reason, where the record came from, and its exact bytes."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest

from events.codec import decode
from events.errors import EventValidationError
from projector.deadletter import dead_letter_key, dead_letter_record, parse_dead_letter

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
    assert letter.raw["headers"] == [["h", "AQ=="]]
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
