"""Choosing the snapshot a replay at T starts from.

A snapshot (``projector.snapshots``) is a valid start for "the mesh as of T"
when every record folded into it was logged at or before T
(``max_timestamp_ms <= T``); replay then folds each partition from the
snapshot's ``next_offsets`` up to the cut at T. Among valid snapshots the one
that folded the most records leaves the least to read.

Where to look: the snapshot topic uses LogAppendTime and a snapshot is
appended after the records it folded, so every snapshot *logged* at or
before T is valid: the last of them (just before ``offsets_for_times(T+1)``)
is found in one lookup. Snapshots logged after T can still be valid (the log
was idle between T and the snapshot), so a few are read forward too, until
one folded past T. Several projectors (a fresh data dir, a second
deployment) may interleave snapshots on the topic; a few records back are
read as well, and the best valid one wins. Anything undecodable is skipped.

Only a snapshot whose state was folded in merge order (header ``fold_order``
``"merge"``) is a prefix of what replay folds: a projector from before the
merge gate folded a catch-up partition by partition, and its snapshots'
offsets cut the log where replay's order does not. Such snapshots are never
started from (one warning says how many were passed over).

Signed snapshots (issue 13): given a verifier (replay's default), a
snapshot is used only if its header is signed by a ``projector`` identity
held when the snapshot was logged (``snapshot_refusal``, pure); a snapshot
that is not is skipped with a warning naming why, and the next best one is
tried, down to folding from the start. Without a verifier (``--insecure-events``)
snapshots are used unverified, as before signing.

``choose`` is pure (unit-tested); ``find_snapshot`` does the I/O.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from events import topics
from projector.snapshots import (
    MERGE_ORDER, Snapshot, SnapshotError, decode_header, decode_snapshot, header_signing_bytes,
)
from events.printable import printable
from replay.source import read_range

log = logging.getLogger(__name__)

LOOK_BACK = 4
LOOK_AHEAD = 8


@dataclass(frozen=True, slots=True)
class Candidate:
    offset: int
    timestamp_ms: int  # the snapshot record's own (append) time
    header: dict
    partition: int = 0

    @property
    def max_timestamp_ms(self) -> int | None:
        return self.header.get("max_timestamp_ms")

    @property
    def folded(self) -> int:
        return sum(int(v) for v in self.header.get("next_offsets", {}).values())


@dataclass(frozen=True, slots=True)
class ChosenSnapshot:
    offset: int
    timestamp_ms: int
    snapshot: Snapshot

    def describe(self) -> dict:
        h = self.snapshot.header
        return {
            "topic": topics.SNAPSHOTS,
            "offset": self.offset,
            "appended_ms": self.timestamp_ms,
            "max_timestamp_ms": self.snapshot.max_timestamp_ms,
            "events": self.snapshot.events,
            "next_offsets": dict(sorted(self.snapshot.next_offsets.items())),
            "created_at": h.get("created_at", ""),
        }


def valid_for(c: Candidate, at_ms: int, log_stops: Mapping[str, int] | None = None) -> bool:
    """Whether the snapshot's state is replay's fold of a prefix of the log as of ``at_ms``."""
    return c.header.get("fold_order") == MERGE_ORDER and _within_cut(c, at_ms, log_stops)


def _within_cut(c: Candidate, at_ms: int, log_stops: Mapping[str, int] | None) -> bool:
    """Whether everything the snapshot folded is in the cut at ``at_ms`` (whatever order it was folded in)."""
    mts = c.max_timestamp_ms
    if mts is None or mts > at_ms:
        return False
    offsets = c.header.get("next_offsets")
    if not isinstance(offsets, dict) or not offsets:
        return False
    if log_stops is not None:
        # defensive: a prefix of the cut never reaches past its stop offsets
        for key, off in offsets.items():
            if key in log_stops and int(off) > log_stops[key]:
                return False
    return True


def choose(candidates: list[Candidate], at_ms: int, log_stops: Mapping[str, int] | None = None) -> list[Candidate]:
    """The valid candidates, best first (most records folded, then the latest)."""
    good = [c for c in candidates if valid_for(c, at_ms, log_stops)]
    return sorted(good, key=lambda c: (c.folded, c.offset), reverse=True)


def snapshot_refusal(verifier, header: Mapping, logged_ms: int) -> str | None:
    """Why a snapshot logged at ``logged_ms`` must not be used (its signature), or None if a projector signed it."""
    return projector_header_refusal(verifier, header, logged_ms, "snapshot")


def projector_header_refusal(verifier, header: Mapping, logged_ms: int, what: str) -> str | None:
    """Why a record whose header a projector signs (a snapshot, an attestation: ``header_signing_bytes``) logged at
    ``logged_ms`` must not be believed, or None if an identity with the projector role held then signed it."""
    serial, signature = header.get("signer"), header.get("signature")
    if not isinstance(serial, str) or not isinstance(signature, str):
        return "it is not signed"
    verdict = verifier.check(serial, signature, header_signing_bytes(header), logged_ms, what=what)
    if verdict.author is None:
        return f"{verdict.problem}: {verdict.detail}"
    if verdict.author.role != "projector":
        return f"it is signed by {verdict.author.uri}, not by a projector"
    return None


async def find_snapshot(
    consumer: AIOKafkaConsumer, at_ms: int, log_stops: Mapping[str, int] | None = None, verifier=None,
) -> ChosenSnapshot | None:
    """The best snapshot to start a replay at ``at_ms`` from, decoded; None if there is none."""
    if topics.SNAPSHOTS not in set(await consumer.topics()):
        return None
    spec = topics.BY_NAME[topics.SNAPSHOTS]
    tps = [TopicPartition(topics.SNAPSHOTS, p) for p in range(spec.partitions)]
    ends = await consumer.end_offsets(tps)
    begins = await consumer.beginning_offsets(tps)
    found = await consumer.offsets_for_times({tp: at_ms + 1 for tp in tps})
    candidates: list[Candidate] = []
    values: dict[tuple[int, int], bytes] = {}
    fetch_ordered: list[int] = []  # offsets of snapshots passed over for their fold order alone

    async def scan(tp: TopicPartition, lo: int, hi: int, split: int) -> None:
        def past(record) -> bool:
            # forward of the split: stop at the first snapshot that folded past T
            if record.offset < split:
                return False
            try:
                mts = decode_header(record.value).get("max_timestamp_ms")
            except (SnapshotError, TypeError):
                return False
            return mts is None or mts > at_ms

        for record in await read_range(consumer, tp, lo, hi, until=past):
            try:
                header = decode_header(record.value)
            except (SnapshotError, TypeError) as exc:
                log.debug("skipping snapshot record %d: %s", record.offset, exc)
                continue
            c = Candidate(record.offset, record.timestamp, header, tp.partition)
            if not _within_cut(c, at_ms, log_stops):
                continue
            if header.get("fold_order") == MERGE_ORDER:
                candidates.append(c)
                values[(tp.partition, record.offset)] = record.value
            else:
                fetch_ordered.append(record.offset)

    for tp in tps:
        if ends[tp] <= begins[tp]:
            continue
        hit = found.get(tp)
        split = hit.offset if hit is not None else ends[tp]
        lo = max(begins[tp], split - LOOK_BACK)
        await scan(tp, lo, min(ends[tp], split + LOOK_AHEAD), split)
        step = 4 * LOOK_BACK
        while not candidates and lo > begins[tp]:
            # nothing usable near T (undecodable records?): look further back, in growing steps
            hi, lo = lo, max(begins[tp], lo - step)
            await scan(tp, lo, hi, hi)
            step *= 4
    if fetch_ordered:
        log.warning(
            "%d snapshot(s) (offsets %d..%d) passed over: their projector folded in fetch order, before "
            "merge-ordered folding, so their state is not a prefix of replay's fold",
            len(fetch_ordered), min(fetch_ordered), max(fetch_ordered),
        )
    for best in choose(candidates, at_ms, log_stops):
        if verifier is not None:
            refused = snapshot_refusal(verifier, best.header, best.timestamp_ms)
            if refused is not None:
                log.warning("snapshot at offset %d skipped: %s; trying an older one (or the start of the log)",
                            best.offset, printable(refused, 400))
                continue
        try:
            snap = decode_snapshot(values[(best.partition, best.offset)])
        except SnapshotError as exc:
            log.warning("snapshot at offset %d does not decode (%s); trying an older one", best.offset, exc)
            continue
        return ChosenSnapshot(best.offset, best.timestamp_ms, snap)
    return None
