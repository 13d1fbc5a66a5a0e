"""The demo's identities: one CA in the work dir, each process its own certificate, renewal in place."""

from __future__ import annotations

import ipaddress

from cryptography import x509

from events.kafka_security import ENV_CA_FILE, ENV_CERT_FILE, ENV_KEY_FILE, ENV_PROTOCOL, KafkaSecurity
from identity import pki
from meshlog.demo.stack import DemoStack
from meshlog.demo.trust import DemoTrust


def _cert(files: pki.IdentityFiles) -> x509.Certificate:
    return pki.cert_from_pem(files.cert.read_bytes())


def test_each_process_gets_its_own_identity_from_the_ca_in_the_work_dir(tmp_path):
    trust = DemoTrust(tmp_path / "tls")
    assert (tmp_path / "tls" / "ca" / pki.CA_KEY_FILE).exists()
    web = trust.sidecar("web", "web-1")
    assert str(pki.spiffe_id_of(_cert(web))) == f"spiffe://{trust.domain}/sidecar/web/web-1"
    gateway = trust.gateway("gateway-1")
    sans = _cert(gateway).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)  # what sidecars dial
    assert len({trust.sidecar("reviews", "a").cert, web.cert, gateway.cert}) == 3
    assert trust.sidecar("web", "web-1") == web  # issued once, then reused
    env = trust.kafka_env("projector")
    assert env[ENV_PROTOCOL] == "SSL" and env[ENV_CA_FILE] == str(trust.identity("projector").bundle)
    assert KafkaSecurity.from_env(env).cert_file == env[ENV_CERT_FILE]
    assert "projector" in env[ENV_KEY_FILE]
    # the same CA again (a second DemoTrust over the dir) keeps the trust domain's root
    assert DemoTrust(tmp_path / "tls").ca.certificate == trust.ca.certificate


def test_reissue_renews_the_files_in_place_with_the_same_identity_and_a_new_key(tmp_path):
    trust = DemoTrust(tmp_path / "tls")
    before = trust.sidecar("web", "web-1")
    old_cert, old_key = _cert(before), before.key.read_bytes()
    after = trust.reissue("sidecar/web/web-1")
    assert after == before  # same paths: what a running sidecar's --tls-* flags name
    new_cert = _cert(after)
    assert new_cert.serial_number != old_cert.serial_number and after.key.read_bytes() != old_key
    assert pki.spiffe_id_of(new_cert) == pki.spiffe_id_of(old_cert)


def test_insecure_and_foreign_brokers_give_children_no_kafka_identity(tmp_path):
    insecure = DemoStack(tmp_path / "a", secure=False)
    assert insecure.kafka_env("projector") == {}
    assert insecure.gateway_identity("gateway-1") is None and insecure.sidecar_identity("web", "web-1") is None
    foreign = DemoStack(tmp_path / "b", bootstrap="127.0.0.1:1", say=lambda _line: None)
    foreign.start_kafka()  # --bootstrap: a CA for xDS, but Kafka security comes from the user's environment
    assert foreign.trust is not None and foreign.kafka_env("projector") == {}
    assert foreign.sidecar_identity("web", "web-1") is not None
