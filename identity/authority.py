"""The CA endpoint's decisions, sans I/O: what to refuse, with which reason.

``meshlog ca serve`` (``identity.serve``) parses a request, asks these
functions, and does the I/O (append to the log, read it back) in between.
Every refusal is ``Refused(reason, detail, status)``: ``reason`` is a short
stable code (for counters, logs and clients), ``status`` the HTTP status.

Invariants:
- Nothing here trusts the client's claims of identity: a join's SPIFFE id is
  ``sidecar/<token's service>/<instance>``; a renewal's is the verified peer
  certificate's; the CSR contributes only its (checked) public key.
- Request bodies are bounded (``MAX_BODY``) and every text that reaches a
  message is bounded and escaped (``events.printable.quoted``).
- Pure: the time is a parameter; the registry is the caller's fold of the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson
from cryptography import x509

from events.printable import quoted
from identity import pki, tokens
from identity.registry import Registry
from identity.spiffe import SpiffeId, SpiffeIdError, sidecar

MAX_BODY = 32 * 1024

# reason -> HTTP status
STATUS = {
    "bad_request": 400, "malformed": 400, "bad_key": 400, "bad_csr_signature": 400, "bad_instance": 400,
    "no_client_certificate": 401,
    "bad_signature": 403, "other_trust_domain": 403, "expired": 403, "wrong_service": 403, "used": 403,
    "untrusted_issuer": 403, "not_a_workload": 403, "not_yet_valid": 403, "no_spiffe_id": 403,
    "revoked": 403, "not_issued": 403,
}


class Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    @property
    def status(self) -> int:
        return STATUS.get(self.reason, 400)

    def body(self) -> dict:
        return {"error": self.reason, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class JoinRequest:
    token: str
    csr_pem: str
    service: str
    instance: str


@dataclass(frozen=True, slots=True)
class Enrollment:
    token: tokens.JoinToken
    csr: x509.CertificateSigningRequest
    spiffe_id: SpiffeId


def _json_object(body: bytes, fields: tuple[str, ...]) -> dict[str, str]:
    if len(body) > MAX_BODY:
        raise Refused("bad_request", f"the request body is larger than {MAX_BODY} bytes")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Refused("bad_request", "the request body is not JSON") from None
    if not isinstance(doc, dict):
        raise Refused("bad_request", "the request body must be a JSON object")
    for name in fields:
        if not isinstance(doc.get(name), str) or not doc[name]:
            raise Refused("bad_request", f"field {name!r} is required (a non-empty string)")
    extra = sorted(str(k) for k in doc if k not in fields)
    if extra:
        raise Refused("bad_request", f"unknown field {quoted(extra[0])}")
    return doc


def parse_join(body: bytes) -> JoinRequest:
    doc = _json_object(body, ("token", "csr", "service", "instance"))
    return JoinRequest(token=doc["token"], csr_pem=doc["csr"], service=doc["service"], instance=doc["instance"])


def parse_renew(body: bytes) -> str:
    return _json_object(body, ("csr",))["csr"]


def _csr(pem: str) -> x509.CertificateSigningRequest:
    try:
        return pki.load_csr(pem)
    except pki.PkiError as exc:
        raise Refused(exc.reason, exc.detail) from None


def check_join(ca: pki.CertificateAuthority, req: JoinRequest, *, now: datetime) -> Enrollment:
    """Everything about a join that does not need the log: token, service binding, CSR, instance name."""
    try:
        token = tokens.read(req.token, ca.certificate, now=now)
        tokens.check_service(token, req.service)
    except tokens.TokenRefused as exc:
        raise Refused(exc.reason, exc.detail) from None
    try:
        ident = sidecar(ca.domain, token.service, req.instance)
    except SpiffeIdError as exc:
        raise Refused("bad_instance", str(exc)) from None
    return Enrollment(token=token, csr=_csr(req.csr_pem), spiffe_id=ident)


def check_unused(registry: Registry, token_id: str) -> None:
    """Before claiming: a token the log already shows redeemed is refused without a new claim."""
    if registry.token_used(token_id):
        raise Refused("used", "this join token was already used")


def check_claim_won(registry: Registry, token_id: str, claim_id: str) -> None:
    """After the log has our claim: it counts only if it is the token's first redemption."""
    winner = registry.winner(token_id)
    if winner is None or winner.claim_id != claim_id:
        raise Refused("used", "this join token was already used")


def check_renewal(ca: pki.CertificateAuthority, registry: Registry, peer: x509.Certificate | None, csr_pem: str,
                  *, now: datetime) -> tuple[SpiffeId, x509.CertificateSigningRequest, str]:
    """A renewal by the holder of a current, logged, unrevoked certificate: (id, csr, old serial)."""
    if peer is None:
        raise Refused("no_client_certificate", "renewal needs the current certificate as the TLS client certificate")
    try:
        ident = pki.verify(peer, ca.certificate, now=now)
    except pki.CertificateRefused as exc:
        raise Refused(exc.reason, exc.detail) from None
    serial = pki.serial_hex(peer)
    status = registry.status_at(serial, int(now.timestamp() * 1000))
    if status == "revoked":
        rev = registry.revocation(serial)
        raise Refused("revoked", f"certificate {serial} of {ident.uri} was revoked"
                      + (f" ({quoted(rev.reason)})" if rev else ""))
    if status == "not_issued":
        raise Refused("not_issued", f"certificate {serial} of {ident.uri} was never recorded as issued in the log")
    return ident, _csr(csr_pem), serial
