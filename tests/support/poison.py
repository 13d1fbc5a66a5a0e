"""Hypothesis strategies for records that must never wedge or crash a reader of the log.

Each strategy draws ``(topic, value)``: the event topic a record is appended
to and its bytes. Together they cover what issue 11 found or feared: random
bytes, oversized values, valid events on the wrong topic, times that overflow
when moved to UTC, deep nesting, invalid UTF-8, unknown schema versions, huge
numbers, and garbage in one field of an otherwise valid envelope. The unit
property tests (``tests/unit/events/test_codec_total.py``) run them through
the decoder in bulk; the integration poison suite appends a bounded,
derandomized batch of them to a real broker.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone

import orjson
from hypothesis import strategies as st

from events import topics
from events.codec import encode
from events.envelope import new_event
from events.types import PAYLOAD_TYPES
from tests.unit.events.strategies import any_payload

EVENT_TOPIC_NAMES = tuple(t.name for t in topics.EVENT_TOPICS)
OVERSIZED_BYTES = 900 * 1024  # below the broker's 1 MiB event-topic cap, far above any dead letter's room
FIXED = datetime(2024, 1, 1, tzinfo=timezone.utc)

event_topics = st.sampled_from(EVENT_TOPIC_NAMES)
# event types that are on the log at all (rule.rejected lives on the rejections topic, never on an event topic)
_EVENT_TYPES = tuple(sorted(n for n, cls in PAYLOAD_TYPES.items() if cls.TOPIC in EVENT_TOPIC_NAMES))


def valid_document(payload) -> dict:
    return orjson.loads(encode(new_event(payload, producer="poison", occurred_at=FIXED)))


valid_events = any_payload.filter(lambda p: p.TOPIC in EVENT_TOPIC_NAMES)

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what orjson writes; bigger ones come from huge_numbers
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=12,
)

# offsets up to +-14 h, at the ends of datetime's range: moving them to UTC can overflow either way
overflowing_times = st.builds(
    lambda day, hours, minutes: f"{day}T{'00:00:00' if day.startswith('0001') else '23:59:59'}"
    f"{'+' if day.startswith('0001') else '-'}{hours:02d}:{minutes:02d}",
    st.sampled_from(["0001-01-01", "9999-12-31"]),
    st.integers(0, 14),
    st.integers(0, 59),
)
odd_times = overflowing_times | st.sampled_from(
    ["2024-01-01T00:00:00", "2024-13-01T00:00:00+00:00", "", "now", "2024-01-01T00:00:00+24:00"]
) | st.text(max_size=30)
huge_numbers = st.sampled_from([10**30, -(10**30), 2**63, 2**64, -(2**63) - 1]).map(lambda n: str(n).encode()) | st.sampled_from(
    [b"1e400", b"-1e400", b"1" * 400, b"0." + b"0" * 500 + b"1"]
)


def _spliced(doc: dict, field: str, raw: bytes) -> bytes:
    """``doc`` as JSON with ``raw`` (JSON orjson would not write) as the value of ``field``.

    ``field`` is an envelope field ("payload", "schema_version") or a field of the payload.
    """
    marker = "\u2603SPLICE\u2603"
    if field in ("payload", "schema_version"):
        doc[field] = marker
    else:
        doc["payload"][field] = marker
    return orjson.dumps(doc).replace(orjson.dumps(marker), raw)


def _nested(depth: int, opener: bytes, closer: bytes) -> bytes:
    return opener * depth + b"1" + closer * depth


@st.composite
def deep_nesting(draw) -> tuple[str, bytes]:
    """A valid envelope with one payload field (or the whole payload) nested far past any sane depth."""
    payload = draw(valid_events)
    doc = valid_document(payload)
    depth = draw(st.integers(200, 5000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    field = draw(st.sampled_from(sorted(doc["payload"]) + ["payload"]))
    return payload.TOPIC, _spliced(doc, field, _nested(depth, opener, closer))


@st.composite
def invalid_utf8(draw) -> tuple[str, bytes]:
    """A valid envelope whose bytes carry an invalid UTF-8 sequence (inside a string, or anywhere)."""
    payload = draw(valid_events)
    raw = encode(new_event(payload, producer="poison", occurred_at=FIXED))
    bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80\x80"]))
    if draw(st.booleans()):
        raw = raw.replace(b'"poison"', b'"poi' + bad + b'son"')
    else:
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + bad + raw[at:]
    return payload.TOPIC, raw


@st.composite
def near_valid(draw) -> tuple[str, bytes]:
    """A valid envelope with one thing wrong: a field replaced, a version unknown, a time or number out of range."""
    payload = draw(valid_events)
    doc = valid_document(payload)
    kind = draw(st.sampled_from(["envelope", "payload", "version", "time", "huge", "type", "drop", "extra"]))
    if kind == "envelope":
        doc[draw(st.sampled_from(sorted(doc)))] = draw(json_values)
    elif kind == "payload":
        doc["payload"][draw(st.sampled_from(sorted(doc["payload"])))] = draw(json_values)
    elif kind == "version":
        doc["schema_version"] = draw(st.integers(-3, 10**6) | st.sampled_from([2**63, 2**64 - 1, True, 1.0, "1"]))
    elif kind == "time":
        doc["occurred_at"] = draw(odd_times)
    elif kind == "huge":
        field = draw(st.sampled_from(sorted(doc["payload"]) + ["schema_version"]))
        return payload.TOPIC, _spliced(doc, field, draw(huge_numbers))
    elif kind == "type":
        doc["type"] = draw(st.sampled_from(sorted(PAYLOAD_TYPES)) | st.text(max_size=20))
    elif kind == "drop":
        doc.pop(draw(st.sampled_from(sorted(doc))))
    else:
        doc[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
    return draw(st.sampled_from([payload.TOPIC, payload.TOPIC, *EVENT_TOPIC_NAMES])), orjson.dumps(doc)


@st.composite
def wrong_topic(draw) -> tuple[str, bytes]:
    """A perfectly valid event, appended to an event topic it does not belong on."""
    payload = draw(valid_events)
    topic = draw(st.sampled_from([t for t in EVENT_TOPIC_NAMES if t != payload.TOPIC]))
    return topic, encode(new_event(payload, producer="poison", occurred_at=FIXED))


@st.composite
def overflowing_time(draw) -> tuple[str, bytes]:
    """A valid envelope whose occurred_at leaves datetime's range once converted to UTC."""
    payload = draw(valid_events)
    doc = valid_document(payload)
    doc["occurred_at"] = draw(overflowing_times)
    return payload.TOPIC, orjson.dumps(doc)


@st.composite
def unknown_version(draw) -> tuple[str, bytes]:
    payload = draw(valid_events)
    doc = valid_document(payload)
    doc["schema_version"] = draw(st.integers(type(payload).SCHEMA_VERSION + 1, 2**63) | st.integers(-(2**63), 0))
    return payload.TOPIC, orjson.dumps(doc)


random_bytes = st.tuples(event_topics, st.binary(min_size=1, max_size=300))
# oversized values are expanded from a drawn seed (hypothesis' own buffer is far smaller than 900 KB)
oversized = st.tuples(event_topics, st.integers(0, 2**32).map(lambda seed: random.Random(seed).randbytes(OVERSIZED_BYTES)))

CATEGORIES = {
    "random bytes": random_bytes,
    "oversized": oversized,
    "wrong topic": wrong_topic(),
    "overflowing time": overflowing_time(),
    "deep nesting": deep_nesting(),
    "invalid utf-8": invalid_utf8(),
    "unknown version": unknown_version(),
    "near-valid": near_valid(),
}
# everything but the oversized values, for properties that run thousands of examples
small_poison = st.one_of([s for name, s in CATEGORIES.items() if name != "oversized"])
