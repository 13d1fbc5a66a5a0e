"""The demo's mesh identities: one CA in the work dir, one certificate per process it runs.

Secure by default, ``meshlog demo`` creates a trust domain's root in
``<workdir>/tls/ca`` (the same CA the local broker's SSL listener trusts) and
issues each process its own identity into ``<workdir>/tls/identities/<cn>``:
offline for the projector, each gateway replica (with ``127.0.0.1`` as an IP
SAN, the address sidecars dial), each checker, ``ca-server/ca-1``,
``replay/demo`` for the replay, status and console steps, and
``operator/demo`` for the demo's own rule appends and event tail; each
sidecar (``sidecar/<service>/<instance>``) through a one-time join token
redeemed at ``meshlog ca serve`` (``join``), as an operator would enrol one;
the sidecar is started with ``--ca-url`` and renews it there by itself.

Every certificate the demo issues offline is logged as ``meshlog ca issue``
logs it: an ``identity.issued`` event (how ``offline``) on
``meshlog.identities``, appended as ``operator/demo``, so ``replay
identities`` and ``replay log`` show who held which identity in the demo too
(joins and renewals at ``ca serve`` are logged by ``ca serve``). Those issued
before the log exists (``operator/demo`` itself, and the broker's and the
launcher's admin certificates, read from their files) are appended as soon
as the topics exist (``start_logging``); after that each issuance is
appended when it is made, or, inside ``batch()``, all at once.

Invariants:
- A process speaks Kafka and xDS with the same identity (its one certificate);
  the broker maps the certificate's CN to its role (``events.kafka_acls``),
  the gateways read its SPIFFE id (``xds_gateway.authz``).
- Children get their Kafka identity through the ``MESHLOG_KAFKA_*``
  environment (``kafka_env``); the demo's own clients through
  ``events.kafka_security.configure``. Nothing here starts a process.
- A certificate issued offline is in the log before the process holding it
  starts (the stack starts processes after ``start_logging``), so renewing
  it at ``ca serve`` works (the CA renews only what the log shows issued).
  The projector verifies each event against them, so every process's
  certificate is logged before it signs anything.
- ``DemoTrust`` is ``None`` under ``--insecure``: plaintext Kafka and
  ``--insecure`` xDS, as before, for loopback development.
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from events.kafka_security import KafkaSecurity, to_env
from cryptography import x509

from events.envelope import new_event
from identity import client, pki, records, spiffe, tokens
from meshlog import kafka_tls

HOST = "127.0.0.1"
LOGGED_AS = "operator/demo"  # the demo's own Kafka identity: operators may append to meshlog.identities


@dataclass
class DemoTrust:
    tls_dir: Path
    ca: pki.CertificateAuthority = field(init=False)
    issued: dict[str, pki.IdentityFiles] = field(default_factory=dict)  # SPIFFE path -> its files
    redeemed: dict[str, str] = field(default_factory=dict)  # SPIFFE path -> the join token it was enrolled with
    unlogged: list[x509.Certificate] = field(default_factory=list)  # issued offline, not appended yet
    logged: int = 0
    _bootstrap: str | None = field(default=None, init=False)
    _batching: bool = field(default=False, init=False)

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
        files = kafka_tls.issue_files(self.ca, ident, kafka_tls.identity_dir(self.tls_dir, ident),
                                      server_names=server_names)
        self.unlogged.append(pki.cert_from_pem(files.cert.read_bytes()))
        if self._bootstrap is not None and not self._batching:
            self.log_issued()
        return files

    # -- the identities log ---------------------------------------------------------

    def start_logging(self, bootstrap: str, before_the_log: tuple[pki.IdentityFiles, ...] = ()) -> int:
        """The log exists: append what was issued so far (and ``before_the_log``'s certificates, issued by
        someone else before the topics existed), and from now on every issuance. Returns how many."""
        self._bootstrap = bootstrap
        for files in before_the_log:
            if files.cert.exists():
                self.unlogged.append(pki.cert_from_pem(files.cert.read_bytes()))
        return self.log_issued()

    @contextmanager
    def batch(self):
        """Issue several identities and append them in one go at the end (one producer, not one each)."""
        self._batching = True
        try:
            yield
        finally:
            self._batching = False
        if self._bootstrap is not None:
            self.log_issued()

    def log_issued(self) -> int:
        """Append an ``identity.issued`` event (how ``offline``) for each certificate not logged yet."""
        if not self.unlogged or self._bootstrap is None:
            return 0
        from events.producer import EventProducer

        pending = list(self.unlogged)
        root = records.authority_signer(self.ca)  # identity facts are the root's
        events = [root.sign(new_event(records.issued(cert, self.ca.certificate, how="offline",
                                                     requested_by="meshlog demo"), producer=LOGGED_AS))
                  for cert in pending]

        async def append() -> None:
            async with EventProducer(self._bootstrap) as producer:
                for event in events:
                    await producer.append(event)

        asyncio.run(append())
        del self.unlogged[:len(pending)]
        self.logged += len(pending)
        return len(pending)

    def mint_token(self, service: str) -> str:
        """What ``meshlog ca token --service S`` prints: a one-time join token for one instance of ``service``."""
        return tokens.mint(self.ca, service, now=datetime.now(timezone.utc))

    def join(self, url: str, service: str, instance: str) -> pki.IdentityFiles:
        """Enrol ``sidecar/<service>/<instance>`` at ``meshlog ca serve`` (``url``) with a fresh join token: a
        CSR for a key made here, which never leaves the sidecar's directory; the CA key is not used."""
        path = f"sidecar/{service}/{instance}"
        token = self.mint_token(service)
        granted = asyncio.run(client.join(url, token=token, service=service, instance=instance,
                                          root=self.ca.certificate))
        ident = self.spiffe_id(path)
        files = pki.save_identity(kafka_tls.identity_dir(self.tls_dir, ident), granted.cert, granted.key,
                                  self.ca.certificate)
        self.issued[path], self.redeemed[path] = files, token
        return files

    def renew(self, url: str, path: str) -> pki.IdentityFiles:
        """What ``meshlog ca renew`` does: present the current certificate over mTLS to ``ca serve``, get one
        for a new key, and write both over the identity's files (a running sidecar picks them up)."""
        files = self.issued[path]
        granted = asyncio.run(client.renew(url, files))
        return pki.save_identity(files.cert.parent, granted.cert, granted.key, self.ca.certificate)

    def redeem_again(self, url: str, service: str, instance: str) -> client.CaRefused | None:
        """Present the join token ``sidecar/<service>/<instance>`` was enrolled with a second time (for another
        key); returns the CA's refusal, or None if it issued a certificate."""
        token = self.redeemed[f"sidecar/{service}/{instance}"]
        try:
            asyncio.run(client.join(url, token=token, service=service, instance=instance, root=self.ca.certificate))
        except client.CaRefused as refused:
            return refused
        return None

    def gateway(self, replica: str) -> pki.IdentityFiles:
        return self.identity(f"gateway/{replica}", server_names=(HOST,))

    def sidecar(self, service: str, instance: str) -> pki.IdentityFiles:
        return self.identity(f"sidecar/{service}/{instance}")

    def kafka_security(self, path: str) -> KafkaSecurity:
        return kafka_tls.security_of(self.identity(path))

    def kafka_env(self, path: str) -> dict[str, str]:
        """``MESHLOG_KAFKA_*`` variables that make a child speak to the broker as ``path``."""
        return to_env(self.kafka_security(path))
