"""State snapshots on ``events.topics.SNAPSHOTS``: the replay shortcut.

The live projector appends one every N folded events or T seconds (whichever
comes first, and only if something was folded since the last one), at a
batch boundary, so the state and the offsets in the header describe exactly
the same cut of the log.

Record: key ``b"snapshot"``; value::

    b"MLSNAP" | u8 format (=1) | u32 big-endian header length H
             | H bytes header (orjson, sorted keys)
             | body: zlib(state_to_bytes(state))   (stdlib zlib; zstd is not
                                                     installed here)

Header fields:

- ``next_offsets``: ``{"<topic>/<partition>": offset}`` for every event
  topic-partition the projector reads: the first offset *not* folded into
  this state (0 = nothing folded from that partition). Replay resumes each
  partition there.
- ``max_timestamp_ms``: the greatest broker timestamp (LogAppendTime) of any
  record folded into the state (``null`` if none). Every folded record has a
  timestamp <= this, so the snapshot is a valid starting point for "the mesh
  as of T" whenever ``max_timestamp_ms <= T``: take the latest such snapshot,
  then fold the records of each partition from ``next_offsets`` whose
  timestamp is <= T. (Choose by this header field, not by the snapshot
  record's own timestamp, which is later.)
- ``events``: records consumed from the event topics and folded into this
  state since the log began (dead-lettered ones are counted in
  ``dead_lettered``, not here).
- ``dead_lettered``: records of the cut that were dead-lettered instead.
- ``state_encoding``: ``"projector.state/orjson"`` (``state_from_bytes``);
  ``compression``: ``"zlib"``; ``state_bytes``: uncompressed body length;
  ``state_sha256``: hex SHA-256 of the uncompressed body (checked on decode).
- ``created_at`` (UTC ISO-8601) and ``producer`` (``"projector"``).
- ``fold_order``: ``"merge"`` when every record in the state was folded in
  ``events.topics.merge_order`` (through ``events.merge_gate``) since the
  state was empty, so the state is what replay's fold of the same records
  gives; ``null`` when that is not known: the projector that built the state
  folded (some of) it in fetch order, before the merge gate, and a catch-up
  then folds records of one partition before earlier ones of another, so the
  cut is not a prefix of the merge order. Replay starts only from ``"merge"``
  snapshots (``replay.snapshots.valid_for``).
- ``signer`` and ``signature`` (issue 13; present when the projector has a
  mesh identity): the serial of the projector's certificate and its ECDSA
  P-256 signature (``events.signing``) over ``header_signing_bytes``: the
  header without ``signature``, keys sorted. The header carries the body's
  SHA-256, so the signature covers the state too. Replay verifies it against
  the identity that held the serial when the snapshot was logged, and uses
  only snapshots signed by a ``projector`` identity (``replay.snapshots``).

``encode_snapshot`` / ``decode_snapshot`` are pure; ``replay`` imports them.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping

import orjson

from projector.framing import frame, unframe

MAGIC = b"MLSNAP"
FORMAT = 1
KEY = b"snapshot"
STATE_ENCODING = "projector.state/orjson"
COMPRESSION = "zlib"
MERGE_ORDER = "merge"  # the ``fold_order`` of a state folded in merge order from empty


class SnapshotError(ValueError):
    """Bytes that are not a snapshot this build understands (or are corrupt)."""


def tp_key(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


def parse_tp_key(key: str) -> tuple[str, int]:
    topic, _, partition = key.rpartition("/")
    return topic, int(partition)


@dataclass(frozen=True, slots=True)
class Snapshot:
    next_offsets: dict[str, int]
    max_timestamp_ms: int | None
    events: int
    state_bytes: bytes  # uncompressed ``state_to_bytes`` output
    dead_lettered: int = 0
    created_at: str = ""
    header: dict = field(default_factory=dict)

    def state(self):
        from projector.state import state_from_bytes

        return state_from_bytes(self.state_bytes)

    def next_offset(self, topic: str, partition: int = 0) -> int:
        return self.next_offsets.get(tp_key(topic, partition), 0)


def encode_snapshot(
    state_bytes: bytes,
    *,
    next_offsets: Mapping[str, int],
    max_timestamp_ms: int | None,
    events: int,
    fold_order: str | None,
    dead_lettered: int = 0,
    created_at: datetime | None = None,
    level: int = 6,
    signer=None,
) -> bytes:
    """The snapshot record's value; ``fold_order``: ``MERGE_ORDER`` only for a state folded in merge order from
    empty (the caller knows, the bytes do not say); ``signer`` (``events.signing.Signer``): sign its header."""
    header = {
        "format": FORMAT,
        "next_offsets": dict(sorted(next_offsets.items())),
        "max_timestamp_ms": max_timestamp_ms,
        "events": events,
        "fold_order": fold_order,
        "dead_lettered": dead_lettered,
        "state_encoding": STATE_ENCODING,
        "compression": COMPRESSION,
        "state_bytes": len(state_bytes),
        "state_sha256": hashlib.sha256(state_bytes).hexdigest(),
        "created_at": (created_at or datetime.now(timezone.utc)).isoformat(timespec="milliseconds"),
        "producer": "projector",
    }
    if signer is not None:
        from events.signing import signature_of  # loads cryptography: only a signing projector pays for it

        header["signer"] = signer.serial
        header["signature"] = signature_of(signer.key, header_signing_bytes(header))
    return frame(MAGIC, FORMAT, header, zlib.compress(state_bytes, level))


def header_signing_bytes(header: Mapping) -> bytes:
    """The bytes a snapshot's signature covers: its header without ``signature``, keys sorted."""
    return orjson.dumps({k: v for k, v in header.items() if k != "signature"}, option=orjson.OPT_SORT_KEYS)


def decode_header(data: bytes) -> dict:
    """Only the header (cheap: no decompression) — for choosing a snapshot."""
    return _header_and_body_at(data)[0]


def _header_and_body_at(data: bytes) -> tuple[dict, int]:
    header, body_at = unframe(data, MAGIC, FORMAT, "snapshot", SnapshotError)
    if header.get("state_encoding") != STATE_ENCODING or header.get("compression") != COMPRESSION:
        raise SnapshotError(
            f"unknown snapshot encoding {header.get('state_encoding')!r}/{header.get('compression')!r}"
        )
    return header, body_at


def decode_snapshot(data: bytes) -> Snapshot:
    header, body_at = _header_and_body_at(data)
    try:
        body = zlib.decompress(data[body_at:])
    except zlib.error as exc:
        raise SnapshotError(f"snapshot body does not decompress: {exc}") from None
    if len(body) != header["state_bytes"] or hashlib.sha256(body).hexdigest() != header["state_sha256"]:
        raise SnapshotError("snapshot body does not match its header (length or SHA-256)")
    return Snapshot(
        next_offsets={str(k): int(v) for k, v in header["next_offsets"].items()},
        max_timestamp_ms=header["max_timestamp_ms"],
        events=header["events"],
        state_bytes=body,
        dead_lettered=header.get("dead_lettered", 0),
        created_at=header.get("created_at", ""),
        header=header,
    )
