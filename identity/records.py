"""The identity events the CA appends, built from certificates (pure).

Invariants: an ``IdentityIssued`` carries the certificate itself and the
fields a verifier needs without parsing it (SPIFFE id, serial, public key,
validity, issuer and the root's fingerprint), all taken from the certificate
here, so the event and the certificate cannot disagree. Every identity event
is signed by the root that issues the certificates (``authority_signer``):
a verifier configured with that root (``identity.verifier``) accepts only
identity facts the root stated, and needs nothing from the log to check them
(the root is configured, not learned from the topic it authenticates).
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from events.signing import Signer
from events.types import IdentityIssued, IdentityRevoked, JoinTokenRedeemed
from identity.pki import CertificateAuthority, cert_to_pem, public_key_pem, serial_hex, spiffe_id_of
from identity.tokens import JoinToken


def authority_signer(ca: CertificateAuthority) -> Signer:
    """The signer of the identity events ``ca`` states: its root key, named by the root certificate's serial."""
    return Signer(ca.key, serial_hex(ca.certificate))


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lowercase hex."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def issued(cert: x509.Certificate, root: x509.Certificate, *, how: str, requested_by: str,
           join_token_id: str | None = None, renews_serial: str | None = None) -> IdentityIssued:
    return IdentityIssued(
        spiffe_id=spiffe_id_of(cert).uri,
        serial=serial_hex(cert),
        public_key=public_key_pem(cert),
        certificate=cert_to_pem(cert).decode(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        issuer=spiffe_id_of(root).uri,
        issuer_fingerprint=fingerprint(root),
        how=how,
        requested_by=requested_by[:256],
        join_token_id=join_token_id,
        renews_serial=renews_serial,
    )


def revoked(spiffe_id: str, serial: str, *, reason: str, revoked_by: str) -> IdentityRevoked:
    return IdentityRevoked(spiffe_id=spiffe_id, serial=serial, reason=reason[:256], revoked_by=revoked_by[:256])


def redeemed(token: JoinToken, instance_id: str, claim_id: str) -> JoinTokenRedeemed:
    return JoinTokenRedeemed(token_id=token.token_id, service=token.service, instance_id=instance_id,
                             expires_at=token.expires_at, claim_id=claim_id)
