"""KafkaSecurity: settings from flags and MESHLOG_KAFKA_* variables, validated up front, turned into aiokafka kwargs."""

from __future__ import annotations

import argparse
import logging
import re
import ssl
import subprocess
from pathlib import Path

import pytest

from events import kafka_security as ks
from events.kafka_security import KafkaSecurity, KafkaSecurityError
from identity import pki, spiffe
from meshlog import kafka_tls

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    d = tmp_path_factory.mktemp("id")
    ca = pki.create_root("mesh.local")
    return kafka_tls.issue_files(ca, spiffe.sidecar("mesh.local", "reviews", "r1"), d)


def test_default_is_plaintext_with_nothing_else():
    assert KafkaSecurity.from_env({}) == KafkaSecurity()
    assert KafkaSecurity().client_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert ks.connection_kwargs("127.0.0.1:9092", KafkaSecurity()) == {
        "bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}


def test_env_with_tls_files_means_ssl_and_builds_a_verifying_context(identity):
    env = {ks.ENV_CA_FILE: str(identity.bundle), ks.ENV_CERT_FILE: str(identity.cert), ks.ENV_KEY_FILE: str(identity.key)}
    sec = KafkaSecurity.from_env(env)
    assert sec.protocol == "SSL" and sec.secure
    kwargs = sec.client_kwargs()
    assert kwargs["security_protocol"] == "SSL"
    ctx = kwargs["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()]  # the bundle was loaded


def test_flags_override_env(identity, tmp_path):
    parser = argparse.ArgumentParser()
    ks.add_arguments(parser)
    password = tmp_path / "pw"
    password.write_text("s3cret\n")
    args = parser.parse_args(["--kafka-security-protocol", "sasl_ssl", "--kafka-sasl-mechanism", "scram-sha-512",
                              "--kafka-sasl-username", "alice", "--kafka-sasl-password-file", str(password)])
    sec = KafkaSecurity.from_args(args, {ks.ENV_PROTOCOL: "PLAINTEXT", ks.ENV_CA_FILE: str(identity.bundle)})
    assert (sec.protocol, sec.sasl_mechanism, sec.sasl_username, sec.sasl_password) == \
        ("SASL_SSL", "SCRAM-SHA-512", "alice", "s3cret")
    assert sec.ca_file == str(identity.bundle)
    kwargs = sec.client_kwargs()
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512" and kwargs["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(sec)


@pytest.mark.parametrize("env, names", [
    ({ks.ENV_PROTOCOL: "TLS"}, "MESHLOG_KAFKA_SECURITY_PROTOCOL"),
    ({ks.ENV_PROTOCOL: "SASL_PLAINTEXT"}, "MESHLOG_KAFKA_SECURITY_PROTOCOL"),
    ({ks.ENV_PROTOCOL: "PLAINTEXT", ks.ENV_CA_FILE: "/ca.pem"}, "MESHLOG_KAFKA_CA_FILE"),
    ({ks.ENV_CERT_FILE: "/c.pem"}, "MESHLOG_KAFKA_KEY_FILE"),
    ({ks.ENV_KEY_FILE: "/k.pem"}, "MESHLOG_KAFKA_CERT_FILE"),
    ({ks.ENV_PROTOCOL: "SSL", ks.ENV_SASL_USERNAME: "u"}, "MESHLOG_KAFKA_SASL_USERNAME"),
    ({ks.ENV_SASL_USERNAME: "u", ks.ENV_SASL_PASSWORD: "p"}, "MESHLOG_KAFKA_SASL_MECHANISM"),
    ({ks.ENV_SASL_MECHANISM: "PLAIN", ks.ENV_SASL_USERNAME: "u", ks.ENV_SASL_PASSWORD: "p"}, "MESHLOG_KAFKA_SASL_MECHANISM"),
    ({ks.ENV_SASL_MECHANISM: "SCRAM-SHA-256", ks.ENV_SASL_USERNAME: "u"}, "MESHLOG_KAFKA_SASL_PASSWORD"),
    ({ks.ENV_SASL_MECHANISM: "SCRAM-SHA-256", ks.ENV_SASL_USERNAME: "u", ks.ENV_SASL_PASSWORD_FILE: "/nope/pw"},
     "MESHLOG_KAFKA_SASL_PASSWORD_FILE"),
])
def test_bad_combinations_name_the_setting(env, names):
    with pytest.raises(KafkaSecurityError, match=names):
        KafkaSecurity.from_env(env)


def test_password_never_in_an_error():
    with pytest.raises(KafkaSecurityError) as err:
        KafkaSecurity.from_env({ks.ENV_SASL_MECHANISM: "MD5", ks.ENV_SASL_USERNAME: "u", ks.ENV_SASL_PASSWORD: "hunter2"})
    assert "hunter2" not in str(err.value)


def test_unreadable_tls_files_name_the_setting(tmp_path, identity):
    with pytest.raises(KafkaSecurityError, match="MESHLOG_KAFKA_CA_FILE"):
        KafkaSecurity(protocol="SSL", ca_file=str(tmp_path / "missing.pem")).client_kwargs()
    with pytest.raises(KafkaSecurityError, match="MESHLOG_KAFKA_CERT_FILE"):
        KafkaSecurity(protocol="SSL", ca_file=str(identity.bundle), cert_file=str(identity.cert),
                      key_file=str(identity.bundle)).client_kwargs()  # not the certificate's key


def test_a_garbage_value_is_bounded_in_the_message():
    with pytest.raises(KafkaSecurityError) as err:
        KafkaSecurity.from_env({ks.ENV_PROTOCOL: "X" * 10_000})
    assert len(str(err.value)) < 500


@pytest.mark.parametrize("bootstrap, loopback", [
    ("127.0.0.1:9092", True), ("localhost:9092", True), ("[::1]:9092", True), ("127.0.0.1:1,localhost:2", True),
    ("10.0.0.5:9092", False), ("kafka:9092", False), ("127.0.0.1:1,kafka:2", False), ("", False),
])
def test_loopback(bootstrap, loopback):
    assert ks.is_loopback(bootstrap) is loopback


def test_plaintext_off_loopback_warns_once(caplog):
    caplog.set_level(logging.WARNING, logger="events.kafka_security")
    ks.connection_kwargs("127.0.0.1:9092", KafkaSecurity())
    assert not caplog.records
    for _ in range(3):
        ks.connection_kwargs("kafka-warn-test:9092", KafkaSecurity())
    warnings = [r for r in caplog.records if "PLAINTEXT" in r.getMessage()]
    assert len(warnings) == 1 and "kafka-warn-test:9092" in warnings[0].getMessage()


def test_configured_settings_win_over_the_environment(monkeypatch, identity):
    monkeypatch.setenv(ks.ENV_PROTOCOL, "PLAINTEXT")
    sec = KafkaSecurity(protocol="SSL", ca_file=str(identity.bundle))
    ks.configure(sec)
    try:
        assert ks.current() is sec
        assert ks.connection_kwargs("h:1")["security_protocol"] == "SSL"
    finally:
        ks.configure(None)
    assert ks.current() == KafkaSecurity()


def test_to_env_round_trips(identity):
    sec = KafkaSecurity(protocol="SSL", ca_file=str(identity.bundle), cert_file=str(identity.cert),
                        key_file=str(identity.key))
    assert KafkaSecurity.from_env(ks.to_env(sec)) == sec


def test_no_kafka_client_skips_the_security_settings():
    """Every aiokafka client in the product, benches and tests gets bootstrap_servers only from connection_kwargs."""
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = [f for f in files if f != "events/kafka_security.py"
                 and re.search(r"\bbootstrap_servers\s*=", (ROOT / f).read_text())]
    assert offenders == []


@pytest.mark.parametrize("main, argv", [
    ("registrar.cli", ["--kafka-security-protocol", "tls", "publish", "--service", "a", "--instance-id", "b",
                       "--address", "10.0.0.1", "--port", "80"]),
    ("projector.cli", ["run", "--data-dir", "/tmp/x", "--kafka-cert-file", "/tmp/c.pem"]),
    ("xds_gateway.cli", ["run", "--kafka-sasl-username", "u", "--kafka-security-protocol", "SSL"]),
    ("replay.cli", ["at", "--at", "now", "--kafka-ca-file", "/nonexistent/ca.pem"]),
    ("proxy.cli", ["run", "--service", "s", "--instance-id", "i", "--app-port", "1", "--inbound-port", "2", "--outbound-port", "3",
                   "--gateway", "127.0.0.1:1", "--kafka-key-file", "/k.pem"]),
    ("meshlog.cli", ["topics", "ensure", "--kafka-security-protocol", "SSL", "--kafka-ca-file", "/nonexistent/ca.pem"]),
])
def test_every_cli_takes_the_flags_and_exits_2_naming_the_setting(main, argv, capsys):
    import importlib

    module = importlib.import_module(main)
    try:
        code = module.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert "MESHLOG_KAFKA_" in err and "--kafka-" in err
