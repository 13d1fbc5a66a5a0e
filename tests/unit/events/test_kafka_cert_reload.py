"""ReloadingClientContext: a renewed client certificate is presented at the next handshake, never a broken pair.

Handshakes run over memory BIOs against a server context that requires a
client certificate of the same root, so the test sees exactly which
certificate the client presented, without a network or a broker (the
broker-backed version is tests/integration/test_kafka_cert_reload.py).
"""

from __future__ import annotations

import ssl

import pytest
from cryptography import x509

from events.kafka_security import KafkaSecurity, ReloadingClientContext
from events.files import write_file_atomic
from identity import pki, spiffe
from meshlog import kafka_tls

DOMAIN = "mesh.local"


@pytest.fixture
def ca():
    return pki.create_root(DOMAIN)


@pytest.fixture
def server_ctx(ca, tmp_path) -> ssl.SSLContext:
    files = kafka_tls.issue_files(ca, spiffe.SpiffeId.of(DOMAIN, "broker", "1"), tmp_path / "broker",
                                  server_names=("localhost",))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.bundle))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def presented_serial(client: ssl.SSLContext, server: ssl.SSLContext) -> int:
    """Run one TLS handshake in memory; the serial of the client certificate the server received."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, obj in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    der = s.getpeercert(binary_form=True)
    assert der, "the server got no client certificate"
    return x509.load_der_x509_certificate(der).serial_number


def client_files(ca, tmp_path):
    return kafka_tls.issue_files(ca, spiffe.sidecar(DOMAIN, "reviews", "r1"), tmp_path / "client")


def test_a_renewed_certificate_is_presented_at_the_next_handshake(ca, server_ctx, tmp_path):
    files = client_files(ca, tmp_path)
    ctx = KafkaSecurity(protocol="SSL", ca_file=str(files.bundle), cert_file=str(files.cert),
                        key_file=str(files.key)).ssl_context()
    assert isinstance(ctx, ReloadingClientContext)
    first = x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number
    assert presented_serial(ctx, server_ctx) == first

    renewed = client_files(ca, tmp_path)  # new key and certificate over the same files (atomic renames)
    second = x509.load_pem_x509_certificate(renewed.cert.read_bytes()).serial_number
    assert second != first
    assert presented_serial(ctx, server_ctx) == second
    assert ctx.reload_if_changed() is False  # nothing changed since: no reload


def test_a_half_written_renewal_keeps_the_previous_pair_until_the_certificate_follows(ca, server_ctx, tmp_path,
                                                                                      caplog):
    files = client_files(ca, tmp_path)
    ctx = KafkaSecurity(protocol="SSL", ca_file=str(files.bundle), cert_file=str(files.cert),
                        key_file=str(files.key)).ssl_context()
    first = x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number

    # a renewer writes the new key first, then the certificate: in between, the files are a mismatched pair
    key = pki.generate_key()
    write_file_atomic(files.key, pki.key_to_pem(key), 0o600)
    assert presented_serial(ctx, server_ctx) == first  # the old pair, still loaded, not a context without a key
    assert "does not load" in caplog.text
    assert ctx.reload_if_changed() is False  # the same broken state is not retried (nor logged) at every handshake

    cert = pki.issue(ca, spiffe.sidecar(DOMAIN, "reviews", "r1"), key.public_key())
    write_file_atomic(files.cert, pki.cert_to_pem(cert))
    assert presented_serial(ctx, server_ctx) == cert.serial_number
