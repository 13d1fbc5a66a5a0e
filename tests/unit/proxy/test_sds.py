"""The sidecar's workload certificate as file-watched SDS secrets for Envoy's mTLS to the gateways."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from events.files import write_file_atomic
from identity import spiffe
from proxy import sds
from proxy.bootstrap import XDS_CLUSTER, envoy_bootstrap
from tests.support.trust import MeshCA
from tests.unit.proxy.test_bootstrap import _envoy

D = "mesh.test"


@pytest.fixture
def ca(tmp_path):
    return MeshCA(D, tmp_path / "ca")


@pytest.fixture
def ident(ca):
    return ca.issue(spiffe.sidecar(D, "web", "w1"), "web-w1")


def test_the_secrets_inline_the_pair_and_the_bundle(ident, tmp_path):
    files = sds.SidecarTls(ident.cert, ident.key, ident.ca)
    m = sds.load_tls(files)
    assert m.identity == spiffe.sidecar(D, "web", "w1")
    d = tmp_path / "sds"
    sds.write_secrets(d, m)
    workload = json.loads((d / sds.WORKLOAD_FILE).read_text())["resources"][0]
    assert workload["name"] == sds.WORKLOAD_SECRET and workload["@type"] == sds.SECRET_TYPE
    assert workload["tls_certificate"]["certificate_chain"]["inline_string"] == ident.cert_pem.decode()
    assert workload["tls_certificate"]["private_key"]["inline_string"] == ident.key_pem.decode()
    trust = json.loads((d / sds.TRUST_FILE).read_text())["resources"][0]
    assert trust["validation_context"]["trusted_ca"]["inline_string"] == ident.ca_pem.decode()
    assert stat.S_IMODE((d / sds.WORKLOAD_FILE).stat().st_mode) == 0o600


def test_the_upstream_context_accepts_only_gateway_ids_of_the_domain(tmp_path):
    ctx = sds.upstream_tls_context(tmp_path, D)["typed_config"]["common_tls_context"]
    [matcher] = ctx["combined_validation_context"]["default_validation_context"]["match_typed_subject_alt_names"]
    assert matcher == {"san_type": "URI", "matcher": {"prefix": "spiffe://mesh.test/gateway/"}}
    [cert] = ctx["tls_certificate_sds_secret_configs"]
    assert cert["sds_config"]["path_config_source"] == {
        "path": str(tmp_path / sds.WORKLOAD_FILE), "watched_directory": {"path": str(tmp_path)}}


def test_a_renewal_is_written_once_both_files_match(ca, ident, tmp_path):
    files = sds.SidecarTls(ident.cert, ident.key, ident.ca)
    sync = sds.SecretSync(files, tmp_path / "sds", sds.load_tls(files))
    sync.start()
    assert not sync.check()  # nothing changed
    renewed = ca.issue(spiffe.sidecar(D, "web", "w1"), "renewed")
    write_file_atomic(ident.cert, renewed.cert_pem)  # the certificate first: its key is not there yet
    first = sync.current.cert_pem
    assert not sync.check() and sync.current.cert_pem == first
    write_file_atomic(ident.key, renewed.key_pem, 0o600)
    assert sync.check() and sync.renewals == 1
    doc = json.loads((tmp_path / "sds" / sds.WORKLOAD_FILE).read_text())
    assert doc["resources"][0]["tls_certificate"]["certificate_chain"]["inline_string"] == renewed.cert_pem.decode()


def test_a_certificate_of_another_identity_is_not_handed_to_envoy(ca, ident, tmp_path):
    files = sds.SidecarTls(ident.cert, ident.key, ident.ca)
    sync = sds.SecretSync(files, tmp_path / "sds", sds.load_tls(files))
    sync.start()
    other = ca.issue(spiffe.sidecar(D, "web", "w2"), "other")
    write_file_atomic(ident.key, other.key_pem, 0o600)
    write_file_atomic(ident.cert, other.cert_pem)
    assert not sync.check() and sync.current.identity == spiffe.sidecar(D, "web", "w1")


@pytest.mark.envoy
def test_real_envoy_validates_the_mtls_bootstrap(ident, tmp_path: Path):
    files = sds.SidecarTls(ident.cert, ident.key, ident.ca)
    d = tmp_path / "sds"
    sds.write_secrets(d, sds.load_tls(files))
    b = envoy_bootstrap(node_id="web-w1", node_cluster="web", gateways=["127.0.0.1:18000"], admin_port=9901,
                        upstream_tls=sds.upstream_tls_context(d, D))
    [xds] = b["static_resources"]["clusters"]
    assert xds["name"] == XDS_CLUSTER and xds["transport_socket"]["name"] == "envoy.transport_sockets.tls"
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(b))
    proc = subprocess.run([_envoy(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
                          capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "OK" in out, out
    assert "Deprecated field" not in out, out
