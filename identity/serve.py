"""``meshlog ca serve``: the CA endpoint (HTTPS; mTLS for renewal).

Endpoints (JSON in, JSON out; refusals are ``{"error": <reason>, "detail": ...}``
with the HTTP status of ``identity.authority.STATUS``)::

    POST /v1/join   {"token", "csr", "service", "instance"} -> a certificate for sidecar/<service>/<instance>
    POST /v1/renew  {"csr"}, TLS client certificate = the current one -> a new certificate, same SPIFFE id
    GET  /healthz   {"ok": true, "replica", "domain", "log_position"}

Invariants:
- Stateless: replicas share only the CA directory and the log. A join
  appends ``JoinTokenRedeemed`` and reads the identities topic up to it; the
  first redemption in log order wins (``identity.tokens``). A renewal reads
  the log to its end first, so a revocation logged before the request is
  seen. Each issued certificate is appended as ``IdentityIssued`` before it
  is returned: a certificate nobody can find in the log is never handed out.
  (A replica that dies between a won claim and the issuance burns the token:
  the operator mints another; a token is never granted twice.)
- Without the log there is no decision: if Kafka does not answer, the
  request gets 503 ``log_unavailable``, never a certificate.
- TLS: the server presents a ``ca-server/<replica>`` certificate (issued at
  start, logged, re-issued at 2/3 of its life). Client certificates are
  optional (joins have none) and verified against the root in the handshake
  *without the time check* (OpenSSL's X509_V_FLAG_NO_CHECK_TIME): an expired
  certificate reaches ``authority.check_renewal`` and gets a clear 403
  "expired" instead of a bare TLS alert. A certificate of another root fails
  the handshake (Python's ssl has no verify callback to pass it on); nothing
  is issued, and ``identity.client`` names the reason before it connects.
- A refusal is counted per reason (``/healthz``) and logged once, bounded.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Awaitable, Callable

import orjson
from aiohttp import web
from cryptography import x509

from events.admin import BrokerUnavailable
from events.envelope import new_event
from events.files import write_file_atomic
from events.producer import EventProducer
from identity import authority, pki, records
from identity.authority import Refused
from identity.log import IdentityLog, LogUnavailable
from identity.spiffe import SpiffeId

log = logging.getLogger("identity.serve")

X509_V_FLAG_NO_CHECK_TIME = 0x200000  # not in Python's ssl.VerifyFlags; OpenSSL >= 1.1.0
DEFAULT_PORT = 8443


def server_ssl_context(files: pki.IdentityFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.bundle))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(files.cert), str(files.key))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
    return ctx


@dataclass
class Issued:
    cert: x509.Certificate
    root: x509.Certificate

    def body(self) -> dict:
        return {
            "spiffe_id": pki.spiffe_id_of(self.cert).uri,
            "serial": pki.serial_hex(self.cert),
            "certificate": pki.cert_to_pem(self.cert).decode(),
            "ca": pki.cert_to_pem(self.root).decode(),
            "not_before": self.cert.not_valid_before_utc.isoformat(),
            "not_after": self.cert.not_valid_after_utc.isoformat(),
            "renew_after": pki.renewal_due(self.cert).isoformat(),
        }


@dataclass
class CaService:
    """The request handlers; the log, producer and clock are injected."""

    ca: pki.CertificateAuthority
    identities: IdentityLog
    producer: EventProducer
    replica: str
    lifetime: timedelta = pki.DEFAULT_LIFETIME
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    refusals: Counter = field(default_factory=Counter)
    issued: int = 0

    @property
    def producer_name(self) -> str:
        return f"ca-server/{self.replica}"

    async def _append(self, payload) -> int:
        # identity facts are the root's: signed with its key (identity.records), whatever the producer's identity
        signed = records.authority_signer(self.ca).sign(new_event(payload, producer=self.producer_name))
        appended = await self.producer.append(signed)
        return appended.offset

    async def _issue(self, cert: x509.Certificate, **how) -> Issued:
        await self._append(records.issued(cert, self.ca.certificate, **how))
        self.issued += 1
        return Issued(cert, self.ca.certificate)

    async def join(self, body: bytes) -> Issued:
        now = self.clock()
        enrollment = authority.check_join(self.ca, authority.parse_join(body), now=now)
        token = enrollment.token
        authority.check_unused(await self.identities.sync(), token.token_id)
        claim_id = uuid.uuid4().hex
        offset = await self._append(records.redeemed(token, enrollment.spiffe_id.field("instance"), claim_id))
        authority.check_claim_won(await self.identities.catch_up(offset + 1), token.token_id, claim_id)
        cert = pki.issue_from_csr(self.ca, enrollment.csr, enrollment.spiffe_id, now=now, lifetime=self.lifetime)
        return await self._issue(cert, how="join_token", requested_by=f"join token {token.token_id}",
                                 join_token_id=token.token_id)

    async def renew(self, body: bytes, peer: x509.Certificate | None) -> Issued:
        now = self.clock()
        csr_pem = authority.parse_renew(body)
        registry = await self.identities.sync()
        ident, csr, old_serial = authority.check_renewal(self.ca, registry, peer, csr_pem, now=now)
        cert = pki.issue_from_csr(self.ca, csr, ident, now=now, lifetime=self.lifetime)
        return await self._issue(cert, how="renewal", requested_by=ident.uri, renews_serial=old_serial)

    # ---- HTTP

    async def _respond(self, request: web.Request, action: Callable[[bytes], Awaitable[Issued]]) -> web.Response:
        body = await request.content.read(authority.MAX_BODY + 1)
        try:
            issued = await action(body)
        except Refused as exc:
            return self._refuse(request, exc)
        except pki.PkiError as exc:  # e.g. an unreadable client certificate
            return self._refuse(request, Refused(exc.reason, exc.detail))
        except (LogUnavailable, BrokerUnavailable) as exc:
            # no decision without the log: a token's use or a revocation could be missed
            self.refusals["log_unavailable"] += 1
            log.warning("refused %s: the identities log is unavailable: %s", request.path, str(exc)[:300])
            return _json({"error": "log_unavailable", "detail": str(exc)[:300]}, 503)
        log.info("issued %s serial %s (%s)", pki.spiffe_id_of(issued.cert).uri, pki.serial_hex(issued.cert),
                 request.path)
        return _json(issued.body(), 200)

    def _refuse(self, request: web.Request, exc: Refused) -> web.Response:
        self.refusals[exc.reason] += 1
        log.info("refused %s from %s: %s: %s", request.path, request.remote, exc.reason, exc.detail[:300])
        return _json(exc.body(), exc.status)

    async def handle_join(self, request: web.Request) -> web.Response:
        return await self._respond(request, self.join)

    async def handle_renew(self, request: web.Request) -> web.Response:
        return await self._respond(request, lambda body: self.renew(body, _peer_certificate(request)))

    async def handle_health(self, request: web.Request) -> web.Response:
        return _json({"ok": True, "replica": self.replica, "domain": self.ca.domain,
                      "log_position": self.identities.position, "issued": self.issued,
                      "refusals": dict(self.refusals)}, 200)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=authority.MAX_BODY)
        app.router.add_post("/v1/join", self.handle_join)
        app.router.add_post("/v1/renew", self.handle_renew)
        app.router.add_get("/healthz", self.handle_health)
        return app


def _json(doc: dict, status: int) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


def _peer_certificate(request: web.Request) -> x509.Certificate | None:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return pki.cert_from_der(der) if der else None


# ---- running it


@dataclass
class ServeOptions:
    ca_dir: Path
    bootstrap: str
    listen: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    replica: str = "ca-0"
    lifetime: timedelta = pki.DEFAULT_LIFETIME
    server_names: tuple[str, ...] = ("localhost", "127.0.0.1")
    ready_file: Path | None = None


async def _issue_server_identity(service: CaService, files_dir: Path, names: tuple[str, ...]) -> x509.Certificate:
    ident = SpiffeId.of(service.ca.domain, "ca-server", service.replica)
    key = pki.generate_key()
    cert = pki.issue(service.ca, ident, key.public_key(), now=service.clock(), lifetime=service.lifetime,
                     server_names=names)
    pki.save_identity(files_dir, cert, key, service.ca.certificate)
    await service._issue(cert, how="offline", requested_by=f"ca serve replica {service.replica}")
    return cert


async def serve(options: ServeOptions, *, stop: asyncio.Event | None = None) -> None:
    ca = pki.load_ca(options.ca_dir)
    stop = stop or asyncio.Event()
    names = tuple(dict.fromkeys((*options.server_names, options.listen)))
    async with IdentityLog(options.bootstrap) as identities, EventProducer(options.bootstrap) as producer:
        await identities.sync()
        service = CaService(ca=ca, identities=identities, producer=producer, replica=options.replica,
                            lifetime=options.lifetime)
        with tempfile.TemporaryDirectory(prefix="meshlog-ca-serve-") as tmp:
            files = pki.IdentityFiles.in_dir(tmp)
            cert = await _issue_server_identity(service, Path(tmp), names)
            ctx = server_ssl_context(files)
            runner = web.AppRunner(service.app(), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, options.listen, options.port, ssl_context=ctx)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            log.info("ca serve %s for %s on https://%s:%d", options.replica, ca.domain, options.listen, port)
            if options.ready_file:
                write_file_atomic(Path(options.ready_file), f"{port}\n".encode())
            try:
                while not stop.is_set():
                    due = (pki.renewal_due(cert) - service.clock()).total_seconds()
                    try:
                        await asyncio.wait_for(stop.wait(), max(1.0, due))
                    except asyncio.TimeoutError:
                        cert = await _issue_server_identity(service, Path(tmp), names)
                        ctx.load_cert_chain(str(files.cert), str(files.key))  # new handshakes use it
            finally:
                await runner.cleanup()
