"""Certificates for the local secure broker and its clients, from the mesh CA (``identity.pki``).

Invariants:
- The CA is created once per ``tls_dir`` and reused (a restarted broker keeps
  its trust domain and every identity issued from it).
- Each identity lives in its own directory (``identity.pki.save_identity``:
  ``cert.pem``, ``key.pem`` 0600, ``ca.pem``) plus ``keystore.pem`` (key then
  certificate, 0600): Kafka's PEM keystore wants both in one file.
- A certificate's CN is its SPIFFE path (``sidecar/reviews/i1``); the broker
  maps it to the principal ``User:<role>`` (``meshlog.kafka_local.PRINCIPAL_MAPPING_RULES``).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Sequence

from events.kafka_security import SSL, KafkaSecurity
from events.files import write_file_atomic
from identity import pki, spiffe

DEFAULT_TRUST_DOMAIN = "meshlog.local"
BROKER_ROLE = "broker"  # identity.spiffe's broker/<id>: principal User:broker, the one super user
BROKER_ID = "1"  # the local broker's node id
ADMIN_ID = "admin"  # `meshlog topics ensure` on a secure broker (creates topics, applies the ACLs): a broker-role
#                     certificate, because only a super user may manage ACLs; only the launcher issues it
LOCAL_LIFETIME = timedelta(days=30)  # the local broker's own certificates; reissued at every start
KEYSTORE_FILE = "keystore.pem"


def ensure_ca(tls_dir: Path, domain: str = DEFAULT_TRUST_DOMAIN) -> pki.CertificateAuthority:
    """The CA kept in ``tls_dir/ca``, created on first use."""
    ca_dir = tls_dir / "ca"
    if (ca_dir / pki.CA_KEY_FILE).exists():
        return pki.load_ca(ca_dir)
    ca = pki.create_root(domain)
    pki.save_ca(ca, ca_dir)
    return ca


def identity_dir(tls_dir: Path, spiffe_id: spiffe.SpiffeId) -> Path:
    return tls_dir / "identities" / spiffe_id.common_name.replace("/", "_")


def issue_files(ca: pki.CertificateAuthority, spiffe_id: spiffe.SpiffeId, directory: Path, *,
                server_names: Sequence[str] = (), lifetime: timedelta = pki.DEFAULT_LIFETIME) -> pki.IdentityFiles:
    """A fresh key and certificate for ``spiffe_id`` written into ``directory`` (plus ``keystore.pem``)."""
    key = pki.generate_key()
    cert = pki.issue(ca, spiffe_id, key.public_key(), server_names=server_names, lifetime=lifetime)
    files = pki.save_identity(directory, cert, key, ca.certificate)
    write_file_atomic(directory / KEYSTORE_FILE, pki.keystore_pem(cert, key), 0o600)
    return files


def security_of(files: pki.IdentityFiles) -> KafkaSecurity:
    """Client settings presenting the identity in ``files`` and trusting its bundle."""
    return KafkaSecurity(protocol=SSL, ca_file=str(files.bundle), cert_file=str(files.cert), key_file=str(files.key))
