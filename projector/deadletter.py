"""Dead-letter records: what the projector appends when it cannot use a record.

A record on an event topic that does not decode (``events.codec`` raised
``EventValidationError``), or whose fold raised unexpectedly, is never
dropped and never stops the projector: it is appended to
``events.topics.DEADLETTER`` and processing goes on with the next record.

Invariants:
- A dead letter always fits: it identifies and explains the record (source
  topic, partition, offset, broker time; size, SHA-256 and the first
  ``PREFIX_BYTES`` of its key and value; the reason and up to
  ``PROBLEMS_MAX`` field problems, each cut and escaped) but never carries a
  value of unbounded size, so it stays under ``DEAD_LETTER_MAX_BYTES``
  whatever the record was (property-tested). The source record itself stays
  in the log forever: its exact bytes are read from there, by offset.
- The key is deterministic, so a record dead-lettered twice (a replayed
  batch after a crash, or two projector deployments) is recognisably the
  same source record.

Record format (pure functions here; the service does the I/O):

- key: ``"<source topic>/<partition>/<offset>"`` (utf-8).
- value: orjson object with sorted keys::

      {
        "format": 2,
        "stage": "decode" | "fold",
        "reason": "payload.port: Input should be less than or equal to 65535",
        "problems": [{"field": "payload.port", "problem": "..."}],   # at most PROBLEMS_MAX
        "problems_total": 1,
        "source": {"topic": ..., "partition": 0, "offset": 17,
                   "timestamp_ms": 1763782800000},
        "key": BYTES | null,          # null: the record had no key
        "value": BYTES | null,        # null: a tombstone
        "headers": [["name", BYTES | null], ...],   # at most HEADERS_MAX
        "headers_total": 0,
        "dead_lettered_by": "projector",
        "dead_lettered_at": "2025-11-22T03:40:00.123456+00:00"
      }
      BYTES = {"size": 921600, "sha256": "<hex of all of it>",
               "prefix_b64": "<base64 of the first PREFIX_BYTES>", "truncated": true}

  Format 1 (before issue 11) carried the whole key and value as
  ``key_b64``/``value_b64``; ``parse_dead_letter`` reads both formats (the
  topic keeps history forever).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from events.errors import EventValidationError
from events.printable import printable

FORMAT = 2
PRODUCER = "projector"
REASON_MAX = 1024  # characters
PROBLEMS_MAX = 20
FIELD_MAX = 128
PROBLEM_MAX = 256
PREFIX_BYTES = 1024
HEADERS_MAX = 16
HEADER_PREFIX_BYTES = 256
DEAD_LETTER_MAX_BYTES = 64 * 1024  # what the bounds above add up to, with room to spare


def dead_letter_key(topic: str, partition: int, offset: int) -> bytes:
    return f"{topic}/{partition}/{offset}".encode()


def _bytes_doc(data: bytes | bytearray | memoryview | None, prefix: int = PREFIX_BYTES) -> dict | None:
    if data is None:
        return None
    data = bytes(data)
    return {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "prefix_b64": base64.b64encode(data[:prefix]).decode("ascii"),
        "truncated": len(data) > prefix,
    }


def dead_letter_record(
    record: Any,
    error: BaseException | str,
    *,
    stage: str = "decode",
    now: datetime | None = None,
) -> tuple[bytes, bytes]:
    """(key, value) of the dead-letter record for ``record`` (an aiokafka ConsumerRecord or look-alike)."""
    if isinstance(error, EventValidationError):
        reason = str(error)
        all_problems = error.problems
        problems = [
            {"field": printable(p.field, FIELD_MAX), "problem": printable(p.problem, PROBLEM_MAX)}
            for p in all_problems[:PROBLEMS_MAX]
        ]
    elif isinstance(error, BaseException):
        reason = f"{type(error).__name__}: {error}"
        all_problems, problems = (), []
    else:
        reason = str(error)
        all_problems, problems = (), []
    headers = list(getattr(record, "headers", None) or ())
    doc = {
        "format": FORMAT,
        "stage": stage,
        "reason": printable(reason, REASON_MAX) or "invalid record",
        "problems": problems,
        "problems_total": len(all_problems),
        "source": {
            "topic": printable(record.topic, 256),
            "partition": record.partition,
            "offset": record.offset,
            "timestamp_ms": record.timestamp,
        },
        "key": _bytes_doc(record.key),
        "value": _bytes_doc(record.value),
        "headers": [
            [printable(name, FIELD_MAX), _bytes_doc(value, HEADER_PREFIX_BYTES)] for name, value in headers[:HEADERS_MAX]
        ],
        "headers_total": len(headers),
        "dead_lettered_by": PRODUCER,
        "dead_lettered_at": (now or datetime.now(timezone.utc)).isoformat(timespec="microseconds"),
    }
    return dead_letter_key(record.topic, record.partition, record.offset), orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class Bytes:
    """A key or value as a dead letter keeps it: the start of it, and what identifies all of it."""

    prefix: bytes
    size: int
    sha256: str

    @property
    def truncated(self) -> bool:
        return self.size > len(self.prefix)

    @property
    def exact(self) -> bytes | None:
        """All the bytes, when the dead letter kept all of them."""
        return None if self.truncated else self.prefix


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-letter record read back (either format)."""

    stage: str
    reason: str
    problems: tuple[tuple[str, str], ...]
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key_bytes: Bytes | None
    value_bytes: Bytes | None
    raw: dict

    @property
    def key(self) -> bytes | None:
        """The key, or its first PREFIX_BYTES if it was longer."""
        return None if self.key_bytes is None else self.key_bytes.prefix

    @property
    def value(self) -> bytes | None:
        """The value, or its first PREFIX_BYTES if it was longer (``value_bytes`` says which)."""
        return None if self.value_bytes is None else self.value_bytes.prefix


def _bytes_v1(b64: str | None) -> Bytes | None:
    if b64 is None:
        return None
    data = base64.b64decode(b64)
    return Bytes(data, len(data), hashlib.sha256(data).hexdigest())


def _bytes_v2(doc: dict | None) -> Bytes | None:
    if doc is None:
        return None
    return Bytes(base64.b64decode(doc["prefix_b64"]), int(doc["size"]), str(doc["sha256"]))


def parse_dead_letter(value: bytes) -> DeadLetter:
    doc = orjson.loads(value)
    if not isinstance(doc, dict) or doc.get("format") not in (1, FORMAT):
        raise ValueError(f"not a dead-letter record of format 1 or {FORMAT}")
    src = doc["source"]
    if doc["format"] == 1:
        key, val = _bytes_v1(doc["key_b64"]), _bytes_v1(doc["value_b64"])
    else:
        key, val = _bytes_v2(doc["key"]), _bytes_v2(doc["value"])
    return DeadLetter(
        stage=doc["stage"],
        reason=doc["reason"],
        problems=tuple((p["field"], p["problem"]) for p in doc.get("problems", ())),
        topic=src["topic"],
        partition=src["partition"],
        offset=src["offset"],
        timestamp_ms=src.get("timestamp_ms"),
        key_bytes=key,
        value_bytes=val,
        raw=doc,
    )
