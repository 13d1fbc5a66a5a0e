"""`xds-gateway run`'s trust and limit flags: refused before anything starts (exit 2), naming the flag."""

from __future__ import annotations

import logging

import pytest

from identity import spiffe
from tests.support.trust import MeshCA
from xds_gateway import cli
from xds_gateway.authz import Decision
from xds_gateway.guard import TrustGuard


@pytest.fixture(autouse=True)
def _no_tls_env(monkeypatch):
    for name in ("MESHLOG_XDS_TLS_CERT", "MESHLOG_XDS_TLS_KEY", "MESHLOG_XDS_TLS_CA"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("argv, message", [
    ([], "--tls-cert, --tls-key, --tls-ca missing"),
    (["--insecure", "--tls-cert", "x"], "--insecure and --tls-* contradict"),
    (["--tls-cert", "/nonexistent", "--tls-key", "/k", "--tls-ca", "/c"], "--tls-cert '/nonexistent'"),
    (["--insecure", "--max-pending-nonces", "0"], "argument --max-pending-nonces: 0 is not between 1"),
    (["--insecure", "--max-names-per-subscription", "0"], "argument --max-names-per-subscription: 0 is not between 1"),
    (["--insecure", "--max-streams-per-connection", "-1"], "argument --max-streams-per-connection: -1 is not between 1"),
])
def test_bad_trust_or_limit_flags_exit_2_naming_the_flag(argv, message, capsys):
    try:
        code = cli.main(["run", "--bootstrap", "127.0.0.1:1", *argv])
    except SystemExit as exc:  # argparse's own range checks (meshlog.argtypes)
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path, capsys):
    ca = MeshCA("mesh.test", tmp_path / "ca")
    a = ca.issue(spiffe.gateway("mesh.test", "a"), "a")
    b = ca.issue(spiffe.gateway("mesh.test", "b"), "b")
    assert cli.main(["run", "--bootstrap", "127.0.0.1:1", "--tls-cert", str(a.cert), "--tls-key", str(b.key),
                     "--tls-ca", str(a.ca)]) == 2
    assert "is not the key of --tls-cert" in capsys.readouterr().err


def test_the_tls_files_come_from_the_environment(tmp_path, monkeypatch):
    ca = MeshCA("mesh.test", tmp_path / "ca")
    a = ca.issue(spiffe.gateway("mesh.test", "a"), "a")
    monkeypatch.setenv("MESHLOG_XDS_TLS_CERT", str(a.cert))
    monkeypatch.setenv("MESHLOG_XDS_TLS_KEY", str(a.key))
    monkeypatch.setenv("MESHLOG_XDS_TLS_CA", str(a.ca))
    args = cli.build_parser().parse_args(["run"])
    files = cli.tls_files_from(args)
    assert files is not None and files.cert == a.cert


def test_a_refusal_is_logged_once_per_identity_and_node_and_counted_each_time(caplog):
    from xds_gateway import metrics

    guard = TrustGuard("mesh.test")
    denied = Decision("deny", "not_owner", "spiffe://mesh.test/sidecar/web/web-2 asked for node 'web-1'")
    before = metrics.REFUSED.labels("not_owner")._value.get()
    with caplog.at_level(logging.WARNING, logger="xds_gateway.guard"):
        for _ in range(3):
            guard.refused(denied, "spiffe://mesh.test/sidecar/web/web-2", "web-1")
        guard.refused(denied, "spiffe://mesh.test/sidecar/web/web-2", "web-3")
    assert metrics.REFUSED.labels("not_owner")._value.get() == before + 4
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 2


def test_the_set_of_logged_pairs_is_bounded():
    guard = TrustGuard("mesh.test", remember_logged=3)
    for i in range(10):
        guard.refused(Decision("deny", "not_owner", "x"), "who", f"node-{i}")
    assert len(guard._logged) == 3
