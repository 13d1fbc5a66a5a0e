"""TLS material for the local secure broker: a throw-away CA and certificates whose CN names a Kafka principal.

This is the minimum ``meshlog kafka up --secure`` and the secure-broker tests
need; the mesh CA (``meshlog ca``, issue 12 item 1) is the place that issues
workload identities, and replaces this once it lands.

Invariants:
- A certificate's subject CN is the path of its SPIFFE id (``sidecar/reviews/i1``
  for ``spiffe://<domain>/sidecar/reviews/i1``), which the broker maps to the
  principal ``User:<role>`` (first path segment; see
  ``meshlog.kafka_local.PRINCIPAL_MAPPING_RULES``). The SPIFFE id is also the
  certificate's URI SAN.
- Keys are ECDSA P-256, written unencrypted as PKCS#8 PEM (what Kafka's PEM
  keystore reads) with mode 0600; nothing is ever overwritten in place.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_TRUST_DOMAIN = "meshlog.local"
BROKER_IDENTITY = "kafka-broker"  # the broker's own principal: a super user
ADMIN_IDENTITY = "kafka-admin"  # `meshlog topics ensure` under --secure: creates topics and ACLs; a super user


@dataclass(frozen=True)
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def new_ca(trust_domain: str = DEFAULT_TRUST_DOMAIN, *, days: int = 365) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshlog"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"meshlog CA {trust_domain}")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def issue(ca: Issued, identity: str, *, trust_domain: str = DEFAULT_TRUST_DOMAIN, hosts: Sequence[str] = (),
          days: int = 1) -> Issued:
    """A leaf certificate for ``spiffe://<trust_domain>/<identity>`` (CN ``identity``); ``hosts`` make it a
    server certificate too (DNS names or IP addresses in the SAN)."""
    if not identity or len(identity) > 64 or identity.startswith("/"):
        raise ValueError(f"identity {identity[:80]!r}: 1 to 64 characters, a path without a leading '/'")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}/{identity}")]
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if hosts else [])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
        .issuer_name(ca.cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(key, cert)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class CertFiles:
    cert: Path  # the certificate (PEM)
    key: Path  # its key (PKCS#8 PEM, 0600)
    keystore: Path  # key + certificate in one file (Kafka's ssl.keystore.location with type PEM), 0600


def write(directory: Path, name: str, issued: Issued) -> CertFiles:
    directory.mkdir(parents=True, exist_ok=True)
    files = CertFiles(directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.pem")
    _write(files.cert, issued.cert_pem(), 0o644)
    _write(files.key, issued.key_pem(), 0o600)
    _write(files.keystore, issued.key_pem() + issued.cert_pem(), 0o600)
    return files


def write_ca(directory: Path, ca: Issued) -> Path:
    """The CA certificate as ``ca.crt`` (its key as ``ca.key``, 0600, so more identities can be issued)."""
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / "ca.key", ca.key_pem(), 0o600)
    _write(directory / "ca.crt", ca.cert_pem(), 0o644)
    return directory / "ca.crt"


def load_ca(directory: Path) -> Issued:
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Issued(key, cert)
