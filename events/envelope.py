"""The envelope every event travels in, and the one way to build one.

Invariants:
- ``occurred_at`` is timezone-aware UTC (a naive datetime is refused).
- ``schema_version`` is the payload type's current version once decoded:
  older records are upcast on read (``events.codec``), never rewritten.
- ``Logged`` pairs an envelope with where the log put it (topic, partition,
  offset, broker timestamp); the fold orders by that, not by ``occurred_at``,
  which is the producer's clock.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Generic, TypeVar

from events.types import Payload

P = TypeVar("P", bound=Payload)


def default_producer_identity() -> str:
    """Who appended: ``user@host/pid`` unless MESHLOG_PRODUCER says otherwise."""
    explicit = os.environ.get("MESHLOG_PRODUCER")
    if explicit:
        return explicit
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"
    return f"{user}@{socket.gethostname()}/{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Envelope(Generic[P]):
    event_id: str
    type: str
    schema_version: int
    occurred_at: datetime
    producer: str
    payload: P

    def __post_init__(self) -> None:
        if self.occurred_at.tzinfo is None or self.occurred_at.utcoffset() != timezone.utc.utcoffset(None):
            raise ValueError("occurred_at must be timezone-aware UTC")
        if self.type != self.payload.TYPE:
            raise ValueError(f"type {self.type!r} does not match payload type {self.payload.TYPE!r}")

    @property
    def topic(self) -> str:
        return self.payload.TOPIC

    @property
    def key(self) -> str:
        return self.payload.key()


def new_event(payload: P, *, producer: str | None = None, occurred_at: datetime | None = None,
              event_id: str | None = None) -> Envelope[P]:
    return Envelope(
        event_id=event_id or str(uuid.uuid4()),
        type=payload.TYPE,
        schema_version=payload.SCHEMA_VERSION,
        occurred_at=occurred_at or datetime.now(timezone.utc),
        producer=producer or default_producer_identity(),
        payload=payload,
    )


@dataclass(frozen=True, slots=True)
class Logged(Generic[P]):
    """An envelope as it sits in the log."""

    envelope: Envelope[P]
    topic: str
    partition: int
    offset: int
    timestamp_ms: int  # the broker's LogAppendTime

    @property
    def payload(self) -> P:
        return self.envelope.payload
