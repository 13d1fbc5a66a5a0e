"""Signed stories: a mesh CA, identities issued in the log, events signed by who states them.

``Trust`` issues certificates (and the ``IdentityIssued`` events of the log),
``SignedLog`` appends events signed by a named identity, each one through the
wire (``encode`` then ``decode``), so the fold verifies exactly what a reader
of the log would. Keys are made once per module (key generation is slow).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from events import types as t
from events.codec import decode, encode
from events.envelope import Logged, new_event
from events.signing import Signer
from identity import pki, records, spiffe
from identity.registry import EMPTY, fold_many as fold_identities
from identity.verifier import Verifier
from tests.unit.projector.helpers import OCCURRED, Log

DOMAIN = "mesh.local"
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
MS0 = int(T0.timestamp() * 1000)


def sidecar(service: str, instance: str) -> spiffe.SpiffeId:
    return spiffe.sidecar(DOMAIN, service, instance)


def operator(user: str = "ops") -> spiffe.SpiffeId:
    return spiffe.operator(DOMAIN, user)


def checker(name: str = "c1") -> spiffe.SpiffeId:
    return spiffe.checker(DOMAIN, name)


class Trust:
    """A CA and the identities it issued, as the identities topic would hold them."""

    def __init__(self) -> None:
        self.ca = pki.create_root(DOMAIN, now=T0 - timedelta(days=1))
        self.signers: dict[str, Signer] = {}
        self.identity_events: list[Logged] = []

    def issue(self, ident: spiffe.SpiffeId, *, at: datetime = T0 - timedelta(minutes=1),
              lifetime: timedelta = timedelta(hours=24), logged_ms: int | None = None,
              ca: pki.CertificateAuthority | None = None, log_it: bool = True) -> Signer:
        key = pki.generate_key()
        cert = pki.issue(ca or self.ca, ident, key.public_key(), now=at, lifetime=lifetime)
        signer = Signer(key, pki.serial_hex(cert))
        if log_it:
            event = records.issued(cert, (ca or self.ca).certificate, how="offline", requested_by="test")
            ms = logged_ms if logged_ms is not None else int(at.timestamp() * 1000)
            env = records.authority_signer(self.ca).sign(new_event(event))  # signed by the root, as the CA does
            self.identity_events.append(Logged(decode(encode(env), event.TOPIC), event.TOPIC, 0,
                                               len(self.identity_events), ms))
        self.signers.setdefault(ident.uri, signer)
        return signer

    def revoke(self, ident: spiffe.SpiffeId, signer: Signer, logged_ms: int) -> None:
        event = records.revoked(ident.uri, signer.serial, reason="key leaked", revoked_by="test")
        env = records.authority_signer(self.ca).sign(new_event(event))
        self.identity_events.append(Logged(decode(encode(env), event.TOPIC), event.TOPIC, 0, len(self.identity_events),
                                           logged_ms))

    def verifier(self, *, roots: bool = True) -> Verifier:
        return Verifier(fold_identities(EMPTY, self.identity_events), [self.ca.certificate] if roots else [])


def signed(payload: t.Payload, signer: Signer | None, *, event_id: str | None = None):
    """The envelope of ``payload`` signed by ``signer`` (None: unsigned), as read back from the wire."""
    env = new_event(payload, producer="test", occurred_at=OCCURRED, event_id=event_id)
    if signer is not None:
        env = signer.sign(env)
    return decode(encode(env), payload.TOPIC)


class SignedLog(Log):
    """``Log`` whose events are signed: ``log.by(identity).register(...)`` or ``log.append(p, by=signer)``."""

    def __init__(self, trust: Trust, start_ms: int = MS0) -> None:
        super().__init__(start_ms)
        self.trust = trust
        self._signer: Signer | None = None

    def by(self, who: spiffe.SpiffeId | Signer | None) -> "SignedLog":
        """Sign the next events with ``who``'s identity (issued on first use); None: unsigned."""
        if isinstance(who, spiffe.SpiffeId):
            who = self.trust.signers.get(who.uri) or self.trust.issue(who)
        self._signer = who
        return self

    def append(self, payload: t.Payload, at: int | None = None) -> Logged:
        self.now = at if at is not None else self.now + 1
        off = self.offsets.get(payload.TOPIC, 0)
        self.offsets[payload.TOPIC] = off + 1
        ev = Logged(signed(payload, self._signer), payload.TOPIC, 0, off, self.now)
        self.events.append(ev)
        return ev


def as_attested(env):
    """``env`` as replay decodes its record inside an attested run it matched (``events.record_decoder``): no
    signed bytes, no proof, ``ATTESTED_RUN`` for its received digest."""
    import dataclasses

    from events.envelope import ATTESTED_RUN

    return dataclasses.replace(env, signed_bytes=None, proof=None, received_digest=ATTESTED_RUN)
