"""xDS trust material: the files both ends read, and the flags meshlog's own launchers pass.

``xds-gateway run`` and ``meshlog-sidecar run`` speak mTLS unless told
``--insecure``. Both take ``--tls-cert``, ``--tls-key`` and ``--tls-ca`` and
read them with ``load_tls_files`` (a certificate with one SPIFFE id, its very
key, the mesh root), re-reading them when ``files_stamp`` changes.

The launchers (demo, test support, benches) build those flags here, in one
place: each process gets its identity's files (``identity.pki.IdentityFiles``:
cert, key, trust bundle), or ``None`` for plaintext on loopback. Switching
the demo or the tests to mTLS is giving these functions identities instead
of ``None``; nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from identity.pki import CertificateRefused, IdentityFiles, spiffe_id_of
from identity.spiffe import SpiffeId
from events.files import stamp as stamp_of

__all__ = ["TlsFiles", "TlsMaterial", "TlsFilesError", "load_tls_files", "files_stamp", "gateway_tls_args",
           "sidecar_tls_args"]


class TlsFilesError(ValueError):
    """Unusable TLS files; the message names the flag, the file and the problem."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    identity: SpiffeId  # the one SPIFFE id of the certificate (its trust domain is the mesh's)
    serial: int


def _read(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsFilesError(f"{flag} {str(path)!r}: {exc.strerror or exc}") from None
    if not data.strip():
        raise TlsFilesError(f"{flag} {str(path)!r} is empty")
    return data


def _certificate(data: bytes, path: Path, flag: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise TlsFilesError(f"{flag} {str(path)!r} is not a PEM certificate ({exc})") from None


def load_tls_files(files: TlsFiles) -> TlsMaterial:
    """Read and check the three files; ``TlsFilesError`` names the first problem."""
    cert_pem, key_pem, ca_pem = (_read(files.cert, "--tls-cert"), _read(files.key, "--tls-key"),
                                 _read(files.ca, "--tls-ca"))
    cert = _certificate(cert_pem, files.cert, "--tls-cert")
    _certificate(ca_pem, files.ca, "--tls-ca")
    try:
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsFilesError(f"--tls-key {str(files.key)!r} is not an unencrypted PEM private key ({exc})") from None
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise TlsFilesError(f"--tls-key {str(files.key)!r} is not the key of --tls-cert {str(files.cert)!r}")
    try:
        identity = spiffe_id_of(cert)
    except CertificateRefused as exc:
        raise TlsFilesError(f"--tls-cert {str(files.cert)!r}: {exc}") from None
    return TlsMaterial(cert_pem, key_pem, ca_pem, identity, cert.serial_number)


def files_stamp(files: TlsFiles) -> tuple:
    """What changes when any of the files is replaced or rewritten (``events.files.stamp``)."""
    return stamp_of(files.cert, files.key, files.ca)


def _args(identity: IdentityFiles | None) -> list[str]:
    if identity is None:
        return ["--insecure"]
    return ["--tls-cert", str(identity.cert), "--tls-key", str(identity.key), "--tls-ca", str(identity.bundle)]


def gateway_tls_args(identity: IdentityFiles | None) -> list[str]:
    """Flags for ``xds-gateway run``: its certificate (a ``gateway/<replica>`` id with the host names
    sidecars dial as DNS/IP SANs) or ``--insecure``."""
    return _args(identity)


def sidecar_tls_args(identity: IdentityFiles | None) -> list[str]:
    """Flags for ``meshlog-sidecar run``: its workload certificate (``sidecar/<service>/<instance>``)
    or ``--insecure``."""
    return _args(identity)
