"""Attestations on ``events.topics.ATTESTATIONS``: the projector vouches for the signatures it verified.

The live projector checks every event's signature as it folds
(``identity.verifier``). After each batch it appends one record naming what
it found good as *runs*: per partition, each stretch of records it received
one after another and found well signed, named by where it lies (topic,
partition, first and last offset, how many records) and by one digest over
those records' values exactly as received (``RunHasher``). The record is
signed with the projector's own mesh identity. A replay that verifies the
record's signature once (``replay.attestations``) and finds the same bytes
at those offsets (``replay.attested_runs``: one SHA-256 over a run's bytes,
not one per record) may then decode each of those records without its
signature fields (``events.record_decoder``) and take the run instead of the
signature's ECDSA check and Merkle proof (``Verifier.verdict``); every other
check of a verdict (the certificate held at the event's log time, not
revoked, the author's permissions) still runs, in the fold.

Record: key ``b"attestation"``; value::

    b"MLATTEST" | u8 format (=3) | u32 big-endian header length H
                | H bytes header (orjson, sorted keys) | no body

Header fields: ``format``; ``runs``: a list of ``[topic, partition, first
offset, last offset, records, digest]`` (the digest as 64 hex digits);
``created_at`` (UTC ISO-8601); ``producer`` (``"projector"``); ``signer``
and ``signature``: the projector's certificate serial and its ECDSA P-256
signature over the header without ``signature``, keys sorted
(``projector.snapshots.header_signing_bytes``, as for snapshots), so the
signature covers every run.

Invariants:
- A run's digest binds every byte of every record in it (serial, signature,
  proof, signed fields and their spelling) and where each record ends (the
  lengths are hashed too), so the only records it can stand for are the
  exact ones the projector verified; where it lies binds which partition and
  offsets a reader may apply it to, and ``records`` how many records a
  reader must find there (a read_committed consumer sees the same records at
  the same offsets: transaction markers and aborted records are skipped by
  both). A run a reader cannot match whole (other bytes, another count, a
  cut starting or ending inside it) vouches for nothing: its records are
  verified the full way.
- A run is only ever made of records the projector found well signed,
  received one after another from one partition within one batch: a record
  it did not (unsigned, badly signed, undecodable) ends the run
  (``runs_of``).
- Format 3 (this one) names runs; format 2 named each record by its own
  digest, which cost a reader a SHA-256 call and two lookups in a set of
  every digest per record (a third of what verification added to a cold
  replay); format 1 named (serial, signature, signed bytes) by 16 bytes. A
  record of an older format is refused (its events are verified the full
  way).
- ``encode_attestation`` / ``decode_attestation`` / ``runs_of`` /
  ``RunHasher`` are pure; replay imports them.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Sequence

from projector.framing import frame, unframe
from projector.snapshots import header_signing_bytes

MAGIC = b"MLATTEST"
FORMAT = 3
KEY = b"attestation"
DIGEST_BYTES = 32
#: the most runs one record lists (a batch's; more go in several records)
MAX_RUNS = 10_000


class AttestationError(ValueError):
    """Bytes that are not an attestation this build understands (or are corrupt)."""


@dataclass(frozen=True, slots=True)
class Run:
    """Records ``first``..``last`` of one partition (``records`` of them), all well signed, by their digest."""

    topic: str
    partition: int
    first: int
    last: int
    records: int
    digest: bytes  # RunHasher's, over exactly those records' values

    def as_list(self) -> list:
        return [self.topic, self.partition, self.first, self.last, self.records, self.digest.hex()]


class RunHasher:
    """The digest of a run, fed its records' values in offset order, in as many slices as they arrive in.

    SHA-256 over the SHA-256 of the values' lengths (4 bytes each, big-endian) and the SHA-256 of the values
    themselves, back to back: two running hashes fed a slice at a time (one C call per slice, not per record),
    and a split of the same bytes into other records gives another digest."""

    __slots__ = ("_lengths", "_values", "records")

    def __init__(self) -> None:
        self._lengths = hashlib.sha256()
        self._values = hashlib.sha256()
        self.records = 0

    def update(self, values: Sequence[bytes]) -> None:
        self._lengths.update(struct.pack(f">{len(values)}I", *map(len, values)))
        self._values.update(b"".join(values))
        self.records += len(values)

    def digest(self) -> bytes:
        return hashlib.sha256(self._lengths.digest() + self._values.digest()).digest()


def run_digest(values: Sequence[bytes]) -> bytes:
    hasher = RunHasher()
    hasher.update(values)
    return hasher.digest()


def runs_of(received: Iterable[tuple[str, int, int, bytes | None, bool]]) -> list[Run]:
    """The runs of one batch: ``received`` is every record the projector took in, as (topic, partition, offset,
    value, found well signed), each partition's in offset order (partitions interleaved as they came); a record
    not found well signed ends its partition's run."""
    open_runs: dict[tuple[str, int], list] = {}  # (topic, partition) -> [first, last, values]
    runs: list[Run] = []

    def close(key: tuple[str, int]) -> None:
        first, last, values = open_runs.pop(key)
        runs.append(Run(key[0], key[1], first, last, len(values), run_digest(values)))

    for topic, partition, offset, value, good in received:
        key = (topic, partition)
        current = open_runs.get(key)
        if not good or value is None:
            if current is not None:
                close(key)
            continue
        if current is not None and offset <= current[1]:  # not after the run (never, in offset order): a new one
            close(key)
            current = None
        if current is None:
            open_runs[key] = [offset, offset, [value]]
        else:
            current[1] = offset
            current[2].append(value)
    for key in list(open_runs):
        close(key)
    return runs


def encode_attestation(runs: Sequence[Run], signer, *, created_at: datetime | None = None) -> bytes:
    """The record's value: ``runs`` signed by ``signer`` (``events.signing.Signer``)."""
    from events.signing import signature_of

    if not 0 < len(runs) <= MAX_RUNS:
        raise ValueError(f"an attestation lists 1-{MAX_RUNS} runs")
    header = {
        "format": FORMAT,
        "runs": [run.as_list() for run in runs],
        "created_at": (created_at or datetime.now(timezone.utc)).isoformat(timespec="milliseconds"),
        "producer": "projector",
        "signer": signer.serial,
    }
    header["signature"] = signature_of(signer.key, header_signing_bytes(header))
    return frame(MAGIC, FORMAT, header, b"")


def decode_attestation(data: bytes) -> tuple[dict, list[Run]]:
    """The header and the runs of an attestation record; ``AttestationError`` if it is not a whole one (the
    signature is not checked here: ``replay.attestations`` does, with the identities of the log)."""
    header, end = unframe(data, MAGIC, FORMAT, "attestation", AttestationError)
    if len(data) != end:
        raise AttestationError("attestation has bytes after its header")
    listed = header.get("runs")
    if type(listed) is not list or not 0 < len(listed) <= MAX_RUNS:
        raise AttestationError(f"attestation does not list 1-{MAX_RUNS} runs")
    return header, [_run(i, item) for i, item in enumerate(listed)]


def _run(index: int, item) -> Run:
    if type(item) is not list or len(item) != 6:
        raise AttestationError(f"runs[{index}] is not [topic, partition, first, last, records, digest]")
    topic, partition, first, last, records, digest = item
    if type(topic) is not str or not topic:
        raise AttestationError(f"runs[{index}]: the topic is not a name")
    if not all(type(n) is int for n in (partition, first, last, records)):
        raise AttestationError(f"runs[{index}]: partition, offsets and records are integers")
    if partition < 0 or not 0 <= first <= last or not 1 <= records <= last - first + 1:
        raise AttestationError(f"runs[{index}]: offsets {first}..{last} cannot hold {records} records "
                               f"(partition {partition})")
    try:
        raw = bytes.fromhex(digest) if type(digest) is str and len(digest) == 2 * DIGEST_BYTES else None
    except ValueError:
        raw = None
    if raw is None:
        raise AttestationError(f"runs[{index}]: the digest is not {DIGEST_BYTES} bytes of hex")
    return Run(topic, partition, first, last, records, raw)
