"""Dead-letter records: what the projector appends when it cannot use a record.

A record on an event topic that does not decode (``events.codec`` raised
``EventValidationError``), or whose fold raised unexpectedly, is never
dropped and never stops the projector: it is appended to
``events.topics.DEADLETTER`` and processing goes on with the next record.

Record format (pure functions here; the service does the I/O):

- key: ``"<source topic>/<partition>/<offset>"`` (utf-8). Deterministic, so a
  record dead-lettered twice (a replayed batch after a crash, or two projector
  deployments) is recognisably the same source record.
- value: orjson object with sorted keys::

      {
        "format": 1,
        "stage": "decode" | "fold",
        "reason": "payload.port: Input should be less than or equal to 65535",
        "problems": [{"field": "payload.port", "problem": "..."}],
        "source": {"topic": ..., "partition": 0, "offset": 17,
                   "timestamp_ms": 1763782800000},
        "key_b64": "<base64 of the original key>" | null,
        "value_b64": "<base64 of the original value>" | null,
        "headers": [["name", "<base64>"], ...],
        "dead_lettered_by": "projector",
        "dead_lettered_at": "2025-11-22T03:40:00.123456+00:00"
      }

  ``key_b64``/``value_b64`` are ``null`` when the original had no key / was a
  tombstone; ``base64.b64decode`` gives back the exact original bytes.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from events.errors import EventValidationError

FORMAT = 1
PRODUCER = "projector"
REASON_MAX = 4096


def dead_letter_key(topic: str, partition: int, offset: int) -> bytes:
    return f"{topic}/{partition}/{offset}".encode()


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(bytes(data)).decode("ascii")


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
        problems = [{"field": p.field, "problem": p.problem} for p in error.problems]
    elif isinstance(error, BaseException):
        reason = f"{type(error).__name__}: {error}"
        problems = []
    else:
        reason = str(error)
        problems = []
    if len(reason) > REASON_MAX:
        reason = reason[: REASON_MAX - 1] + "…"
    headers = [[str(name), _b64(value) if value is not None else None] for name, value in (getattr(record, "headers", None) or ())]
    doc = {
        "format": FORMAT,
        "stage": stage,
        "reason": reason or "invalid record",
        "problems": problems,
        "source": {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp_ms": record.timestamp,
        },
        "key_b64": _b64(record.key),
        "value_b64": _b64(record.value),
        "headers": headers,
        "dead_lettered_by": PRODUCER,
        "dead_lettered_at": (now or datetime.now(timezone.utc)).isoformat(timespec="microseconds"),
    }
    return dead_letter_key(record.topic, record.partition, record.offset), orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-letter record read back."""

    stage: str
    reason: str
    problems: tuple[tuple[str, str], ...]
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    raw: dict


def parse_dead_letter(value: bytes) -> DeadLetter:
    doc = orjson.loads(value)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"not a dead-letter record of format {FORMAT}")
    src = doc["source"]
    return DeadLetter(
        stage=doc["stage"],
        reason=doc["reason"],
        problems=tuple((p["field"], p["problem"]) for p in doc.get("problems", ())),
        topic=src["topic"],
        partition=src["partition"],
        offset=src["offset"],
        timestamp_ms=src.get("timestamp_ms"),
        key=None if doc["key_b64"] is None else base64.b64decode(doc["key_b64"]),
        value=None if doc["value_b64"] is None else base64.b64decode(doc["value_b64"]),
        raw=doc,
    )
