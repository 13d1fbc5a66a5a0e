"""Join tokens: one-time, short-lived, bound to a service, signed by the CA key.

Design (why signed tokens plus a log of uses, not a token table): ``meshlog ca
token`` needs only the CA directory (no broker, nothing to store), and any
``ca serve`` replica checks a token with the root certificate alone. What a
signature cannot say is "not used yet"; that is a fact in the log. A replica
that accepts a token first appends ``JoinTokenRedeemed(token_id, claim_id)``
to the single-partition identities topic, then reads the topic up to its own
claim: the *first* redemption of a token in log order wins (``registry``),
every later one, from any replica, is refused as used. Kafka's one partition
is the serialisation point, so two replicas racing on one token cannot both
win, and no replica keeps state it cannot rebuild from the log.

Wire form: ``mlj1.<base64url(JSON claims)>.<base64url(ECDSA-P256-SHA256 DER signature)>``,
the signature over the ASCII of ``mlj1.<claims>``. Claims: ``v`` (1), ``jti``,
``dom`` (trust domain), ``svc`` (service), ``iat``/``exp`` (epoch seconds).

Invariants:
- ``read`` is total over strings: it returns a ``JoinToken`` or raises
  ``TokenRefused(reason, detail)`` with a stable reason code
  (``REASONS``); detail text is bounded and escaped.
- Pure: the clock is a parameter; no I/O.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from identity.pki import CertificateAuthority, spiffe_id_of
from identity.spiffe import SpiffeIdError, sidecar, validate_domain

PREFIX = "mlj1"
DEFAULT_TTL = timedelta(minutes=10)
MAX_TTL = timedelta(hours=24)
MAX_TOKEN_CHARS = 1024

REASONS = (
    "malformed",           # not a meshlog join token
    "bad_signature",       # not signed by this trust domain's CA
    "other_trust_domain",  # minted for another trust domain
    "expired",
    "wrong_service",       # bound to another service than the one asked for
    "used",                # redeemed before (decided by the log, see identity.registry)
)


class TokenRefused(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class JoinToken:
    token_id: str
    domain: str
    service: str
    issued_at: datetime
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _epoch(t: datetime) -> int:
    return int(t.timestamp())


def new_token_id() -> str:
    return secrets.token_urlsafe(18)  # 144 bits, 24 characters, matches events.types.TokenId


def mint(ca: CertificateAuthority, service: str, *, now: datetime, ttl: timedelta = DEFAULT_TTL,
         token_id: str | None = None) -> str:
    """A signed join token for one instance of ``service``, valid for ``ttl`` from ``now``."""
    if not timedelta(seconds=1) <= ttl <= MAX_TTL:
        raise ValueError(f"ttl must be between 1 s and {MAX_TTL}, got {ttl}")
    try:
        sidecar(ca.domain, service, "x")  # the service must be one a sidecar identity can name
    except SpiffeIdError as exc:
        raise ValueError(str(exc)) from None
    claims = {"v": 1, "jti": token_id or new_token_id(), "dom": ca.domain, "svc": service,
              "iat": _epoch(now), "exp": _epoch(now + ttl)}
    signed = f"{PREFIX}.{_b64(orjson.dumps(claims, option=orjson.OPT_SORT_KEYS))}"
    signature = ca.key.sign(signed.encode(), ec.ECDSA(hashes.SHA256()))
    return f"{signed}.{_b64(signature)}"


def read(text: str, root: x509.Certificate, *, now: datetime) -> JoinToken:
    """Check a token's form, signature (by ``root``'s key), trust domain and expiry."""
    if not isinstance(text, str) or len(text) > MAX_TOKEN_CHARS:
        raise TokenRefused("malformed", f"a join token is a string of at most {MAX_TOKEN_CHARS} characters")
    parts = text.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise TokenRefused("malformed", f"not a meshlog join token (expected {PREFIX}.<claims>.<signature>)")
    try:
        claims = orjson.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise TokenRefused("malformed", "the token's claims or signature are not base64url JSON") from None
    public_key = root.public_key()
    try:
        public_key.verify(signature, f"{parts[0]}.{parts[1]}".encode(), ec.ECDSA(hashes.SHA256()))  # type: ignore[union-attr]
    except (InvalidSignature, ValueError, TypeError, AttributeError):
        raise TokenRefused("bad_signature", "the token is not signed by this trust domain's CA") from None
    if not isinstance(claims, dict) or claims.get("v") != 1:
        raise TokenRefused("malformed", "unknown token version")
    try:
        token_id, domain, service = claims["jti"], claims["dom"], claims["svc"]
        iat, exp = claims["iat"], claims["exp"]
        if not all(isinstance(v, str) for v in (token_id, domain, service)) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in (iat, exp)):
            raise TypeError
        validate_domain(domain)
    except (KeyError, TypeError, SpiffeIdError):
        raise TokenRefused("malformed", "the token's claims are incomplete") from None
    own_domain = spiffe_id_of(root).domain
    if domain != own_domain:
        raise TokenRefused("other_trust_domain", f"the token is for trust domain {domain[:80]!r}, not {own_domain!r}")
    expires_at = datetime.fromtimestamp(exp, timezone.utc)
    if now >= expires_at:
        raise TokenRefused("expired", f"the token expired at {expires_at.isoformat()}")
    return JoinToken(token_id=token_id, domain=domain, service=service,
                     issued_at=datetime.fromtimestamp(iat, timezone.utc), expires_at=expires_at)


def check_service(token: JoinToken, service: str) -> None:
    if token.service != service:
        raise TokenRefused("wrong_service", f"the token is bound to service {token.service!r}, "
                           f"not {service[:80]!r}")
