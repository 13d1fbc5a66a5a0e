"""The envelope every event travels in, and the one way to build one.

Invariants:
- ``occurred_at`` is timezone-aware UTC (a naive datetime is refused).
- ``schema_version`` is the payload type's current version once decoded:
  older records are upcast on read (``events.codec``), never rewritten.
- ``Logged`` pairs an envelope with where the log put it (topic, partition,
  offset, broker timestamp); the fold orders by that, not by ``occurred_at``,
  which is the producer's clock.
- The wire fields are listed here and only here (``REQUIRED_FIELDS``,
  ``SIGNATURE_FIELDS``): the codec and replay's fast decoder both read them.
  A signed envelope carries both ``signer`` (the serial, lowercase hex, of the
  certificate whose key signed it) and ``signature`` (base64 of the DER ECDSA
  P-256/SHA-256 signature over ``events.signing.signing_bytes``: the envelope's
  document without ``signature``, keys sorted); an unsigned one carries
  neither. One signed with its producer's batch (``events.signing.sign_batch``)
  also carries ``proof``, and its signature covers the batch's Merkle root.
  ``signed_bytes`` keeps those exact bytes from decoding (they are
  what was signed, even if the payload is later upcast); it takes no part in
  equality.
- ``received_digest``: for a signed envelope decoded from a record, the
  SHA-256 (all 32 bytes) of the record's value exactly as received
  (``received_digest_of``), set by the decoders and nothing else; what a
  projector attestation names (``projector.attestations``). It binds every
  byte of the record: signature, proof, serial, payload and their spelling.
  An envelope decoded lazily because its record lies in a projector's
  attested run that the read matched (``events.record_decoder``,
  ``replay.attested_runs``) has no ``signed_bytes`` and no ``proof``, and
  ``ATTESTED_RUN`` for its ``received_digest``: the verifier accepts it only
  as attested. Only that decoder path sets ``ATTESTED_RUN``; nothing read
  from a record can be it (an object, not bytes: compared by identity). No
  part in equality.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Generic, TypeVar

from events.types import Payload

P = TypeVar("P", bound=Payload)

#: every envelope has these, in this order (the order ``encode`` writes them: sorted)
REQUIRED_FIELDS: tuple[str, ...] = ("event_id", "type", "schema_version", "occurred_at", "producer", "payload")
#: a signed envelope has both of these, an unsigned one neither
SIGNATURE_FIELDS: tuple[str, ...] = ("signer", "signature")
#: an envelope signed as part of a batch also has this (its Merkle proof, events.signing)
BATCH_FIELDS: tuple[str, ...] = ("proof",)
ENVELOPE_FIELDS: tuple[str, ...] = REQUIRED_FIELDS + SIGNATURE_FIELDS + BATCH_FIELDS


class _AttestedRun:
    """The type of ``ATTESTED_RUN``: one instance, which pickles by name (it crosses from replay's reading
    process as itself, ``replay.pipeline``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ATTESTED_RUN"

    def __reduce__(self) -> str:
        return "ATTESTED_RUN"


#: the ``received_digest`` of an envelope decoded lazily in a matched attested run (see the module docstring)
ATTESTED_RUN = _AttestedRun()


def received_digest_of(value: bytes) -> bytes:
    """The digest an attestation names a signed record by: SHA-256 of its value as received. All 32 bytes: a
    producer can spell one valid record (and one forged one) in countless byte strings (whitespace, escapes), so a
    truncated digest would let it search for a collision between the two (2**64 hashes for 16 bytes)."""
    return hashlib.sha256(value).digest()


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
    signer: str | None = None  # serial (hex) of the signing certificate
    signature: str | None = None  # base64 DER ECDSA signature over events.signing.signing_bytes
    signed_bytes: bytes | None = field(default=None, compare=False, repr=False)  # what was signed, as decoded
    proof: tuple[str, ...] | None = None  # Merkle proof to the batch root the signature covers (batch-signed)
    received_digest: bytes | None = field(default=None, compare=False, repr=False)  # of the record, as received

    def __post_init__(self) -> None:
        if self.occurred_at.tzinfo is None or self.occurred_at.utcoffset() != timezone.utc.utcoffset(None):
            raise ValueError("occurred_at must be timezone-aware UTC")
        if self.type != self.payload.TYPE:
            raise ValueError(f"type {self.type!r} does not match payload type {self.payload.TYPE!r}")
        if (self.signer is None) != (self.signature is None):
            raise ValueError("signer and signature: give both or neither")
        if self.proof is not None and self.signature is None:
            raise ValueError("proof: only a signed envelope has one")

    @property
    def signed(self) -> bool:
        return self.signature is not None

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
