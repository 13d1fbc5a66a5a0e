"""The gateway's TLS material: server credentials that require client certificates.

Invariants:
- Client certificates are required and must chain to the mesh root given as
  the CA bundle (gRPC/BoringSSL checks the chain and the validity dates); who
  the client is, and what it may have, is decided per stream afterwards
  (``xds_gateway.guard``).
- The gateway's own certificate is re-read when its files change (checked at
  each new TLS handshake, a few ``stat`` calls), so a renewed certificate is
  served without a restart. A half-replaced pair (a key that is not the
  certificate's) is not used: the previous pair stays until both match.
- Errors name the file and the problem (``TlsConfigError``); the CLI turns
  them into exit 2.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from identity.pki import CertificateRefused, spiffe_id_of
from identity.spiffe import SpiffeId

log = logging.getLogger(__name__)

__all__ = ["TlsFiles", "TlsConfigError", "load_material", "server_credentials"]


class TlsConfigError(ValueError):
    """Unusable TLS files; the message names the flag/file and the problem."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True, slots=True)
class Material:
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    identity: SpiffeId  # the gateway's own SPIFFE id (its trust domain is the mesh's)


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{what} {str(path)!r}: {exc.strerror or exc}") from None
    if not data.strip():
        raise TlsConfigError(f"{what} {str(path)!r} is empty")
    return data


def load_material(files: TlsFiles) -> Material:
    cert_pem, key_pem, ca_pem = (_read(files.cert, "--tls-cert"), _read(files.key, "--tls-key"),
                                 _read(files.ca, "--tls-ca"))
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise TlsConfigError(f"--tls-cert {str(files.cert)!r} is not a PEM certificate ({exc})") from None
    try:
        x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise TlsConfigError(f"--tls-ca {str(files.ca)!r} is not a PEM certificate ({exc})") from None
    try:
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsConfigError(f"--tls-key {str(files.key)!r} is not an unencrypted PEM private key ({exc})") from None
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise TlsConfigError(f"--tls-key {str(files.key)!r} is not the key of --tls-cert {str(files.cert)!r}")
    try:
        identity = spiffe_id_of(cert)
    except CertificateRefused as exc:
        raise TlsConfigError(f"--tls-cert {str(files.cert)!r}: {exc}") from None
    return Material(cert_pem, key_pem, ca_pem, identity)


def _stamp(files: TlsFiles) -> tuple:
    out = []
    for p in (files.cert, files.key, files.ca):
        try:
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)


def server_credentials(files: TlsFiles, first: Material) -> grpc.ServerCredentials:
    """mTLS server credentials over ``files``, re-read when they change."""

    def config(m: Material):
        return grpc.ssl_server_certificate_configuration([(m.key_pem, m.cert_pem)], root_certificates=m.ca_pem)

    seen = [_stamp(files), None]  # files in use, files last found unusable (logged once)

    def fetch():
        stamp = _stamp(files)
        if stamp == seen[0] or stamp == seen[1]:
            return None
        try:
            material = load_material(files)
        except TlsConfigError as exc:
            seen[1] = stamp
            log.warning("TLS files changed but are not usable (%s); still serving the previous certificate", exc)
            return None
        seen[0] = stamp
        log.info("TLS certificate reloaded: %s", material.identity.uri)
        return config(material)

    return grpc.dynamic_ssl_server_credentials(config(first), fetch, require_client_authentication=True)
