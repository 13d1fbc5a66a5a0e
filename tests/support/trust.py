"""Test certificates from identity/'s PKI: a trust domain's root and identities written to files.

Only for tests: a certificate *without* a SPIFFE id, or one naming another
trust domain under our root, cannot be made through ``identity.pki.issue``
(it refuses them, rightly), so ``odd_cert`` builds those with ``cryptography``
directly to prove the gateway refuses them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from identity import pki
from identity.spiffe import SpiffeId


@dataclass(frozen=True)
class Identity:
    """One identity's files (``cert``, ``key``, ``ca``) and PEM bytes."""

    spiffe_id: SpiffeId | None
    cert: Path
    key: Path
    ca: Path
    serial: str

    @property
    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key.read_bytes()

    @property
    def ca_pem(self) -> bytes:
        return self.ca.read_bytes()


class MeshCA:
    def __init__(self, domain: str, directory: Path) -> None:
        self.domain = domain
        self.dir = directory
        self.authority = pki.create_root(domain)
        directory.mkdir(parents=True, exist_ok=True)
        self.bundle = directory / "ca.pem"
        pki.write_file_atomic(self.bundle, pki.cert_to_pem(self.authority.certificate))

    def issue(self, spiffe_id: SpiffeId, name: str, *, server_names=(), lifetime=timedelta(hours=1)) -> Identity:
        key = pki.generate_key()
        cert = pki.issue(self.authority, spiffe_id, key.public_key(), server_names=server_names, lifetime=lifetime)
        return self._save(name, cert, key, spiffe_id)

    def odd_cert(self, name: str, uri: str | None) -> Identity:
        """A certificate signed by this root with the URI SAN ``uri`` (or none), bypassing pki's checks."""
        key = pki.generate_key()
        now = datetime.now(timezone.utc)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(self.authority.certificate.subject)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=1))
                   .not_valid_after(now + timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if uri is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                                            critical=False)
        cert = builder.sign(self.authority.key, hashes.SHA256())
        return self._save(name, cert, key, None)

    def _save(self, name: str, cert, key, spiffe_id) -> Identity:
        d = self.dir / name
        d.mkdir(parents=True, exist_ok=True)
        files = pki.save_identity(d, cert, key, self.authority.certificate)
        return Identity(spiffe_id, files.cert, files.key, files.bundle, pki.serial_hex(cert))
