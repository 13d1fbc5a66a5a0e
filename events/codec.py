"""Encoding and decoding of envelopes (orjson), with upcasting on read.

Invariants:
- ``decode`` is total: whatever bytes it is given (invalid UTF-8, deep
  nesting, huge numbers, times that overflow when moved to UTC, unknown
  versions) it either returns a valid Envelope at the payload type's current
  schema version or raises ``EventValidationError``; no other exception
  escapes (property-tested over arbitrary bytes and near-valid envelopes).
  Every reader of the log relies on this to skip a bad record and go on.
- Given the topic a record was read from, ``decode`` accepts only the event
  types that belong on it (``Payload.TOPIC``): an event on the wrong topic is
  invalid there, for the projector, replay and the checkers alike.
- ``encode`` is deterministic for a given envelope (sorted keys), so the same
  event always has the same bytes.
- ``signing_bytes`` is the one canonical encoding a signature covers: the
  envelope's JSON document without ``signature``, keys sorted (orjson). The
  producer signs ``signing_bytes(envelope_to_dict(env))``; ``decode`` keeps
  ``signing_bytes(doc)`` of the document it read on the envelope
  (``signed_bytes``), so what is verified is what was signed even once the
  payload is upcast, and ``received_digest_of`` the bytes it decoded
  (``received_digest``: what the projector's verifier reports as found good,
  ``Verifier.record_vouches``, to attest). A JSON document
  re-serialized by orjson has the same bytes as the one it was parsed from
  when orjson wrote it (sorted keys, no whitespace), which is how a producer
  wrote it.
- Signature fields are checked for shape only here (``signer`` a lowercase hex
  serial, ``signature`` base64 of at most 200 characters, both or neither);
  whether the signature is good is the verifier's question
  (``identity.verifier``), answered against the log's identities.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Mapping

import orjson
from pydantic import ValidationError as PydanticValidationError

from events.envelope import (
    ENVELOPE_FIELDS,
    REQUIRED_FIELDS,
    SIGNATURE_FIELDS,
    Envelope,
    Logged,
    received_digest_of,
)
from events.errors import EventValidationError, FieldProblem
from events.printable import quoted
from events.types import PAYLOAD_TYPES, Payload
from events.upcast import upcast

_ENVELOPE_KEYS = frozenset(REQUIRED_FIELDS)
_SIGNED_KEYS = frozenset(REQUIRED_FIELDS + SIGNATURE_FIELDS)
_BATCH_SIGNED_KEYS = frozenset(ENVELOPE_FIELDS)
PROOF_MAX = 32  # Merkle proof steps (events.signing): 2**32 events in one signed batch is beyond any Kafka batch
SIGNATURE_MAX = 200  # base64 of a DER ECDSA P-256 signature is at most 96 characters
_SERIAL_RE = re.compile(r"[0-9a-f]{1,40}\Z")
_SIGNATURE_RE = re.compile(rf"[A-Za-z0-9+/=]{{1,{SIGNATURE_MAX}}}\Z")
DECODER_BUG = "decoder error (a bug: please report it)"


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
    doc = {
        "event_id": env.event_id,
        "type": env.type,
        "schema_version": env.schema_version,
        "occurred_at": env.occurred_at.isoformat(timespec="microseconds"),
        "producer": env.producer,
        "payload": env.payload.model_dump(mode="json", exclude_defaults=False),
    }
    if env.signer is not None:
        doc["signer"] = env.signer
        doc["signature"] = env.signature
    if env.proof is not None:
        doc["proof"] = list(env.proof)
    return doc


def encode(env: Envelope) -> bytes:
    return orjson.dumps(envelope_to_dict(env), option=orjson.OPT_SORT_KEYS)


def signing_bytes(doc: Mapping[str, Any]) -> bytes:
    """The canonical bytes a signature covers: ``doc`` without ``signature`` (and ``proof``), keys sorted."""
    return orjson.dumps({k: v for k, v in doc.items() if k != "signature" and k != "proof"},
                        option=orjson.OPT_SORT_KEYS)


def _proof_field(doc: dict) -> tuple[str, ...] | None:
    if "proof" not in doc:
        return None
    proof = doc["proof"]
    # the shape only (a side and 44 characters); a step that is not base64 of a digest leads to no root the
    # signature covers, and the verifier says so (bad_signature)
    if type(proof) is not list or not 1 <= len(proof) <= PROOF_MAX or not _proof_steps_ok(proof):
        raise EventValidationError.single(
            "proof", f"must be a list of 1-{PROOF_MAX} steps, each 'L' or 'R' and a base64 SHA-256 digest")
    return tuple(proof)


def _proof_steps_ok(proof: list) -> bool:
    """Every step a str of 45 ASCII characters starting with L or R (in C loops: this runs per signed event)."""
    try:
        joined = "".join(proof)
    except TypeError:  # a step that is not a string
        return False
    return set(map(len, proof)) == {45} and joined.isascii() and set(joined[::45]) <= _PROOF_SIDES


_PROOF_SIDES = frozenset("LR")


def _signature_fields(doc: dict) -> tuple[str | None, str | None]:
    signer, signature = doc.get("signer"), doc.get("signature")
    if signer is None and signature is None and "signer" not in doc and "signature" not in doc:
        return None, None
    for name in SIGNATURE_FIELDS:
        if name not in doc:
            raise EventValidationError.single(name, "is required when the envelope is signed (signer and signature go together)")
    if type(signer) is not str or not _SERIAL_RE.match(signer):
        raise EventValidationError.single("signer", "must be a certificate serial: 1-40 lowercase hex digits")
    if type(signature) is not str or not _SIGNATURE_RE.match(signature):
        raise EventValidationError.single("signature", f"must be base64, 1-{SIGNATURE_MAX} characters")
    return signer, signature


def utc_time_or_none(value: Any) -> datetime | None:
    """``value`` (an ISO-8601 string with an offset) as UTC, or None if it is not one or leaves
    datetime's range once moved to UTC (``0001-01-01T00:00:00+14:00`` overflows)."""
    if type(value) is not str:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        tz = parsed.tzinfo
        if tz is None:
            return None
        # what producers write (+00:00) parses to the UTC singleton already: astimezone would only copy it
        return parsed if tz is timezone.utc else parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


def _parse_time(value: Any) -> datetime:
    parsed = utc_time_or_none(value)
    if parsed is not None:
        return parsed
    if not isinstance(value, str):
        raise EventValidationError.single("occurred_at", "must be an ISO-8601 string")
    try:
        naive = datetime.fromisoformat(value).tzinfo is None
    except ValueError:
        raise EventValidationError.single("occurred_at", f"not an ISO-8601 time: {quoted(value, 64)}") from None
    if naive:
        raise EventValidationError.single("occurred_at", "must carry a UTC offset")
    raise EventValidationError.single("occurred_at", f"{quoted(value, 64)} is out of range once converted to UTC")


def check_topic(payload_type: type[Payload], topic: str | None) -> None:
    """Refuse an event type read from a topic it does not belong on (``topic=None``: not from the log)."""
    if topic is not None and payload_type.TOPIC != topic:
        raise EventValidationError.single(
            "type", f"{payload_type.TYPE} events belong on {payload_type.TOPIC}, not on {quoted(topic, 128)}"
        )


def envelope_from_dict(doc: Any, topic: str | None = None, received: Any = None) -> Envelope:
    """The envelope of JSON document ``doc``; ``received``: the bytes it was parsed from (a signed envelope then
    carries their ``received_digest``)."""
    if not isinstance(doc, dict):
        raise EventValidationError.single("", f"an event must be a JSON object, got {type(doc).__name__}")
    keys = doc.keys()
    if keys != _ENVELOPE_KEYS and keys != _SIGNED_KEYS and keys != _BATCH_SIGNED_KEYS:  # (one to three set compares)
        problems = [FieldProblem(f, "is required") for f in REQUIRED_FIELDS if f not in doc]
        extra = sorted(str(k) for k in doc if k not in ENVELOPE_FIELDS)
        problems += [FieldProblem(k, "is not an envelope field") for k in extra]
        if not problems:  # one of signer/signature without the other, or a proof without a signature
            _signature_fields(doc)
            problems = [FieldProblem("proof", "only a signed envelope has one")]
        raise EventValidationError(problems)
    signer, signature = _signature_fields(doc)
    proof = _proof_field(doc)
    payload_type = payload_type_named(doc["type"])
    check_topic(payload_type, topic)
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
            signer=signer,
            signature=signature,
            signed_bytes=signing_bytes(doc) if signer is not None else None,
            proof=proof,
            received_digest=received_digest_of(received) if signer is not None and received is not None else None,
        )
    except ValueError as exc:  # the envelope's own invariants
        if isinstance(exc, EventValidationError):
            raise
        raise EventValidationError.single("", str(exc)) from None


def decode(data: bytes | bytearray | memoryview | None, topic: str | None = None) -> Envelope:
    """The envelope in ``data``; with ``topic``, only if its type belongs on that topic."""
    if data is None:
        raise EventValidationError.single("", "record has no value (tombstone on an event topic)")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EventValidationError.single("", f"not valid JSON: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. a type orjson does not read; the contract is total
        raise EventValidationError.single("", f"not readable as JSON ({type(exc).__name__})") from None
    return decode_document(doc, topic, data)


def decode_document(doc: Any, topic: str | None = None, received: Any = None) -> Envelope:
    """``envelope_from_dict`` with the total contract: EventValidationError or an envelope, nothing else."""
    try:
        return envelope_from_dict(doc, topic, received)
    except EventValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 - the contract is total: a reader must be able to skip any record
        # Every known way in is handled in envelope_from_dict; reaching this is a bug in a validator, named
        # so that it is found (the property tests fail on this message) while readers still skip the record.
        raise EventValidationError.single("", f"{DECODER_BUG}: {type(exc).__name__}: {str(exc)[:200]}") from None


def decode_record(record: Any) -> Logged:
    """Decode an aiokafka ConsumerRecord (or anything with the same attributes), for the topic it came from."""
    return Logged(
        envelope=decode(record.value, record.topic),
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
    )
