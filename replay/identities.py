"""Replay of the identities topic: who held which identity at an instant, and the issuance log.

The answer is ``identity.registry``'s fold (the same one ``meshlog ca serve``
decides with); this module only reads the topic and draws documents and
tables. Text that came from a client (requested_by, reasons) is bounded and
has control characters escaped before it reaches a terminal.
"""

from __future__ import annotations

from typing import Iterable

from aiokafka import AIOKafkaConsumer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from events import topics
from events.codec import decode_record
from events.envelope import Logged
from events.errors import EventValidationError
from events.types import IdentityIssued, IdentityRevoked, JoinTokenRedeemed
from identity.registry import EMPTY, Certificate, Registry, fold_many
from identity.spiffe import sidecar_service
from events.printable import printable
from replay.engine import iso
from replay.source import read_window


async def read_identity_events(consumer: AIOKafkaConsumer, from_ms: int, to_ms: int) -> tuple[list[Logged], int]:
    """Decoded identity events logged in ``[from_ms, to_ms]`` and the count of undecodable records."""
    if topics.IDENTITIES not in set(await consumer.topics()):
        return [], 0
    events, bad = [], 0
    for record in await read_window(consumer, topics.IDENTITIES, from_ms, to_ms):
        try:
            events.append(decode_record(record))
        except EventValidationError:
            bad += 1
    return events, bad


async def registry_at(consumer: AIOKafkaConsumer, at_ms: int, *, verify: bool = True) -> tuple[Registry, int, int]:
    """The registry at ``at_ms``, the count of undecodable identity records and of those refused (not the
    configured mesh root's: ``registry_of``)."""
    events, bad = await read_identity_events(consumer, 0, at_ms)
    if not verify:
        return fold_many(EMPTY, events), bad, 0
    from identity.verifier import configured_roots  # loads cryptography: only a verifying replay pays

    registry, refused = registry_of(events, configured_roots())
    return registry, bad, refused


def registry_of(events: list[Logged], roots) -> tuple[Registry, int]:
    """The registry the identity events give and how many were refused: with mesh roots configured, only the
    events a root signed are folded (``identity.verifier.Verifier.update``, as the projector, the checkers and
    the gateways fold them), so a forged issuance or revocation is not shown as held or revoked; without roots
    (plaintext development) every event counts."""
    if not roots:
        return fold_many(EMPTY, events), 0
    from identity.verifier import Verifier

    verifier = Verifier(roots=roots)
    verifier.update(events)
    return verifier.registry, verifier.identities_refused


async def load_verifier(consumer: AIOKafkaConsumer, now_ms: int):
    """An ``identity.verifier.Verifier`` over every identity event logged up to ``now_ms`` (the registry answers
    by log time, so it verifies any earlier event as it was then). Undecodable identity records are skipped."""
    from identity.verifier import Verifier, configured_roots  # loads cryptography: only a verifying replay pays

    events, _bad = await read_identity_events(consumer, 0, now_ms)
    verifier = Verifier(roots=configured_roots())  # with a mesh root, only the identity facts it signed count
    verifier.update(events)
    return verifier


def author_doc(verifier, lg: Logged) -> dict:
    """Who stated ``lg`` as replay shows it: the verified SPIFFE id, or why the event is unverified."""
    verdict = verifier.verdict(lg.envelope, lg.timestamp_ms)
    return {"verified": verdict.verified, "spiffe_id": verdict.author.uri if verdict.author else None,
            "serial": verdict.serial, "problem": verdict.problem}


def _cert_doc(c: Certificate) -> dict:
    return {"spiffe_id": c.spiffe_id, "serial": c.serial, "not_before": c.not_before.isoformat(),
            "not_after": c.not_after.isoformat(), "issued": iso(c.logged_ms), "how": c.how,
            "issuer": c.issuer, "requested_by": c.requested_by, "renews_serial": c.renews_serial,
            "public_key": c.public_key}


def held_document(registry: Registry, at_ms: int, *, service: str | None = None, undecodable: int = 0,
                  refused: int = 0) -> dict:
    held = [c for c in registry.held_at(at_ms) if service is None or sidecar_service(c.spiffe_id) == service]
    revoked = [
        {**_cert_doc(registry.certificates[s]), "revoked": iso(r.logged_ms), "reason": r.reason, "revoked_by": r.revoked_by}
        for s, r in sorted(registry.revocations.items())
        if r.logged_ms <= at_ms and s in registry.certificates
        and (service is None or sidecar_service(r.spiffe_id) == service)
        and registry.certificates[s].not_after.timestamp() * 1000 > at_ms  # revoked while it would still be valid
    ]
    return {"format": 1, "kind": "identities", "at": iso(at_ms), "at_ms": at_ms,
            "filter": {"service": service} if service else {},
            "held": [_cert_doc(c) for c in held], "revoked": revoked,
            "identity_events": registry.events, "undecodable": undecodable, "refused": refused}


def log_entries(events: Iterable[Logged], *, service: str | None = None) -> list[dict]:
    """Issuance, revocation and token redemption, one entry per event, for ``replay log``."""
    out = []
    for lg in events:
        p = lg.payload
        if isinstance(p, IdentityIssued):
            entry = {"spiffe_id": p.spiffe_id, "serial": p.serial, "how": p.how, "by": p.requested_by,
                     "not_after": p.not_after.isoformat(), "renews_serial": p.renews_serial}
            subject = p.spiffe_id
        elif isinstance(p, IdentityRevoked):
            entry = {"spiffe_id": p.spiffe_id, "serial": p.serial, "reason": p.reason, "by": p.revoked_by}
            subject = p.spiffe_id
        elif isinstance(p, JoinTokenRedeemed):
            entry = {"token_id": p.token_id, "service": p.service, "instance": p.instance_id}
            subject = f"spiffe://-/sidecar/{p.service}/{p.instance_id}"
        else:
            continue
        if service is not None and sidecar_service(subject) != service:
            continue
        out.append({"time": iso(lg.timestamp_ms), "timestamp_ms": lg.timestamp_ms, "offset": lg.offset,
                    "type": p.TYPE, "producer": lg.envelope.producer, **entry})
    return out


def print_held(console: Console, doc: dict, limit: int = 50) -> None:
    console.print(Text(f"identities held at {doc['at']} ({doc['identity_events']} identity events folded"
                       + (f", {doc['undecodable']} undecodable skipped" if doc["undecodable"] else "")
                       + (f", {doc['refused']} not signed by the mesh root, not folded" if doc.get("refused") else "")
                       + ")",
                       style="bold"))
    table = Table(title="held", title_justify="left")
    for col in ("spiffe id", "serial", "not before", "not after", "issued", "how"):
        table.add_column(col)
    rows = doc["held"] if limit <= 0 else doc["held"][:limit]
    for c in rows:
        table.add_row(*(Text(printable(v, 120)) for v in (c["spiffe_id"], c["serial"], c["not_before"], c["not_after"],
                                                   c["issued"], c["how"])))
    console.print(table)
    if len(doc["held"]) > len(rows):
        console.print(Text(f"… {len(doc['held']) - len(rows)} more (--limit 0 shows all)", style="dim"))
    if doc["revoked"]:
        revoked = Table(title="revoked (before their expiry)", title_justify="left")
        for col in ("spiffe id", "serial", "revoked", "reason", "by"):
            revoked.add_column(col)
        for c in doc["revoked"]:
            revoked.add_row(*(Text(printable(v, 120)) for v in (c["spiffe_id"], c["serial"], c["revoked"], c["reason"],
                                                         c["revoked_by"])))
        console.print(revoked)


def print_log_section(console: Console, entries: list[dict]) -> None:
    if not entries:
        return
    table = Table(title="identities", title_justify="left")
    for col in ("broker time", "type", "spiffe id / token", "serial", "detail"):
        table.add_column(col)
    for e in entries:
        if e["type"] == JoinTokenRedeemed.TYPE:
            cells = (e["time"], e["type"], f"token {e['token_id']}", "-", f"for {e['service']}/{e['instance']}")
        elif e["type"] == IdentityRevoked.TYPE:
            cells = (e["time"], e["type"], e["spiffe_id"], e["serial"], f"{e['reason']} (by {e['by']})")
        else:
            detail = f"{e['how']} by {e['by']}, until {e['not_after']}"
            if e.get("renews_serial"):
                detail += f", renews {e['renews_serial']}"
            cells = (e["time"], e["type"], e["spiffe_id"], e["serial"], detail)
        table.add_row(*(Text(printable(v, 160), style="red" if e["type"] == IdentityRevoked.TYPE else "")
                        for v in cells))
    console.print(table)
