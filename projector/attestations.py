"""Attestations on ``events.topics.ATTESTATIONS``: the projector vouches for the signatures it verified.

The live projector checks every event's signature as it folds
(``identity.verifier``). After each batch it appends one record listing what
it found good: per event the SHA-256 of its record's value exactly as the
projector received it (``events.envelope.received_digest_of``, the
envelope's ``received_digest``), signed with the projector's own mesh
identity. A replay that verifies the record's signature
once (``replay.attestations``) may then take each listed digest instead of
that signature's ECDSA check and Merkle proof (``Verifier.vouch``), and
decode the record without its signature fields
(``events.record_decoder``); every
other check of a verdict (the certificate held at the event's log time, not
revoked, the author's permissions) still runs, in the fold.

Record: key ``b"attestation"``; value::

    b"MLATTEST" | u8 format (=1) | u32 big-endian header length H
                | H bytes header (orjson, sorted keys)
                | body: the digests, 32 bytes each, back to back

Header fields: ``format``; ``digests`` (how many); ``digests_sha256`` (hex
SHA-256 of the body: the signature covers the digests through it);
``created_at`` (UTC ISO-8601); ``producer`` (``"projector"``); ``signer`` and
``signature``: the projector's certificate serial and its ECDSA P-256
signature over the header without ``signature``, keys sorted
(``projector.snapshots.header_signing_bytes``, as for snapshots).

Invariants:
- Format 2 (this one) names records by the digest of their bytes as
  received; format 1 named (serial, signature, signed bytes) by 16 bytes of
  SHA-256, which bound neither the proof nor the record's spelling, so a
  reader could not skip decoding them. A format-1 record is refused (its
  events are verified the full way).
- A digest names one record's bytes (serial, signature, proof, signed fields and all); a digest that matches no
  event vouches for nothing, so an attestation can only ever stand for checks
  its signer did. Whether to believe the signer is the reader's decision
  (``replay.attestations``: a ``projector`` identity held when the record was
  logged, the signature good, the body matching its header).
- ``encode_attestation`` / ``decode_attestation`` are pure; replay imports them.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Sequence

from projector.framing import frame, unframe
from projector.snapshots import header_signing_bytes

MAGIC = b"MLATTEST"
FORMAT = 2
KEY = b"attestation"
DIGEST_BYTES = 32
#: the most digests one record lists (a batch's good signatures; larger batches go in several records)
MAX_DIGESTS = 50_000


class AttestationError(ValueError):
    """Bytes that are not an attestation this build understands (or are corrupt)."""


def encode_attestation(digests: Sequence[bytes], signer, *, created_at: datetime | None = None) -> bytes:
    """The record's value: ``digests`` (``received_digest``s) signed by ``signer`` (``events.signing.Signer``)."""
    from events.signing import signature_of

    body = b"".join(digests)
    if len(body) != DIGEST_BYTES * len(digests) or not 0 < len(digests) <= MAX_DIGESTS:
        raise ValueError(f"an attestation lists 1-{MAX_DIGESTS} digests of {DIGEST_BYTES} bytes")
    header = {
        "format": FORMAT,
        "digests": len(digests),
        "digests_sha256": hashlib.sha256(body).hexdigest(),
        "created_at": (created_at or datetime.now(timezone.utc)).isoformat(timespec="milliseconds"),
        "producer": "projector",
        "signer": signer.serial,
    }
    header["signature"] = signature_of(signer.key, header_signing_bytes(header))
    return frame(MAGIC, FORMAT, header, body)


def decode_attestation(data: bytes) -> tuple[dict, list[bytes]]:
    """The header and the digests of an attestation record; ``AttestationError`` if it is not a whole one
    (the signature is not checked here: ``replay.attestations`` does, with the identities of the log)."""
    header, end = unframe(data, MAGIC, FORMAT, "attestation", AttestationError)
    body = bytes(data[end:])
    count = header.get("digests")
    if type(count) is not int or not 0 < count <= MAX_DIGESTS or len(body) != DIGEST_BYTES * count:
        raise AttestationError("attestation body does not hold the digests its header counts")
    if hashlib.sha256(body).hexdigest() != header.get("digests_sha256"):
        raise AttestationError("attestation body does not match its header's SHA-256")
    return header, [body[i: i + DIGEST_BYTES] for i in range(0, len(body), DIGEST_BYTES)]
