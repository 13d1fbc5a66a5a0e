"""Signing envelopes with a mesh key: who stated a fact, provably.

Every producer signs each event with the private key of its workload
certificate (ECDSA P-256, SHA-256; the mesh CA issues only P-256 keys). The
envelope names the certificate by its serial (``signer``) and carries the
signature (``signature``, base64 of DER) over ``events.codec.signing_bytes``.
Who held that serial when the event was logged is a fact of the identities
topic; the verifier (``identity.verifier``) answers it, not this module.

Invariants:
- ``sign(env)`` returns a new envelope equal to ``env`` but for ``signer``,
  ``signature`` and ``signed_bytes``; its encoding verifies with the
  certificate's public key (``verify_signature``) and with nothing else.
- A ``FileSigner`` re-reads its certificate and key when either file
  changes (a renewal writes the key, then the certificate: it signs with a key
  only together with the certificate that matches it, else it keeps the last
  matching pair), so a long-running producer signs with its current identity.
- ``process_signer()`` is the signer of this process's Kafka identity (the
  same ``--kafka-cert-file``/``--kafka-key-file`` settings, ``events.kafka_security``):
  a process that speaks mTLS to Kafka signs its events with that identity.
  None when it has no client certificate (plaintext development).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import threading
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from events.codec import envelope_to_dict, signing_bytes
from events.envelope import Envelope

_ECDSA = ec.ECDSA(hashes.SHA256())


class SignerError(ValueError):
    """A certificate/key pair that cannot sign events; the message names the file and the problem."""


def signature_of(key: ec.EllipticCurvePrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data, _ECDSA)).decode()


def verify_signature(public_key: ec.EllipticCurvePublicKey, signature: str, data: bytes) -> bool:
    """True iff ``signature`` (base64 DER) is ``public_key``'s ECDSA P-256/SHA-256 signature of ``data``."""
    try:
        raw = base64.b64decode(signature, validate=True)
        public_key.verify(raw, data, _ECDSA)
        return True
    except (InvalidSignature, ValueError):
        return False


@dataclass(frozen=True, slots=True)
class Signer:
    """A private key and the serial (lowercase hex) of the certificate it belongs to."""

    key: ec.EllipticCurvePrivateKey
    serial: str

    def sign(self, env: Envelope) -> Envelope:
        doc = envelope_to_dict(dataclasses.replace(env, signer=None, signature=None))
        doc["signer"] = self.serial
        data = signing_bytes(doc)
        return dataclasses.replace(env, signer=self.serial, signature=signature_of(self.key, data), signed_bytes=data)


def signer_from_pem(cert_pem: bytes, key_pem: bytes, *, where: str = "the certificate") -> Signer:
    """The signer of a PEM certificate (the first of a chain) and its PEM private key, or SignerError."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise SignerError(f"{where}: not a PEM certificate ({str(exc)[:120]})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SignerError(f"{where}: its key is not an unencrypted PEM private key ({str(exc)[:120]})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SignerError(f"{where}: events are signed with ECDSA P-256 keys, this key is not one")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise SignerError(f"{where}: the key does not belong to the certificate")
    return Signer(key, format(cert.serial_number, "x"))


class FileSigner:
    """Signs with the certificate and key in two files, re-read when they change (renewal)."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._signer: Signer | None = None
        self.current()  # refuse a broken pair at once, not at the first append

    def _stat(self) -> tuple:
        a, b = os.stat(self.cert_file), os.stat(self.key_file)
        return (a.st_mtime_ns, a.st_size, a.st_ino, b.st_mtime_ns, b.st_size, b.st_ino)

    def current(self) -> Signer:
        try:
            stamp = self._stat()
        except OSError as exc:
            if self._signer is not None:
                return self._signer  # mid-replacement: keep signing with the last good pair
            raise SignerError(f"cannot read {exc.filename}: {exc.strerror}") from None
        if stamp == self._stamp and self._signer is not None:
            return self._signer
        with self._lock:
            try:
                with open(self.cert_file, "rb") as c, open(self.key_file, "rb") as k:
                    signer = signer_from_pem(c.read(), k.read(), where=self.cert_file)
            except (OSError, SignerError) as exc:
                if self._signer is not None:  # a renewal half-written: the old pair still matches
                    return self._signer
                raise SignerError(str(exc)) from None
            self._signer, self._stamp = signer, stamp
            return signer

    @property
    def serial(self) -> str:
        return self.current().serial

    def sign(self, env: Envelope) -> Envelope:
        return self.current().sign(env)


def process_signer() -> FileSigner | None:
    """The signer of this process's Kafka client identity, None without a client certificate."""
    from events import kafka_security  # its settings are read at call time (configure() may come later)

    security = kafka_security.current()
    if not security.cert_file or not security.key_file:
        return None
    return FileSigner(security.cert_file, security.key_file)
