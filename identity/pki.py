"""The mesh CA's certificate logic: roots, workload certificates, verification.

Pure: every function takes its inputs (keys, certificates, the time ``now``)
as arguments and returns new objects. The only I/O is in the explicit
``save_*``/``load_*`` helpers at the bottom, which read and write PEM files.

Invariants:
- One trust domain = one self-signed ECDSA P-256 root. Workload certificates
  are signed directly by it (no intermediates), so "chains to the root" is
  exactly ``verify_directly_issued_by`` plus the checks in ``verify``.
- A workload certificate carries exactly one URI SAN, its SPIFFE id, and a
  subject of only ``CN=<SpiffeId.common_name>`` (so Kafka's default principal
  is ``User:CN=<that>``). It is not a CA (``BasicConstraints(ca=False)``),
  usable for both TLS client and server auth; server certificates may add DNS
  and IP SANs (e.g. ``localhost``, ``127.0.0.1``) for hostname verification.
- The serial is random (159 bits), printed as lowercase hex without ``0x``
  everywhere (``serial_hex``): events, CLI, revocation.
- Lifetimes are short (``DEFAULT_LIFETIME`` 24 h); ``renewal_due`` is at 2/3
  of the life, so a renewal has the last third to succeed.
- ``verify`` refuses with ``CertificateRefused(reason, detail)``; ``reason``
  is a short stable code (see ``REASONS``) for counters and HTTP/gRPC errors.
  Revocation is not checked here: it is a fact in the log (``identity.registry``).
- Private keys written to disk are mode 0600 from creation (never widened and
  then narrowed) and replaced atomically, so a file watcher sees the old or
  the new key, never half of one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from events.files import write_file_atomic
from identity.spiffe import SpiffeId, SpiffeIdError, parse as parse_spiffe_id, ca as ca_spiffe_id

DEFAULT_LIFETIME = timedelta(hours=24)
ROOT_LIFETIME = timedelta(days=3650)
RENEW_AT_FRACTION = 2 / 3
# certificates are backdated a little so a peer whose clock is slightly behind accepts them
CLOCK_SKEW = timedelta(minutes=1)

REASONS = (
    "malformed",            # not a parseable certificate / CSR
    "bad_key",              # not an ECDSA P-256 public key
    "bad_csr_signature",    # the CSR was not signed by the key it carries
    "no_spiffe_id",         # no (or more than one, or an unparseable) spiffe:// URI SAN
    "other_trust_domain",   # SPIFFE id or issuer of another trust domain
    "untrusted_issuer",     # not signed by this trust domain's root
    "not_a_workload",       # a CA certificate presented as a workload certificate
    "not_yet_valid",
    "expired",
)


class PkiError(ValueError):
    """Bad input to the CA (a malformed CSR, a wrong key type); ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class CertificateRefused(PkiError):
    """A certificate that this trust domain does not accept (see ``verify``)."""


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A trust domain's root: its certificate and signing key."""

    domain: str
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def spiffe_id(self) -> SpiffeId:
        return ca_spiffe_id(self.domain)


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return now.astimezone(timezone.utc)


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _require_p256(public_key: object, what: str) -> ec.EllipticCurvePublicKey:
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
        kind = type(public_key).__name__
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            kind = f"EC {public_key.curve.name}"
        raise PkiError("bad_key", f"{what} must be an ECDSA P-256 key, got {kind}")
    return public_key


def create_root(domain: str, *, now: datetime | None = None, lifetime: timedelta = ROOT_LIFETIME,
                key: ec.EllipticCurvePrivateKey | None = None) -> CertificateAuthority:
    """A new self-signed root for ``domain`` (its URI SAN is ``spiffe://<domain>/ca``)."""
    start = _utc(now)
    key = key or generate_key()
    ident = ca_spiffe_id(domain)  # validates the domain
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshlog"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"meshlog root {domain}"[:64]),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ident.uri)]), critical=False)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(domain=domain, certificate=cert, key=key)


def make_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: SpiffeId | None = None) -> x509.CertificateSigningRequest:
    """A CSR for ``key``. The CA decides the identity (from the join token); the SAN here is a hint only."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.common_name if spiffe_id else "meshlog workload")])
    )
    if spiffe_id is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id.uri)]),
                                        critical=False)
    return builder.sign(key, hashes.SHA256())


MAX_PEM_BYTES = 16 * 1024


def load_csr(data: bytes | str) -> x509.CertificateSigningRequest:
    """Parse and check a PEM CSR from a client: well-formed, self-signed by its key, P-256."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_PEM_BYTES:
        raise PkiError("malformed", f"CSR is larger than {MAX_PEM_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(raw)
    except (ValueError, TypeError) as exc:
        raise PkiError("malformed", f"not a PEM certificate signing request ({str(exc)[:120]})") from None
    try:
        key = csr.public_key()
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType) as exc:
        raise PkiError("malformed", f"CSR public key cannot be read ({str(exc)[:120]})") from None
    _require_p256(key, "the CSR's public key")
    try:
        valid = csr.is_signature_valid
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise PkiError("bad_csr_signature", "the CSR is not signed by the key it carries")
    return csr


def _ip_or_dns(names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def issue(ca: CertificateAuthority, spiffe_id: SpiffeId, public_key: ec.EllipticCurvePublicKey, *,
          now: datetime | None = None, lifetime: timedelta = DEFAULT_LIFETIME,
          server_names: Sequence[str] = (), serial: int | None = None) -> x509.Certificate:
    """A workload certificate for ``spiffe_id`` and ``public_key``, signed by ``ca``.

    ``server_names`` adds DNS/IP SANs (``"localhost"``, ``"127.0.0.1"``) for a certificate that
    also serves TLS to clients that verify hostnames. The validity never outlives the root.
    """
    if spiffe_id.domain != ca.domain:
        raise PkiError("other_trust_domain",
                       f"{spiffe_id.uri} is not in trust domain {ca.domain!r}")
    if spiffe_id.role == "ca":
        raise PkiError("not_a_workload", "the ca identity belongs to the root, not to a workload certificate")
    _require_p256(public_key, "the workload public key")
    if lifetime <= timedelta(0):
        raise ValueError("lifetime must be positive")
    start = _utc(now)
    not_after = min(start + lifetime, ca.certificate.not_valid_after_utc)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id.uri)]
    sans += _ip_or_dns(server_names)
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, encipher_only=False, decipher_only=False),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def issue_from_csr(ca: CertificateAuthority, csr: x509.CertificateSigningRequest, spiffe_id: SpiffeId,
                   **kwargs) -> x509.Certificate:
    """``issue`` for the key in a checked CSR (``load_csr``); the CSR's own names are ignored."""
    return issue(ca, spiffe_id, _require_p256(csr.public_key(), "the CSR's public key"), **kwargs)


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The one SPIFFE id in a certificate's URI SAN, or ``CertificateRefused('no_spiffe_id')``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
    except x509.ExtensionNotFound:
        uris = []
    except (ValueError, TypeError) as exc:
        raise CertificateRefused("malformed", f"unreadable subjectAltName ({str(exc)[:120]})") from None
    if len(uris) != 1:
        raise CertificateRefused("no_spiffe_id", "the certificate carries no SPIFFE id" if not uris
                                 else f"the certificate carries {len(uris)} SPIFFE ids, expected one")
    try:
        return parse_spiffe_id(uris[0])
    except SpiffeIdError as exc:
        raise CertificateRefused("no_spiffe_id", str(exc)) from None


def verify(cert: x509.Certificate, root: x509.Certificate, *, now: datetime | None = None,
           check_time: bool = True) -> SpiffeId:
    """Check that ``cert`` is a current workload certificate of ``root``'s trust domain; return its id.

    Refuses (``CertificateRefused``) with reason: untrusted_issuer, not_a_workload, not_yet_valid,
    expired, no_spiffe_id, other_trust_domain. Revocation is the registry's job. ``check_time=False``
    checks only who issued it (a client checking its own certificate before presenting it).
    """
    at = _utc(now)
    ident = spiffe_id_of(cert)
    domain = spiffe_id_of(root).domain
    if ident.domain != domain:
        raise CertificateRefused("other_trust_domain",
                                 f"{ident.uri} belongs to trust domain {ident.domain!r}, not {domain!r}")
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateRefused("untrusted_issuer",
                                 f"{ident.uri} (serial {serial_hex(cert)}) is not signed by the {domain!r} root") from None
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = basic.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca or ident.role == "ca":
        raise CertificateRefused("not_a_workload", f"{ident.uri} is a CA certificate, not a workload certificate")
    if not check_time:
        return ident
    if at < cert.not_valid_before_utc:
        raise CertificateRefused("not_yet_valid", f"{ident.uri} (serial {serial_hex(cert)}) is valid only from "
                                 f"{cert.not_valid_before_utc.isoformat()}")
    if at >= cert.not_valid_after_utc:
        raise CertificateRefused("expired", f"{ident.uri} (serial {serial_hex(cert)}) expired at "
                                 f"{cert.not_valid_after_utc.isoformat()}")
    return ident


def serial_hex(cert_or_serial: x509.Certificate | int) -> str:
    serial = cert_or_serial if isinstance(cert_or_serial, int) else cert_or_serial.serial_number
    return format(serial, "x")


def parse_serial(text: str) -> int:
    """The inverse of ``serial_hex``; accepts an optional ``0x`` and ``:`` separators, as people paste them."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    if not cleaned or len(cleaned) > 40 or any(c not in "0123456789abcdef" for c in cleaned):
        raise ValueError(f"serial {text[:60]!r} must be 1-40 hex digits")
    return int(cleaned, 16)


def renewal_due(cert: x509.Certificate) -> datetime:
    """When a holder should renew: 2/3 of the way from not-before to not-after."""
    return renewal_time(cert.not_valid_before_utc, cert.not_valid_after_utc)


def renewal_time(not_before: datetime, not_after: datetime) -> datetime:
    """``renewal_due`` from the two validity bounds alone (for schedulers that keep only those)."""
    return not_before + (not_after - not_before) * RENEW_AT_FRACTION


# ---- encodings ------------------------------------------------------------------------------

def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_from_pem(data: bytes | str) -> x509.Certificate:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        return x509.load_pem_x509_certificate(raw)
    except (ValueError, TypeError) as exc:
        raise PkiError("malformed", f"not a PEM certificate ({str(exc)[:120]})") from None


def cert_from_der(data: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(bytes(data))
    except (ValueError, TypeError) as exc:
        raise PkiError("malformed", f"not a DER certificate ({str(exc)[:120]})") from None


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # PKCS#8 unencrypted: what Envoy, Kafka (ssl.keystore.type=PEM without a key password) and grpcio read
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def key_from_pem(data: bytes | str) -> ec.EllipticCurvePrivateKey:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError("malformed", f"not an unencrypted PEM private key ({str(exc)[:120]})") from None
    _require_p256(key.public_key(), "the private key")
    return key  # type: ignore[return-value]


def keystore_pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bytes:
    """One PEM with the PKCS#8 key then the certificate: Kafka's ``ssl.keystore.type=PEM`` file layout."""
    return key_to_pem(key) + cert_to_pem(cert)


def public_key_pem(key: ec.EllipticCurvePublicKey | x509.Certificate) -> str:
    pub = key.public_key() if isinstance(key, x509.Certificate) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def public_key_from_pem(data: bytes | str) -> ec.EllipticCurvePublicKey:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError) as exc:
        raise PkiError("malformed", f"not a PEM public key ({str(exc)[:120]})") from None
    return _require_p256(key, "the public key")


# ---- files (the only I/O in this module) ------------------------------------------------------

CA_CERT_FILE = "ca.pem"      # the trust bundle: the root certificate
CA_KEY_FILE = "ca-key.pem"   # the root key: only in the CA's own directory
CERT_FILE = "cert.pem"       # a workload certificate
KEY_FILE = "key.pem"         # its private key (mode 0600)
DOMAIN_FILE = "domain"





@dataclass(frozen=True, slots=True)
class IdentityFiles:
    """Where an identity's files are: certificate, key (0600) and the trust bundle."""

    cert: Path
    key: Path
    bundle: Path

    @classmethod
    def in_dir(cls, directory: Path | str) -> "IdentityFiles":
        d = Path(directory)
        return cls(cert=d / CERT_FILE, key=d / KEY_FILE, bundle=d / CA_CERT_FILE)


def save_ca(ca: CertificateAuthority, directory: Path | str, *, overwrite: bool = False) -> Path:
    """Write ``ca.pem``, ``ca-key.pem`` (0600) and ``domain`` into ``directory``; refuse to clobber a CA."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if not overwrite and (d / CA_KEY_FILE).exists():
        raise FileExistsError(f"{d / CA_KEY_FILE} already exists: a trust domain's root is not replaced silently")
    write_file_atomic(d / CA_KEY_FILE, key_to_pem(ca.key), 0o600)
    write_file_atomic(d / CA_CERT_FILE, cert_to_pem(ca.certificate))
    write_file_atomic(d / DOMAIN_FILE, (ca.domain + "\n").encode())
    return d


def load_ca(directory: Path | str) -> CertificateAuthority:
    d = Path(directory)
    cert = cert_from_pem((d / CA_CERT_FILE).read_bytes())
    key = key_from_pem((d / CA_KEY_FILE).read_bytes())
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise PkiError("bad_key", f"{d / CA_KEY_FILE} is not the key of {d / CA_CERT_FILE}")
    ident = spiffe_id_of(cert)
    return CertificateAuthority(domain=ident.domain, certificate=cert, key=key)


def load_bundle(path: Path | str) -> x509.Certificate:
    """The trust domain's root certificate from a ``ca.pem``."""
    return cert_from_pem(Path(path).read_bytes())


def save_identity(directory: Path | str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None,
                  root: x509.Certificate) -> IdentityFiles:
    """Write ``cert.pem``, ``key.pem`` (0600; skipped when ``key`` is None) and ``ca.pem``.

    The key is written before the certificate, so a watcher that reloads on the certificate's
    change finds the matching key already in place.
    """
    files = IdentityFiles.in_dir(directory)
    files.cert.parent.mkdir(parents=True, exist_ok=True)
    if key is not None:
        write_file_atomic(files.key, key_to_pem(key), 0o600)
    write_file_atomic(files.bundle, cert_to_pem(root))
    write_file_atomic(files.cert, cert_to_pem(cert))
    return files


def load_identity(directory: Path | str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """(certificate, key, root) from a directory written by ``save_identity``."""
    files = IdentityFiles.in_dir(directory)
    return (cert_from_pem(files.cert.read_bytes()), key_from_pem(files.key.read_bytes()),
            cert_from_pem(files.bundle.read_bytes()))
