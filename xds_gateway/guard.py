"""The gateway's trust shell: who is on a stream, may it have this node, is it still trusted.

``TrustGuard`` does the I/O around the pure ``xds_gateway.authz`` decisions:
it reads a stream's TLS peer from gRPC's auth context (TLS already checked
the chain to the mesh root and the validity dates), counts and logs
refusals, remembers which open streams hold which certificate serial, and
closes them when the serial is revoked. ``tail_revocations`` keeps the
revoked serials current from ``meshlog.identities`` through identity/'s
pure registry fold (``identity.log.IdentityLog``), folding only what the
configured mesh root signed.

Invariants:
- A refusal is counted (``meshlog_xds_refused_total{reason}``, a fixed set
  of reasons) every time, and logged once per (identity, node) pair, with
  both identities escaped and bounded; the set of pairs already logged is
  bounded (oldest forgotten first).
- Revocation closes every open stream whose certificate carries a revoked
  serial, however it was authorized (operator streams included), and a
  revoked serial is refused at stream start from then on.
- No mesh logic: who owns a node comes from the view (the projector's
  membership record), what that means from ``authz``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable

from cryptography import x509

from identity.pki import serial_hex
from identity.spiffe import SpiffeId
from xds_gateway import metrics
from xds_gateway.authz import DENY, Decision, authenticate, authorize

log = logging.getLogger(__name__)

__all__ = ["Peer", "TrustGuard", "tail_revocations"]


@dataclass(frozen=True, slots=True)
class Peer:
    """A stream's authenticated identity (``refusal`` set when it has none)."""

    identity: SpiffeId | None
    serial: str | None
    refusal: Decision | None = None

    @property
    def name(self) -> str:
        return self.identity.uri if self.identity is not None else "unauthenticated client"


def _values(auth: dict, key: str) -> list[str]:
    return [v.decode(errors="replace") for v in auth.get(key, ())]


class TrustGuard:
    def __init__(self, trust_domain: str, *, remember_logged: int = 10_000) -> None:
        self.trust_domain = trust_domain
        self.revoked: set[str] = set()
        self._holders: dict[str, set[Callable[[], None]]] = defaultdict(set)
        self._logged: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._remember_logged = remember_logged

    # ------------------------------------------------------------ stream start

    def identify(self, auth_context: dict) -> Peer:
        """The peer of a TLS stream, from ``context.auth_context()``."""
        pem = auth_context.get("x509_pem_cert")
        serial = None
        if pem:
            try:
                serial = serial_hex(x509.load_pem_x509_certificate(pem[0]))
            except ValueError:
                serial = None
        # gRPC core sets peer_spiffe_id only for exactly one SPIFFE URI SAN; count them ourselves
        uris = [u for u in _values(auth_context, "x509_subject_alternative_name") if u.startswith("spiffe://")]
        got = authenticate(uris, self.trust_domain, serial, self.revoked)
        if got.refusal is not None:
            self.refused(got.refusal, uris[0] if uris else "a certificate without a SPIFFE id", "")
            return Peer(None, serial, got.refusal)
        return Peer(got.identity, serial)

    def decide(self, peer: Peer, node_id: str, owner: tuple[str, str] | None) -> Decision:
        decision = authorize(peer.identity, node_id, owner)
        if decision.outcome == DENY:
            self.refused(decision, peer.name, node_id)
        elif decision.reason == "operator":
            self._log_once(peer.name, node_id, logging.INFO, "xDS: %s", decision.detail)
        return decision

    def refused(self, decision: Decision, who: str, node_id: str) -> None:
        metrics.REFUSED.labels(decision.reason).inc()
        self._log_once(who, node_id, logging.WARNING, "xDS stream refused (%s): %s", decision.reason,
                       decision.detail)

    def _log_once(self, who: str, node_id: str, level: int, fmt: str, *args) -> None:
        key = (who[:256], node_id[:256])
        if key in self._logged:
            return
        self._logged[key] = None
        if len(self._logged) > self._remember_logged:
            self._logged.popitem(last=False)
        log.log(level, fmt, *args)

    # ------------------------------------------------------------ revocation

    def hold(self, peer: Peer, close: Callable[[], None]) -> Callable[[], None]:
        """Remember that an open stream rests on ``peer``'s certificate; returns the release."""
        if peer.serial is None:
            return lambda: None
        serial = peer.serial
        self._holders[serial].add(close)

        def release() -> None:
            holders = self._holders.get(serial)
            if holders is not None:
                holders.discard(close)
                if not holders:
                    del self._holders[serial]
        return release

    def revoke(self, serials: Iterable[str]) -> int:
        """Serials revoked (from the log): refuse them from now on, close their open streams."""
        closed = 0
        for serial in serials:
            if serial in self.revoked:
                continue
            self.revoked.add(serial)
            for close in list(self._holders.pop(serial, ())):
                close()
                closed += 1
        if closed:
            metrics.REVOKED_STREAMS_CLOSED.inc(closed)
            log.warning("closed %d xDS stream(s) of revoked certificates", closed)
        return closed


async def tail_revocations(guard: TrustGuard, bootstrap: str, *, period_s: float = 1.0) -> None:
    """Keep ``guard.revoked`` current from the identities topic until cancelled.

    With a mesh root configured (the gateway holds a Kafka client certificate), only revocations that root
    signed count, as for the projector and the checkers: a forged one cannot close anyone's streams."""
    from identity.log import IdentityLog, LogUnavailable  # Kafka client only where it is used
    from identity.verifier import Verifier, configured_roots

    while True:
        try:
            roots = configured_roots()  # read each time round: a renewed bundle counts from the next start
            admit = Verifier(roots=roots).identity_refusal if roots else None
            async with IdentityLog(bootstrap, admit=admit) as identities:
                while True:
                    registry = await identities.sync()
                    guard.revoke(registry.revocations.keys())
                    await asyncio.sleep(period_s)
        except LogUnavailable as exc:
            log.warning("identities topic unavailable (%s); revocations not seen until it answers", exc)
        except Exception:  # noqa: BLE001 - the tail must outlive any reader failure; it starts over
            log.exception("reading the identities topic failed; starting over")
        await asyncio.sleep(max(period_s, 2.0))
