"""identity.renewal for every role: the generic loop over plain files, and which files ``--ca-url`` renews."""

from __future__ import annotations

import argparse
import asyncio
from datetime import timedelta

import pytest

from events import kafka_security
from events.kafka_security import KafkaSecurity
from identity import pki, renewal, renewal_cli, spiffe
from tests.support.trust import MeshCA
from tests.unit.proxy.test_renewal import FakeCa

D = "mesh.test"


@pytest.fixture
def projector(tmp_path):
    ca = MeshCA(D, tmp_path / "ca")
    ident = ca.issue(spiffe.SpiffeId.of(D, "projector"), "projector")
    return ca, pki.IdentityFiles(ident.cert, ident.key, ident.ca)


@pytest.fixture
def no_kafka_identity():
    kafka_security.configure(KafkaSecurity())
    yield
    kafka_security.configure(None)


def test_a_control_plane_renewal_writes_a_matching_pair_over_its_files(projector):
    ca, files = projector
    first = pki.cert_from_pem(files.cert.read_bytes())
    renewer = renewal.CertificateRenewer("https://ca:8443", files, renew=FakeCa(ca, timedelta(hours=1)).renew)
    assert asyncio.run(renewer.attempt())
    new = pki.cert_from_pem(files.cert.read_bytes())
    assert new.serial_number != first.serial_number and pki.spiffe_id_of(new) == pki.spiffe_id_of(first)
    assert pki.key_from_pem(files.key.read_bytes()).public_key().public_numbers() == new.public_key().public_numbers()
    assert renewer.next_at == pki.renewal_due(new) and renewer.renewals == 1


def test_ca_url_renews_the_xds_files_and_the_kafka_certificate_once_each(projector, tmp_path, no_kafka_identity):
    ca, files = projector
    args = argparse.Namespace(ca_url="https://ca.mesh:8443")
    assert renewal_cli.renewers_from_args(argparse.Namespace(ca_url=None), "gateway", files, environ={}) == []
    [only_tls] = renewal_cli.renewers_from_args(args, "gateway", files, environ={})
    assert only_tls.files == files and only_tls.url == "https://ca.mesh:8443"

    # the same files for Kafka: renewed once
    kafka_security.configure(KafkaSecurity(protocol="SSL", ca_file=str(files.bundle), cert_file=str(files.cert),
                                           key_file=str(files.key)))
    assert [r.files.cert for r in renewal_cli.renewers_from_args(args, "gateway", files, environ={})] == [files.cert]
    # another Kafka identity: both
    other = ca.issue(spiffe.SpiffeId.of(D, "gateway", "g1"), "kafka-g1")
    kafka_security.configure(KafkaSecurity(protocol="SSL", ca_file=str(other.ca), cert_file=str(other.cert),
                                           key_file=str(other.key)))
    both = renewal_cli.renewers_from_args(args, "gateway", files, environ={})
    assert [r.files.cert for r in both] == [files.cert, other.cert]
    # a projector has only its Kafka certificate; the URL may come from the environment
    [kafka_only] = renewal_cli.renewers_from_args(argparse.Namespace(ca_url=None), "projector", None,
                                                  environ={renewal_cli.CA_URL_ENV: "https://ca:1"})
    assert kafka_only.files.cert == other.cert


def test_ca_url_without_a_certificate_or_over_http_is_a_usage_error(no_kafka_identity):
    with pytest.raises(renewal_cli.RenewalUsageError, match="--ca-url.*no certificate to renew"):
        renewal_cli.renewers_from_args(argparse.Namespace(ca_url="https://ca:8443"), "checker", None, environ={})
    with pytest.raises(renewal_cli.RenewalUsageError, match="--ca-url.*https"):
        renewal_cli.renewers_from_args(argparse.Namespace(ca_url="http://ca:8443"), "checker", None, environ={})


def test_each_long_running_role_takes_ca_url():
    from projector.cli import build_parser as projector_parser
    from registrar.cli import build_parser as registrar_parser
    from xds_gateway.cli import build_parser as gateway_parser

    assert projector_parser().parse_args(["run", "--data-dir", "d", "--ca-url", "https://c:1"]).ca_url
    assert gateway_parser().parse_args(["run", "--ca-url", "https://c:1"]).ca_url
    assert registrar_parser().parse_args(["healthcheck", "--ca-url", "https://c:1"]).ca_url


@pytest.mark.parametrize("argv", [["run", "--data-dir", "DIR", "--ca-url", "https://ca:8443"],
                                  ["run", "--data-dir", "DIR", "--ca-url", "ftp://ca"]])
def test_projector_run_refuses_a_ca_url_it_cannot_use_before_starting(argv, tmp_path, capsys, monkeypatch):
    from projector import cli

    for var in ("MESHLOG_KAFKA_CERT_FILE", "MESHLOG_KAFKA_KEY_FILE", "MESHLOG_KAFKA_CA_FILE",
                "MESHLOG_KAFKA_SECURITY_PROTOCOL"):
        monkeypatch.delenv(var, raising=False)
    argv = [a.replace("DIR", str(tmp_path / "data")) for a in argv]
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "--ca-url" in capsys.readouterr().err and not (tmp_path / "data").exists()
    kafka_security.configure(None)


def test_an_unreadable_certificate_file_is_said_once_and_the_loop_goes_on(projector, caplog, monkeypatch):
    ca, files = projector
    good = files.cert.read_bytes()
    files.cert.write_bytes(b"not a certificate")
    monkeypatch.setattr(renewal, "POLL_S", 0.01)
    renewer = renewal.CertificateRenewer("https://ca:8443", files, renew=FakeCa(ca, timedelta(hours=1)).renew)

    async def scenario():
        task = asyncio.create_task(renewer.run())
        await asyncio.sleep(0.1)
        assert not task.done()  # still looking
        files.cert.write_bytes(good)
        await asyncio.sleep(0.1)
        assert not task.done() and renewer.status()["serial"] is not None  # follows the certificate again
        task.cancel()

    asyncio.run(scenario())
    assert len([r for r in caplog.records if "cannot read" in r.getMessage()]) == 1
