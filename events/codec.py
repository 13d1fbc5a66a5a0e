"""Encoding and decoding of envelopes (orjson), with upcasting on read.

Invariants:
- ``decode`` either returns a valid Envelope at the payload type's current
  schema version or raises ``EventValidationError``; no other exception
  escapes, whatever bytes it is given (property-tested).
- ``encode`` is deterministic for a given envelope (sorted keys), so the same
  event always has the same bytes.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Mapping

import orjson
from pydantic import ValidationError as PydanticValidationError

from events.envelope import Envelope, Logged
from events.errors import EventValidationError, FieldProblem
from events.types import PAYLOAD_TYPES, Payload
from events.upcast import upcast

_ENVELOPE_FIELDS = ("event_id", "type", "schema_version", "occurred_at", "producer", "payload")
_ENVELOPE_KEYS = frozenset(_ENVELOPE_FIELDS)


def _dotted(loc: tuple[Any, ...], prefix: str) -> str:
    parts = [str(p) for p in loc if p not in ("function-after", "function-before")]
    # pydantic reports model-level validators with no location, or with the
    # union/member tag; keep only real field names and indexes
    parts = [p for p in parts if not p.startswith(("function-", "tagged-union", "nullable"))]
    path = ".".join(parts)
    return f"{prefix}.{path}" if prefix and path else (prefix or path)


def problems_from_pydantic(exc: PydanticValidationError, prefix: str = "") -> list[FieldProblem]:
    problems = []
    for err in exc.errors(include_url=False):
        msg = err.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        field = _dotted(tuple(err.get("loc", ())), prefix)
        # a model validator may name the field at the start of its message ("port: ...")
        if ": " in msg:
            head, rest = msg.split(": ", 1)
            if head.replace("_", "").replace(".", "").isalnum() and " " not in head:
                field = f"{field}.{head}" if field else head
                msg = rest
        problems.append(FieldProblem(field, msg))
    return problems


def validate_payload(payload_type: type[Payload], data: Any, prefix: str = "") -> Payload:
    """Build a payload from plain data, raising EventValidationError naming each bad field."""
    if type(data) is not dict:  # the decode path always has a dict: skip the abstract isinstance and the copy
        if not isinstance(data, Mapping):
            raise EventValidationError.single(prefix, f"must be an object, got {type(data).__name__}")
        data = dict(data)
    try:
        return payload_type.model_validate(data)
    except PydanticValidationError as exc:
        raise EventValidationError(problems_from_pydantic(exc, prefix)) from None


def payload_type_named(name: Any, field: str = "type") -> type[Payload]:
    if not isinstance(name, str) or name not in PAYLOAD_TYPES:
        known = ", ".join(sorted(PAYLOAD_TYPES))
        raise EventValidationError.single(field, f"unknown event type {name!r} (known: {known})")
    return PAYLOAD_TYPES[name]


def envelope_to_dict(env: Envelope) -> dict[str, Any]:
    return {
        "event_id": env.event_id,
        "type": env.type,
        "schema_version": env.schema_version,
        "occurred_at": env.occurred_at.isoformat(timespec="microseconds"),
        "producer": env.producer,
        "payload": env.payload.model_dump(mode="json", exclude_defaults=False),
    }


def encode(env: Envelope) -> bytes:
    return orjson.dumps(envelope_to_dict(env), option=orjson.OPT_SORT_KEYS)


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise EventValidationError.single("occurred_at", "must be an ISO-8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise EventValidationError.single("occurred_at", f"not an ISO-8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise EventValidationError.single("occurred_at", "must carry a UTC offset")
    return parsed.astimezone(timezone.utc)


def envelope_from_dict(doc: Any) -> Envelope:
    if not isinstance(doc, dict):
        raise EventValidationError.single("", f"an event must be a JSON object, got {type(doc).__name__}")
    if doc.keys() != _ENVELOPE_KEYS:  # (a set comparison: the usual case costs one check)
        problems = [FieldProblem(f, "is required") for f in _ENVELOPE_FIELDS if f not in doc]
        extra = sorted(str(k) for k in doc if k not in _ENVELOPE_FIELDS)
        problems += [FieldProblem(k, "is not an envelope field") for k in extra]
        raise EventValidationError(problems)
    payload_type = payload_type_named(doc["type"])
    version = doc["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise EventValidationError.single("schema_version", "must be a positive integer")
    if version > payload_type.SCHEMA_VERSION:
        raise EventValidationError.single(
            "schema_version",
            f"{version} is newer than this build understands ({payload_type.SCHEMA_VERSION}) for {payload_type.TYPE}",
        )
    for name in ("event_id", "producer"):
        if not isinstance(doc[name], str) or not doc[name]:
            raise EventValidationError.single(name, "must be a non-empty string")
    raw_payload = doc["payload"]
    if not isinstance(raw_payload, dict):
        raise EventValidationError.single("payload", "must be an object")
    payload = validate_payload(payload_type, upcast(payload_type.TYPE, version, raw_payload), "payload")
    try:
        return Envelope(
            event_id=doc["event_id"],
            type=payload_type.TYPE,
            schema_version=payload_type.SCHEMA_VERSION,
            occurred_at=_parse_time(doc["occurred_at"]),
            producer=doc["producer"],
            payload=payload,
        )
    except ValueError as exc:  # the envelope's own invariants
        if isinstance(exc, EventValidationError):
            raise
        raise EventValidationError.single("", str(exc)) from None


def decode(data: bytes | bytearray | memoryview | None) -> Envelope:
    if data is None:
        raise EventValidationError.single("", "record has no value (tombstone on an event topic)")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EventValidationError.single("", f"not valid JSON: {exc}") from None
    return envelope_from_dict(doc)


def decode_record(record: Any) -> Logged:
    """Decode an aiokafka ConsumerRecord (or anything with the same attributes)."""
    return Logged(
        envelope=decode(record.value),
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
    )
