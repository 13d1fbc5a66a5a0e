"""identity.pki: roots, workload certificates, verification refusals, key files."""

from __future__ import annotations

import stat
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from identity import pki, spiffe
from identity.pki import CertificateRefused, PkiError

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
DOMAIN = "mesh.local"


@pytest.fixture(scope="module")
def ca():
    return pki.create_root(DOMAIN, now=T0)


@pytest.fixture(scope="module")
def other_ca():
    return pki.create_root("other.mesh", now=T0)


def _issue(ca, ident=None, **kw):
    key = pki.generate_key()
    ident = ident or spiffe.sidecar(ca.domain, "reviews", "r1")
    return pki.issue(ca, ident, key.public_key(), now=T0, **kw), key


def test_root_is_a_p256_ca_with_the_ca_spiffe_id(ca):
    cert = ca.certificate
    assert isinstance(cert.public_key().curve, ec.SECP256R1)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert pki.spiffe_id_of(cert) == spiffe.ca(DOMAIN)


def test_workload_certificate_shape(ca):
    ident = spiffe.sidecar(DOMAIN, "reviews", "r1")
    cert, _ = _issue(ca, ident)
    assert pki.spiffe_id_of(cert) == ident
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sidecar/reviews/r1"
    assert cert.subject.rfc4514_string() == "CN=sidecar/reviews/r1"  # Kafka principal User:CN=sidecar/reviews/r1
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc - T0 == pki.DEFAULT_LIFETIME
    assert pki.verify(cert, ca.certificate, now=T0) == ident


def test_server_names_add_dns_and_ip_sans(ca):
    cert, _ = _issue(ca, spiffe.gateway(DOMAIN, "g1"),
                     server_names=("localhost", "127.0.0.1"))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert pki.spiffe_id_of(cert) == spiffe.gateway(DOMAIN, "g1")


def test_csr_round_trip_and_ca_decides_identity(ca):
    key = pki.generate_key()
    claimed = spiffe.operator(DOMAIN, "root-please")
    csr = pki.load_csr(pki.make_csr(key, claimed).public_bytes(pki.serialization.Encoding.PEM))
    granted = spiffe.sidecar(DOMAIN, "reviews", "r2")
    cert = pki.issue_from_csr(ca, csr, granted, now=T0)
    assert pki.spiffe_id_of(cert) == granted  # the CSR's SAN is a hint, never trusted
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()


@pytest.mark.parametrize("data,reason", [
    (b"not a csr", "malformed"),
    (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "malformed"),
    (b"x" * (pki.MAX_PEM_BYTES + 1), "malformed"),
])
def test_malformed_csr_refused(data, reason):
    with pytest.raises(PkiError) as err:
        pki.load_csr(data)
    assert err.value.reason == reason


def test_csr_with_wrong_key_type_refused():
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024 + 1024)
    from cryptography.hazmat.primitives import hashes, serialization
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
           .sign(rsa_key, hashes.SHA256()))
    with pytest.raises(PkiError) as err:
        pki.load_csr(csr.public_bytes(serialization.Encoding.PEM))
    assert err.value.reason == "bad_key"


def test_csr_with_bad_signature_refused():
    from cryptography.hazmat.primitives import serialization
    der = bytearray(pki.make_csr(pki.generate_key()).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature
    pem = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(PkiError) as err:
        pki.load_csr(pem)
    assert err.value.reason in ("bad_csr_signature", "malformed")


def test_verify_refusals(ca, other_ca):
    cert, _ = _issue(ca)
    with pytest.raises(CertificateRefused) as err:
        pki.verify(cert, ca.certificate, now=cert.not_valid_after_utc)
    assert err.value.reason == "expired"
    with pytest.raises(CertificateRefused) as err:
        pki.verify(cert, ca.certificate, now=T0 - timedelta(hours=1))
    assert err.value.reason == "not_yet_valid"
    # another trust domain's certificate
    foreign, _ = _issue(other_ca, spiffe.sidecar("other.mesh", "reviews", "r1"))
    with pytest.raises(CertificateRefused) as err:
        pki.verify(foreign, ca.certificate, now=T0)
    assert err.value.reason == "other_trust_domain"
    # same domain name, different root key: an impostor CA
    impostor = pki.create_root(DOMAIN, now=T0)
    forged, _ = _issue(impostor)
    with pytest.raises(CertificateRefused) as err:
        pki.verify(forged, ca.certificate, now=T0)
    assert err.value.reason == "untrusted_issuer"
    # the root itself is not a workload identity
    with pytest.raises(CertificateRefused) as err:
        pki.verify(ca.certificate, ca.certificate, now=T0)
    assert err.value.reason == "not_a_workload"


def test_certificate_without_spiffe_id_refused(ca):
    from cryptography.hazmat.primitives import hashes
    key = pki.generate_key()
    plain = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plain")]))
             .issuer_name(ca.certificate.subject).public_key(key.public_key())
             .serial_number(1).not_valid_before(T0).not_valid_after(T0 + timedelta(hours=1))
             .sign(ca.key, hashes.SHA256()))
    with pytest.raises(CertificateRefused) as err:
        pki.verify(plain, ca.certificate, now=T0)
    assert err.value.reason == "no_spiffe_id"


def test_issue_refuses_foreign_domain_and_ca_role(ca):
    key = pki.generate_key().public_key()
    with pytest.raises(PkiError) as err:
        pki.issue(ca, spiffe.projector("other.mesh"), key, now=T0)
    assert err.value.reason == "other_trust_domain"
    with pytest.raises(PkiError) as err:
        pki.issue(ca, spiffe.ca(DOMAIN), key, now=T0)
    assert err.value.reason == "not_a_workload"


def test_lifetime_never_outlives_root(ca):
    cert, _ = _issue(ca, lifetime=timedelta(days=100000))
    assert cert.not_valid_after_utc == ca.certificate.not_valid_after_utc


def test_renewal_due_at_two_thirds():
    ca = pki.create_root(DOMAIN, now=T0)
    cert, _ = _issue(ca, lifetime=timedelta(hours=3) - pki.CLOCK_SKEW)
    # not_before is backdated by CLOCK_SKEW: the whole life is 3 h, renewal 2 h after not_before
    assert pki.renewal_due(cert) == cert.not_valid_before_utc + timedelta(hours=2)


def test_serial_hex_round_trip(ca):
    cert, _ = _issue(ca)
    text = pki.serial_hex(cert)
    assert text == text.lower() and not text.startswith("0x")
    assert pki.parse_serial(text) == cert.serial_number
    assert pki.parse_serial("0X" + text.upper()) == cert.serial_number
    with pytest.raises(ValueError, match="hex digits"):
        pki.parse_serial("zz")


def test_files_round_trip_and_key_mode(tmp_path, ca):
    pki.save_ca(ca, tmp_path / "ca")
    assert stat.S_IMODE((tmp_path / "ca" / pki.CA_KEY_FILE).stat().st_mode) == 0o600
    loaded = pki.load_ca(tmp_path / "ca")
    assert loaded.domain == DOMAIN and loaded.certificate == ca.certificate
    with pytest.raises(FileExistsError):
        pki.save_ca(ca, tmp_path / "ca")
    cert, key = _issue(ca)
    files = pki.save_identity(tmp_path / "id", cert, key, ca.certificate)
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    got_cert, got_key, root = pki.load_identity(tmp_path / "id")
    assert got_cert == cert and root == ca.certificate
    assert got_key.public_key().public_numbers() == key.public_key().public_numbers()
    assert list((tmp_path / "id").glob(".*tmp")) == []


def test_public_key_pem_round_trip(ca):
    cert, key = _issue(ca)
    pem = pki.public_key_pem(cert)
    assert pki.public_key_from_pem(pem).public_numbers() == key.public_key().public_numbers()


def test_verify_without_time_checks_only_the_issuer(ca):
    cert, _ = _issue(ca)
    late = cert.not_valid_after_utc + timedelta(days=1)
    assert pki.verify(cert, ca.certificate, now=late, check_time=False) == pki.spiffe_id_of(cert)
    forged, _ = _issue(pki.create_root(DOMAIN, now=T0))
    with pytest.raises(CertificateRefused) as err:
        pki.verify(forged, ca.certificate, now=late, check_time=False)
    assert err.value.reason == "untrusted_issuer"


def test_keystore_pem_is_key_then_certificate(ca):
    cert, key = _issue(ca)
    data = pki.keystore_pem(cert, key)
    assert data.startswith(b"-----BEGIN PRIVATE KEY-----") and data.endswith(pki.cert_to_pem(cert))
    assert pki.key_from_pem(data).public_key().public_numbers() == key.public_key().public_numbers()
