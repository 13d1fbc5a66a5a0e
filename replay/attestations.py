"""Taking the projector's attestations: a verified record vouches for the runs of signed records it lists.

A cold replay of a long cut (``replay.engine.rebuild``) reads the attestation
records (``projector.attestations``) logged since the state it starts from,
checks each record's signature once, and keeps the runs of the records it
accepts (``AttestedRuns``). Its read then matches each run against the bytes
it finds at the run's offsets (``replay.attested_runs``), and the records of
a run matched whole are decoded without their signature fields and taken as
verified by the fold, without the ECDSA check and Merkle proof of each.
Nothing else of a verdict changes (certificate held at the event's log time,
revocation, the author's permissions: all still checked per event).

Invariants:
- A record is accepted only if it decodes whole (a format this build reads,
  every run well formed) and its header is signed by an identity with the
  ``projector`` role held when the record was logged
  (``attestation_refusal``, pure: the same checks ``Verifier.check`` runs for
  events and snapshots). A refused record is skipped with a warning and
  changes nothing: the events it names are verified the full way.
- A run stands only for the exact bytes it was computed from, so no
  attestation, forged or not, can make an event whose signature is bad pass:
  no run a verifier attested holds its bytes.
- Without a verifier (``--insecure-events``) nothing is read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from events import topics
from events.printable import printable
from projector.attestations import AttestationError, Run, decode_attestation
from replay.attested_runs import AttestedRuns
from replay.snapshots import projector_header_refusal

log = logging.getLogger(__name__)

#: a cut shorter than this is verified the full way: reading the attestations would cost more than it saves
MIN_EVENTS = 1_000


@dataclass(slots=True)
class Vouched:
    """What reading the attestations gave: records accepted, refused (and why, the first few), their runs."""

    accepted: int = 0
    refused: int = 0
    why: list[str] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)

    def attested(self) -> AttestedRuns:
        return AttestedRuns(self.runs)

    def as_dict(self) -> dict:
        return {"accepted": self.accepted, "refused": self.refused, "runs": len(self.runs),
                "records": sum(run.records for run in self.runs)}


def attestation_refusal(verifier, header: Mapping, logged_ms: int) -> str | None:
    """Why an attestation logged at ``logged_ms`` must not be believed, or None if a projector signed it (the
    checks of a snapshot's header: ``replay.snapshots.projector_header_refusal``)."""
    return projector_header_refusal(verifier, header, logged_ms, "attestation")


def vouch_records(verifier, records: Iterable) -> Vouched:
    """Check each attestation record (``value``, ``timestamp``, ``offset``) and keep the runs of those a projector
    signed (pure but for the verifier's caches)."""
    out = Vouched()
    for record in records:
        try:
            header, runs = decode_attestation(record.value)
            refused = attestation_refusal(verifier, header, record.timestamp)
        except AttestationError as exc:
            refused = str(exc)
        if refused is not None:
            out.refused += 1
            if len(out.why) < 5:
                out.why.append(f"offset {record.offset}: {refused}")
            continue
        out.runs += runs
        out.accepted += 1
    return out


async def vouch_attested(consumer, verifier, from_ms: int, to_ms: int) -> Vouched:
    """Read the attestations logged in ``[from_ms, to_ms]`` and keep the runs the accepted ones list."""
    from replay.source import read_window

    if topics.ATTESTATIONS not in set(await consumer.topics()):
        return Vouched()
    vouched = vouch_records(verifier, await read_window(consumer, topics.ATTESTATIONS, from_ms, to_ms))
    if vouched.refused:
        log.warning("%d attestation record(s) not believed (their events are verified the full way): %s",
                    vouched.refused, printable("; ".join(vouched.why), 600))
    return vouched
