"""Who held which identity when: a pure fold over the identities topic.

``fold(registry, logged) -> registry`` and ``fold_many`` are the only ways to
build a ``Registry``; ``replay``, ``meshlog ca serve`` and (later) the
gateway and projector all use this one module, so they agree on every answer.

Invariants:
- Pure: no clock, no I/O; the input registry is never mutated. Times are the
  broker's LogAppendTime of the events (``Logged.timestamp_ms``), as in the
  projector's fold, plus the certificates' own not-before/not-after.
- A certificate is *held* at instant t (ms) iff its issuance was logged at or
  before t, ``not_before <= t < not_after``, and no revocation of its serial
  was logged at or before t. ``status_at`` names the first failing condition.
- A revocation is kept even if its serial's issuance has not been folded
  (yet): the order of two facts about one serial never changes the answer.
- Join tokens: the first ``JoinTokenRedeemed`` of a ``token_id`` in log order
  wins; later ones are recorded nowhere (``winner`` tells a replica whether
  its own claim won). The identities topic has one partition, so "log
  order" is offset order.
- Events of other types are ignored (the fold is total over the topic).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Iterable, Literal, Mapping

from events.envelope import Logged
from events.types import IdentityIssued, IdentityRevoked, JoinTokenRedeemed

Status = Literal["held", "not_issued", "not_yet_valid", "expired", "revoked"]


def epoch_ms(t: datetime) -> int:
    """``t`` in milliseconds since the epoch (how broker times are compared with a certificate's)."""
    return int(t.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Revocation:
    serial: str
    spiffe_id: str
    reason: str
    revoked_by: str
    logged_ms: int


@dataclass(frozen=True, slots=True)
class Certificate:
    """One issued certificate as the log knows it."""

    spiffe_id: str
    serial: str
    public_key: str  # PEM
    certificate: str  # PEM
    not_before: datetime
    not_after: datetime
    issuer: str
    issuer_fingerprint: str
    how: str
    requested_by: str
    logged_ms: int
    renews_serial: str | None = None
    join_token_id: str | None = None


@dataclass(frozen=True, slots=True)
class Redemption:
    token_id: str
    claim_id: str
    service: str
    instance_id: str
    logged_ms: int
    offset: int


@dataclass(frozen=True, slots=True)
class Registry:
    certificates: Mapping[str, Certificate] = field(default_factory=lambda: MappingProxyType({}))
    revocations: Mapping[str, Revocation] = field(default_factory=lambda: MappingProxyType({}))
    redemptions: Mapping[str, Redemption] = field(default_factory=lambda: MappingProxyType({}))
    events: int = 0  # identity events folded, for "how far" reporting

    # ---- queries

    def status_at(self, serial: str, at_ms: int) -> Status:
        cert = self.certificates.get(serial)
        if cert is None or cert.logged_ms > at_ms:
            return "not_issued"
        revoked = self.revocations.get(serial)
        if revoked is not None and revoked.logged_ms <= at_ms:
            return "revoked"
        if at_ms < epoch_ms(cert.not_before):
            return "not_yet_valid"
        if at_ms >= epoch_ms(cert.not_after):
            return "expired"
        return "held"

    def held(self, serial: str, at_ms: int) -> Certificate | None:
        """The certificate ``serial`` if it was held at ``at_ms`` (e.g. to verify an event logged then), else None."""
        return self.certificates[serial] if self.status_at(serial, at_ms) == "held" else None

    def held_at(self, at_ms: int) -> list[Certificate]:
        """Certificates held at ``at_ms``, by SPIFFE id then not-before."""
        held = [c for s, c in self.certificates.items() if self.status_at(s, at_ms) == "held"]
        return sorted(held, key=lambda c: (c.spiffe_id, c.not_before, c.serial))

    def revocation(self, serial: str) -> Revocation | None:
        return self.revocations.get(serial)

    def token_used(self, token_id: str) -> bool:
        return token_id in self.redemptions

    def winner(self, token_id: str) -> Redemption | None:
        """The first redemption of ``token_id`` in log order, if any."""
        return self.redemptions.get(token_id)


EMPTY = Registry()


def fold_many(registry: Registry, events: Iterable[Logged]) -> Registry:
    """Fold a batch: one copy of each map per batch, not per event."""
    certificates = revocations = redemptions = None
    count = registry.events
    for logged in events:
        p = logged.payload
        if isinstance(p, IdentityIssued):
            if certificates is None:
                certificates = dict(registry.certificates)
            certificates.setdefault(p.serial, Certificate(
                spiffe_id=p.spiffe_id, serial=p.serial, public_key=p.public_key, certificate=p.certificate,
                not_before=p.not_before.astimezone(timezone.utc), not_after=p.not_after.astimezone(timezone.utc),
                issuer=p.issuer, issuer_fingerprint=p.issuer_fingerprint, how=p.how, requested_by=p.requested_by,
                logged_ms=logged.timestamp_ms, renews_serial=p.renews_serial, join_token_id=p.join_token_id))
        elif isinstance(p, IdentityRevoked):
            if revocations is None:
                revocations = dict(registry.revocations)
            # the first revocation counts: a later one cannot move the instant a key stopped being trusted
            revocations.setdefault(p.serial, Revocation(serial=p.serial, spiffe_id=p.spiffe_id, reason=p.reason,
                                                        revoked_by=p.revoked_by, logged_ms=logged.timestamp_ms))
        elif isinstance(p, JoinTokenRedeemed):
            if redemptions is None:
                redemptions = dict(registry.redemptions)
            redemptions.setdefault(p.token_id, Redemption(token_id=p.token_id, claim_id=p.claim_id,
                                                          service=p.service, instance_id=p.instance_id,
                                                          logged_ms=logged.timestamp_ms, offset=logged.offset))
        else:
            continue
        count += 1
    if certificates is None and revocations is None and redemptions is None:
        return registry
    return replace(
        registry,
        certificates=MappingProxyType(certificates) if certificates is not None else registry.certificates,
        revocations=MappingProxyType(revocations) if revocations is not None else registry.revocations,
        redemptions=MappingProxyType(redemptions) if redemptions is not None else registry.redemptions,
        events=count,
    )


def fold(registry: Registry, logged: Logged) -> Registry:
    return fold_many(registry, (logged,))
