"""Client of ``meshlog ca serve``: join with a token, renew with the current certificate.

Used by ``meshlog ca join|renew``, the tests, the bench and (next) the sidecar
agent. The client verifies the CA server against the trust bundle (``ca.pem``,
distributed out of band like SPIRE's bundle) and that the certificate it got
back is for the identity it asked for and chains to that root.

Invariant: a certificate that does not chain to the bundle is refused here,
before connecting (``pki.CertificateRefused``, e.g. ``untrusted_issuer``),
because the server's TLS handshake would refuse it without a reason. A refusal
by the server becomes ``CaRefused(status, reason, detail)`` carrying the
server's reason code; nothing is written to disk unless a certificate was
issued and checked.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import aiohttp
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from identity import pki


class CaRefused(Exception):
    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(f"HTTP {status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Granted:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    root: x509.Certificate


def client_ssl_context(root: x509.Certificate, files: pki.IdentityFiles | None = None) -> ssl.SSLContext:
    """Trust only ``root``; present the certificate in ``files`` (mTLS) when given."""
    ctx = ssl.create_default_context(cadata=pki.cert_to_pem(root).decode())
    if files is not None:
        ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


async def _post(session: aiohttp.ClientSession, url: str, doc: dict, ctx: ssl.SSLContext) -> dict:
    async with session.post(url, data=orjson.dumps(doc), ssl=ctx,
                            headers={"content-type": "application/json"}) as resp:
        raw = await resp.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = {}
        if resp.status != 200:
            raise CaRefused(resp.status, str(body.get("error", "http_error"))[:64],
                            str(body.get("detail", raw[:200]))[:300])
        return body


def _granted(body: dict, key: ec.EllipticCurvePrivateKey, root: x509.Certificate, want: str | None) -> Granted:
    cert = pki.cert_from_pem(body["certificate"])
    ident = pki.verify(cert, root)
    if want is not None and ident.uri != want:
        raise pki.CertificateRefused("no_spiffe_id", f"the CA returned {ident.uri}, not {want}")
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise pki.CertificateRefused("bad_key", "the CA returned a certificate for another key")
    return Granted(cert=cert, key=key, root=root)


def _csr_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return pki.make_csr(key).public_bytes(serialization.Encoding.PEM).decode()


async def join(url: str, *, token: str, service: str, instance: str, root: x509.Certificate,
               key: ec.EllipticCurvePrivateKey | None = None, timeout_s: float = 15.0,
               session: aiohttp.ClientSession | None = None) -> Granted:
    """POST a CSR with a join token; returns the certificate for ``sidecar/<service>/<instance>``."""
    key = key or pki.generate_key()
    doc = {"token": token, "csr": _csr_pem(key), "service": service, "instance": instance}
    own = session is None
    session = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))
    try:
        body = await _post(session, url.rstrip("/") + "/v1/join", doc, client_ssl_context(root))
    finally:
        if own:
            await session.close()
    domain = pki.spiffe_id_of(root).domain
    return _granted(body, key, root, f"spiffe://{domain}/sidecar/{service}/{instance}")


async def renew(url: str, files: pki.IdentityFiles, *, key: ec.EllipticCurvePrivateKey | None = None,
                timeout_s: float = 15.0) -> Granted:
    """Present the certificate in ``files`` over mTLS and get a new one (same SPIFFE id) for a new key."""
    root = pki.load_bundle(files.bundle)
    current = pki.cert_from_pem(files.cert.read_bytes())
    # a certificate the root did not sign would fail the TLS handshake with a bare alert (the server's
    # TLS layer cannot pass it on): say why here. Expiry and revocation are the CA's to decide and name.
    pki.verify(current, root, check_time=False)
    key = key or pki.generate_key()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        body = await _post(session, url.rstrip("/") + "/v1/renew", {"csr": _csr_pem(key)},
                           client_ssl_context(root, files=files))
    return _granted(body, key, root, pki.spiffe_id_of(current).uri)
