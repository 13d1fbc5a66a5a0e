"""Decoding event records for replay: ``events.codec`` semantics, memoized payloads.

Invariants:
- ``RecordDecoder()(record)`` returns exactly what ``events.codec.decode_record``
  returns for that record, or raises the same ``EventValidationError`` (the
  error always comes from the codec itself): replay and the live projector
  agree on which records are folded and which were dead-lettered.
  Property-tested against the codec on valid and garbage input.
- Payload validation (pydantic, upcasting) is a pure function of
  ``(type, schema_version, payload document)`` (``events.upcast`` promises
  purity), so its result is memoized under that key. Payloads are frozen
  models: one validated object can be shared by every envelope that carries
  the same document. A real log repeats payloads all the time (a health flap,
  a heartbeat re-registration), which is where most of a cold replay's
  decoding time goes.
- Only the common, canonical shape takes the fast path (a JSON object with
  exactly the six envelope fields of the right JSON types, a known type that
  belongs on the record's topic and a supported schema version, an
  ``occurred_at`` with an offset that stays in range in UTC). Anything else —
  and every first sighting of a payload — goes through the codec
  (``decode_document``), so the decoder is exactly as total as the codec.
"""

from __future__ import annotations

from typing import Any

import orjson

from events.codec import decode_document, decode_record, utc_time_or_none
from events.envelope import Envelope, Logged
from events.types import PAYLOAD_TYPES

_FIELDS = frozenset(("event_id", "type", "schema_version", "occurred_at", "producer", "payload"))

def _payload_text(value: bytes, doc: dict) -> bytes | None:
    """The payload's own bytes inside ``value``, when the record has the codec's canonical layout.

    ``events.codec.encode`` writes ``{"event_id":..,"occurred_at":..,"payload":<P>,"producer":..,
    "schema_version":..,"type":..}``. If ``value`` is exactly that head, some bytes ``P`` and that
    tail (rebuilt here from the parsed fields), the parsed payload is a function of ``P`` alone (a
    JSON value parses the same wherever it sits; should ``P`` smuggle a duplicate top-level key,
    the last one wins, still inside ``P``), so ``P`` is an exact memo key — and slicing is cheaper
    than re-serializing the payload. Anything else: None (the caller serializes instead).
    """
    event_id, occurred, producer = doc["event_id"], doc["occurred_at"], doc["producer"]
    if type(event_id) is not str or type(occurred) is not str or type(producer) is not str:
        return None
    head = b'{"event_id":' + orjson.dumps(event_id) + b',"occurred_at":' + orjson.dumps(occurred) + b',"payload":'
    tail = (b',"producer":' + orjson.dumps(producer) + b',"schema_version":' + str(doc["schema_version"]).encode()
            + b',"type":' + orjson.dumps(doc["type"]) + b"}")
    if len(value) <= len(head) + len(tail) or not value.startswith(head) or not value.endswith(tail):
        return None
    return b"P" + value[len(head) : len(value) - len(tail)]


class RecordDecoder:
    """``decoder(record) -> Logged``; keeps hit/miss counters for reporting."""

    __slots__ = ("_memo", "max_entries", "hits", "misses")

    def __init__(self, max_entries: int = 500_000) -> None:
        self._memo: dict[tuple[str, int, bytes], Any] = {}
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def __call__(self, record: Any) -> Logged:
        value = record.value
        if value is None:
            return decode_record(record)  # raises the codec's error
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            return decode_record(record)  # raises the codec's error
        if type(doc) is not dict or len(doc) != 6 or doc.keys() != _FIELDS:
            return decode_record(record)
        typ = doc["type"]
        version = doc["schema_version"]
        payload = doc["payload"]
        ptype = PAYLOAD_TYPES.get(typ) if type(typ) is str else None
        if (
            ptype is None
            or ptype.TOPIC != record.topic
            or type(version) is not int
            or not 1 <= version <= ptype.SCHEMA_VERSION
            or type(payload) is not dict
        ):
            return decode_record(record)
        text = _payload_text(value, doc)
        if text is None:
            try:
                text = orjson.dumps(payload)
            except TypeError:  # e.g. nested deeper than orjson writes (it reads deeper than it writes)
                return decode_record(record)
        key = (typ, version, text)
        validated = self._memo.get(key)
        if validated is not None:
            env = self._fast_envelope(doc, typ, ptype.SCHEMA_VERSION, validated)
            if env is not None:
                self.hits += 1
                return Logged(env, record.topic, record.partition, record.offset, record.timestamp)
        env = decode_document(doc, record.topic)  # the reference path; raises EventValidationError
        self.misses += 1
        if len(self._memo) >= self.max_entries:
            self._memo.clear()
        self._memo[key] = env.payload
        return Logged(env, record.topic, record.partition, record.offset, record.timestamp)

    @staticmethod
    def _fast_envelope(doc: dict, typ: str, schema_version: int, payload: Any) -> Envelope | None:
        """The envelope ``envelope_from_dict`` would build, or None to let the codec decide."""
        event_id, producer, occurred = doc["event_id"], doc["producer"], doc["occurred_at"]
        if type(event_id) is not str or not event_id or type(producer) is not str or not producer:
            return None
        at = utc_time_or_none(occurred)
        if at is None:
            return None
        try:
            return Envelope(event_id, typ, schema_version, at, producer, payload)
        except ValueError:
            return None

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
