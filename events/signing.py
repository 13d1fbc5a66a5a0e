"""Signing envelopes with a mesh key: who stated a fact, provably.

Every producer signs each event with the private key of its workload
certificate (ECDSA P-256, SHA-256; the mesh CA issues only P-256 keys). The
envelope names the certificate by its serial (``signer``) and carries the
signature (``signature``, base64 of DER) over ``events.codec.signing_bytes``.
Who held that serial when the event was logged is a fact of the identities
topic; the verifier (``identity.verifier``) answers it, not this module.

Invariants:
- ``sign(env)`` returns a new envelope equal to ``env`` but for ``signer``,
  ``signature`` and ``signed_bytes`` (and no ``received_digest``: it was not
  received); its encoding verifies with the
  certificate's public key (``verify_signature``) and with nothing else.
- A ``FileSigner`` re-reads its certificate and key when either file
  changes (a renewal writes the key, then the certificate: it signs with a key
  only together with the certificate that matches it, else it keeps the last
  matching pair), so a long-running producer signs with its current identity.
- ``sign_batch(envs)`` signs several envelopes with one ECDSA signature: over
  the root of a Merkle tree (SHA-256, RFC 6962-style domain separation:
  leaves ``0x00 || bytes``, nodes ``0x01 || left || right``) whose leaves are
  the envelopes' ``signing_bytes``; each envelope carries the root's
  signature and its ``proof`` (the sibling hashes from its leaf up, each
  ``L``/``R`` + base64: which side the sibling is on). A verifier recomputes
  the root from the event alone and checks the signature once per root
  (``identity.verifier`` caches verified roots), so a producer's batch costs
  one ECDSA verification, not one per event. A proof binds an event to its
  batch's root: changing any signed byte of any event changes the root.
- ``process_signer()`` is the signer of this process's Kafka identity (the
  same ``--kafka-cert-file``/``--kafka-key-file`` settings, ``events.kafka_security``):
  a process that speaks mTLS to Kafka signs its events with that identity.
  None when it has no client certificate (plaintext development).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import threading
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from events.codec import PROOF_MAX, envelope_to_dict, signing_bytes  # noqa: F401 - PROOF_MAX: re-exported
from events.envelope import Envelope
from events.files import stamp as files_stamp

_ECDSA = ec.ECDSA(hashes.SHA256())
#: what a batch signature covers: this prefix and the Merkle root (never valid JSON: no single event collides)
BATCH_PREFIX = b"meshlog batch root\x00"


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle(leaves: list[bytes]) -> tuple[bytes, list[tuple[str, ...]]]:
    """The root over leaf hashes ``leaves`` and, per leaf, its proof (an odd node out moves up unchanged)."""
    proofs: list[list[str]] = [[] for _ in leaves]
    level = [(h, [i]) for i, h in enumerate(leaves)]  # (hash, the leaves under it)
    while len(level) > 1:
        nxt = []
        for j in range(0, len(level) - 1, 2):
            (lh, lidx), (rh, ridx) = level[j], level[j + 1]
            for i in lidx:
                proofs[i].append("R" + base64.b64encode(rh).decode())
            for i in ridx:
                proofs[i].append("L" + base64.b64encode(lh).decode())
            nxt.append((_node(lh, rh), lidx + ridx))
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0][0], [tuple(p) for p in proofs]


def root_from_proof(leaf: bytes, proof: tuple[str, ...], memo: dict | None = None) -> bytes | None:
    """The root ``proof`` leads to from ``leaf``, None if the proof is malformed (the codec checked its shape).

    ``memo`` (a dict the caller keeps) remembers, for each node hash and the rest of the proof above it, the
    root they lead to: the members of one batch share their upper steps, so most of them stop after a step or
    two. Exact: a memo hit is the same computation over the same inputs (the node and every remaining step)."""
    h = leaf
    sha256, a2b = hashlib.sha256, binascii.a2b_base64
    climbed: list[tuple[bytes, tuple[str, ...]]] = []
    try:
        for j, step in enumerate(proof):
            if memo is not None and j:
                rest = proof[j:]
                known = memo.get((h, rest))
                if known is not None:
                    h = known
                    break
                climbed.append((h, rest))
            sibling = a2b(step[1:])
            if len(sibling) != 32:
                return None
            side = step[0]
            if side == "L":
                h = sha256(b"\x01" + sibling + h).digest()
            elif side == "R":
                h = sha256(b"\x01" + h + sibling).digest()
            else:
                return None
    except (binascii.Error, IndexError, TypeError):
        return None
    if climbed:
        if len(memo) > 100_000:  # bounded: an old batch's members simply climb again
            memo.clear()
        for key in climbed:
            memo[key] = h
    return h


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

    def current(self) -> "Signer":
        """Itself (a ``FileSigner`` answers the pair its files hold now): either serves as a process's signer."""
        return self

    def _data(self, env: Envelope) -> bytes:
        doc = envelope_to_dict(dataclasses.replace(env, signer=None, signature=None, proof=None))
        doc["signer"] = self.serial
        return signing_bytes(doc)

    def sign(self, env: Envelope) -> Envelope:
        data = self._data(env)
        # received_digest: a signed envelope just made was not received (one re-signed must not keep the digest of
        # the record it was decoded from, nor be ``ATTESTED_RUN``: an attestation of that record would stand for this
        # new signature)
        return dataclasses.replace(env, signer=self.serial, signature=signature_of(self.key, data), signed_bytes=data,
                                   proof=None, received_digest=None)

    def sign_batch(self, envs: list[Envelope]) -> list[Envelope]:
        """Every envelope of ``envs`` signed with one signature over their Merkle root (one alone: ``sign``)."""
        if len(envs) <= 1:
            return [self.sign(env) for env in envs]
        datas = [self._data(env) for env in envs]
        root, proofs = merkle([leaf_hash(d) for d in datas])
        signature = signature_of(self.key, BATCH_PREFIX + root)
        return [dataclasses.replace(env, signer=self.serial, signature=signature, signed_bytes=data, proof=proof,
                                    received_digest=None)
                for env, data, proof in zip(envs, datas, proofs)]


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

    def current(self) -> Signer:
        stamp = files_stamp(self.cert_file, self.key_file)
        if None in stamp:
            if self._signer is not None:
                return self._signer  # mid-replacement: keep signing with the last good pair
            missing = self.cert_file if stamp[0] is None else self.key_file
            raise SignerError(f"cannot read {missing}: no such file or not readable")
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

    def sign_batch(self, envs: list[Envelope]) -> list[Envelope]:
        return self.current().sign_batch(envs)


def process_signer() -> FileSigner | None:
    """The signer of this process's Kafka client identity, None without a client certificate."""
    from events import kafka_security  # its settings are read at call time (configure() may come later)

    security = kafka_security.current()
    if not security.cert_file or not security.key_file:
        return None
    return FileSigner(security.cert_file, security.key_file)
