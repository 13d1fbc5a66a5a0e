"""The demo's mesh identities: one CA in the work dir, one certificate per process it runs.

Secure by default, ``meshlog demo`` creates a trust domain's root in
``<workdir>/tls/ca`` (the same CA the local broker's SSL listener trusts) and
issues, offline, each process its own identity into
``<workdir>/tls/identities/<cn>``: the projector, each gateway replica (with
``127.0.0.1`` as an IP SAN, the address sidecars dial), each checker, each
sidecar (``sidecar/<service>/<instance>``; offline, not through a join
token), ``replay/demo`` for the replay, status and console steps, and
``operator/demo`` for the demo's own rule appends and event tail.

Invariants:
- A process speaks Kafka and xDS with the same identity (its one certificate);
  the broker maps the certificate's CN to its role (``events.kafka_acls``),
  the gateways read its SPIFFE id (``xds_gateway.authz``).
- Children get their Kafka identity through the ``MESHLOG_KAFKA_*``
  environment (``kafka_env``); the demo's own clients through
  ``events.kafka_security.configure``. Nothing here starts a process.
- ``DemoTrust`` is ``None`` under ``--insecure``: plaintext Kafka and
  ``--insecure`` xDS, as before, for loopback development.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from events.kafka_security import KafkaSecurity, to_env
from identity import pki, spiffe
from meshlog import kafka_tls

HOST = "127.0.0.1"


@dataclass
class DemoTrust:
    tls_dir: Path
    ca: pki.CertificateAuthority = field(init=False)
    issued: dict[str, pki.IdentityFiles] = field(default_factory=dict)  # SPIFFE path -> its files

    def __post_init__(self) -> None:
        self.ca = kafka_tls.ensure_ca(self.tls_dir)

    @property
    def domain(self) -> str:
        return self.ca.domain

    def spiffe_id(self, path: str) -> spiffe.SpiffeId:
        return spiffe.parse(f"spiffe://{self.domain}/{path}")

    def identity(self, path: str, *, server_names: tuple[str, ...] = ()) -> pki.IdentityFiles:
        """The files of ``spiffe://<domain>/<path>``, issued on first use (a fresh key each time it is issued)."""
        if path not in self.issued:
            self.issued[path] = self.reissue(path, server_names=server_names)
        return self.issued[path]

    def reissue(self, path: str, *, server_names: tuple[str, ...] = ()) -> pki.IdentityFiles:
        """A new key and certificate written over the identity's files (atomic renames: a reader sees the
        old pair or the new one). What a renewal does to a running sidecar's ``--tls-*`` files."""
        ident = self.spiffe_id(path)
        return kafka_tls.issue_files(self.ca, ident, kafka_tls.identity_dir(self.tls_dir, ident),
                                     server_names=server_names)

    def gateway(self, replica: str) -> pki.IdentityFiles:
        return self.identity(f"gateway/{replica}", server_names=(HOST,))

    def sidecar(self, service: str, instance: str) -> pki.IdentityFiles:
        return self.identity(f"sidecar/{service}/{instance}")

    def kafka_security(self, path: str) -> KafkaSecurity:
        return kafka_tls.security_of(self.identity(path))

    def kafka_env(self, path: str) -> dict[str, str]:
        """``MESHLOG_KAFKA_*`` variables that make a child speak to the broker as ``path``."""
        return to_env(self.kafka_security(path))
