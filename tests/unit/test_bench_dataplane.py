"""bench/dataplane.py and bench/dataplane_instructions.py measure the real thing (issue 13, data-plane target).

The instruction-count bench builds its Envoys from the projector's own builders: its mTLS server hop has
the rendered DownstreamTlsContext and the RBAC filter with the per-route policy admitting exactly the caller, its client cluster the
rendered UpstreamTlsContext, and real Envoy accepts both bootstraps. The latency bench interleaves its
paths in ABBA order.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from projector import mesh_tls
from tests.support.benches import bench_module

instr = bench_module("dataplane_instructions")
dataplane = bench_module("dataplane")


def _filters(bootstrap: dict) -> tuple[dict, list[str]]:
    [listener] = bootstrap["static_resources"]["listeners"]
    [chain] = listener["filter_chains"]
    hcm = chain["filters"][0]["typed_config"]
    return chain, [f["name"] for f in hcm["http_filters"]]


def test_the_mtls_server_hop_is_the_rendered_listener_with_tls_and_rbac_for_the_caller_only():
    bootstrap = instr.server_bootstrap(9901, 10000, 10001, tls=True)
    chain, filters = _filters(bootstrap)
    assert chain["transport_socket"]["typed_config"]["require_client_certificate"] is True
    assert filters == [mesh_tls.RBAC_HTTP_FILTER, "envoy.filters.http.router"]
    hcm = chain["filters"][0]["typed_config"]
    assert "policies" not in hcm["http_filters"][0]["typed_config"]["rules"]  # by itself it admits nobody
    [vhost] = hcm["route_config"]["virtual_hosts"]  # the rendered RDS routes, inline
    rbac = vhost["typed_per_filter_config"][mesh_tls.RBAC_HTTP_FILTER]["rbac"]
    principals = [p["authenticated"]["principal_name"]["prefix"]
                  for p in rbac["rules"]["policies"]["callers"]["principals"]]
    assert principals == list(mesh_tls.allowed_principals(instr.DOMAIN, [instr.CALLER], allow_mesh=False))
    assert mesh_tls.sidecar_prefix(instr.DOMAIN) not in principals  # the caller's service, not the whole mesh


def test_the_plaintext_hop_and_the_diagnostic_split_leave_out_what_they_say():
    chain, filters = _filters(instr.server_bootstrap(9901, 10000, 10001, tls=False))
    assert "transport_socket" not in chain and filters == ["envoy.filters.http.router"]
    chain, filters = _filters(instr.server_bootstrap(9901, 10000, 10001, tls=True, rbac=False))
    assert "transport_socket" in chain and filters == ["envoy.filters.http.router"]


def test_the_mtls_client_cluster_verifies_the_servers_spiffe_id():
    [cluster] = instr.client_bootstrap(9902, 10002, 10000, tls=True)["static_resources"]["clusters"]
    ctx = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    [san] = ctx["combined_validation_context"]["default_validation_context"]["match_typed_subject_alt_names"]
    assert san["matcher"]["prefix"] == mesh_tls.sidecar_prefix(instr.DOMAIN, instr.SERVICE)
    [plain] = instr.client_bootstrap(9902, 10002, 10000, tls=False)["static_resources"]["clusters"]
    assert "transport_socket" not in plain


@pytest.mark.envoy
@pytest.mark.parametrize("tls", [False, True])
def test_real_envoy_validates_both_hops(tmp_path: Path, tls: bool):
    instr._write_identities(tmp_path)
    for side, bootstrap in (("server", instr.server_bootstrap(9901, 10000, 10001, tls)),
                            ("client", instr.client_bootstrap(9902, 10002, 10000, tls))):
        (tmp_path / side).mkdir(exist_ok=True)
        (tmp_path / side / "envoy.json").write_text(json.dumps(bootstrap))
        proc = subprocess.run([instr._real_binary(), "--mode", "validate", "-c", "envoy.json", "--log-level", "warn"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path / side)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "OK" in out, out


def test_rounds_alternate_forward_and_backward():
    paths = ("direct", "sidecar", "mtls")
    assert [dataplane.round_order(paths, r) for r in range(4)] == [paths, paths[::-1], paths, paths[::-1]]
