"""Config dump -> cache document -> static bootstrap, on a real Envoy 1.40 config dump.

The fixture ``fixtures/config_dump_ads.json`` is ``/config_dump?include_eds``
of a sidecar Envoy in ADS mode (node ``cli-c1`` depending on ``srv``, with a
DestinationPolicy v1/v2 and a RouteRule 90/10), captured from a real run; only
the bootstrap's ``node.extensions`` list (80 KB of build metadata) was removed.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest

from proxy import config_cache as cc
from proxy.envoy_process import dynamic_names, envoy_binary

FIXTURE = Path(__file__).parent / "fixtures" / "config_dump_ads.json"
NODE = "cli-c1"


@pytest.fixture(scope="module")
def dump() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture
def doc(dump) -> dict:
    return cc.cache_document(dump, NODE, dynamic_names(dump))


def _by_name(items, key="name"):
    return {i[key]: i for i in items}


def test_the_dynamic_resources_are_extracted_without_the_static_ones(dump):
    res = cc.dynamic_resources(dump)
    assert [c["name"] for c in res["clusters"]] == ["cli-c1~local", "srv", "srv|v1", "srv|v2"]
    assert "meshlog_xds" not in {c["name"] for c in res["clusters"]}  # the bootstrap's static xDS cluster
    assert {e["cluster_name"] for e in res["endpoints"]} >= {"srv", "srv|v1", "srv|v2"}
    assert [l["name"] for l in res["listeners"]] == ["cli-c1~inbound", "cli-c1~outbound"]
    assert [r["name"] for r in res["routes"]] == ["cli-c1~outbound"]
    for kind in cc.KINDS:
        assert all("@type" not in r for r in res[kind])


def test_static_bootstrap_inlines_endpoints_and_routes(doc):
    original = copy.deepcopy(doc)
    boot, problems = cc.static_bootstrap(doc, node_id=NODE, node_cluster="cli", admin_port=9901)
    assert problems == []
    assert doc == original  # pure: the input is not modified
    assert "dynamic_resources" not in boot
    assert boot["node"] == {"id": NODE, "cluster": "cli"}
    assert boot["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}

    clusters = _by_name(boot["static_resources"]["clusters"])
    assert set(clusters) == {"cli-c1~local", "srv", "srv|v1", "srv|v2"}
    cached_cla = _by_name(doc["endpoints"], "cluster_name")
    for name in ("srv", "srv|v1", "srv|v2"):
        c = clusters[name]
        assert c["type"] == "STATIC" and "eds_cluster_config" not in c
        assert c["load_assignment"]["cluster_name"] == name
        assert c["load_assignment"]["endpoints"] == cached_cla[name]["endpoints"]
    assert clusters["cli-c1~local"] == _by_name(doc["clusters"])["cli-c1~local"]  # already static: unchanged

    listeners = _by_name(boot["static_resources"]["listeners"])
    hcm = listeners["cli-c1~outbound"]["filter_chains"][0]["filters"][0]["typed_config"]
    assert "rds" not in hcm
    assert hcm["route_config"] == _by_name(doc["routes"])["cli-c1~outbound"]
    weighted = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["weighted_clusters"]["clusters"]
    assert [(w["name"], w["weight"]) for w in weighted] == [("srv|v1", 90), ("srv|v2", 10)]
    # the inbound listener had its route inline already; same bind address as before
    assert listeners["cli-c1~inbound"] == _by_name(doc["listeners"])["cli-c1~inbound"]
    for listener in listeners.values():
        assert listener["address"] == _by_name(doc["listeners"])[listener["name"]]["address"]


def test_health_statuses_survive_the_conversion(doc):
    doc = copy.deepcopy(doc)
    cla = _by_name(doc["endpoints"], "cluster_name")["srv"]
    cla["endpoints"][0]["lb_endpoints"][0]["health_status"] = "UNHEALTHY"
    boot, _ = cc.static_bootstrap(doc, node_id=NODE, node_cluster="cli", admin_port=9901)
    srv = _by_name(boot["static_resources"]["clusters"])["srv"]
    assert srv["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["health_status"] == "UNHEALTHY"


def test_missing_pieces_are_reported_and_served_empty(doc):
    doc = copy.deepcopy(doc)
    doc["routes"] = []
    doc["endpoints"] = [e for e in doc["endpoints"] if e["cluster_name"] != "srv|v2"]
    boot, problems = cc.static_bootstrap(doc, node_id=NODE, node_cluster="cli", admin_port=9901)
    assert any("srv|v2" in p and "no cached endpoints" in p for p in problems)
    assert any("cli-c1~outbound" in p and "404" in p for p in problems)
    clusters = _by_name(boot["static_resources"]["clusters"])
    assert clusters["srv|v2"]["load_assignment"] == {"cluster_name": "srv|v2"}
    hcm = _by_name(boot["static_resources"]["listeners"])["cli-c1~outbound"]["filter_chains"][0]["filters"][0][
        "typed_config"]
    assert hcm["route_config"] == {"name": "cli-c1~outbound"}
    assert not cc.worth_saving(doc)  # a listener without its route is not a configuration to cache


def test_unsupported_cluster_types_are_left_out(doc):
    doc = copy.deepcopy(doc)
    doc["clusters"].append({"name": "odd", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED"})
    boot, problems = cc.static_bootstrap(doc, node_id=NODE, node_cluster="cli", admin_port=9901)
    assert "odd" not in _by_name(boot["static_resources"]["clusters"])
    assert any("'odd'" in p for p in problems)


def test_not_a_cache_document_is_refused(doc):
    with pytest.raises(cc.CacheError):
        cc.static_bootstrap({"format": 99}, node_id=NODE, node_cluster="cli", admin_port=1)
    bad = dict(doc, listeners=None)
    with pytest.raises(cc.CacheError):
        cc.static_bootstrap(bad, node_id=NODE, node_cluster="cli", admin_port=1)


def test_worth_saving_and_content_key(doc, dump):
    assert cc.worth_saving(doc)
    assert not cc.worth_saving(dict(doc, listeners=[]))
    later = cc.cache_document(dump, NODE, dynamic_names(dump))
    later["saved_at"] = "2099-01-01T00:00:00.000+00:00"
    assert cc.content_key(later) == cc.content_key(doc)  # when it was saved is not content
    changed = copy.deepcopy(doc)
    _by_name(changed["endpoints"], "cluster_name")["srv"]["endpoints"][0]["lb_endpoints"][0]["health_status"] = "DRAINING"
    assert cc.content_key(changed) != cc.content_key(doc)  # an endpoint change with no version change is seen


def test_save_is_atomic_and_load_round_trips(doc, tmp_path):
    path = tmp_path / "sub" / cc.CACHE_FILE
    cc.save(path, doc)
    loaded, why = cc.load(path)
    assert why == "" and loaded == doc
    assert [p.name for p in path.parent.iterdir()] == [cc.CACHE_FILE]  # no temp file left behind
    cc.save(path, dict(doc, saved_at="again"))
    assert cc.load(path)[0]["saved_at"] == "again"


@pytest.mark.parametrize("content, expect", [
    (None, "no cache"),
    ("{not json", "not JSON"),
    ('{"format": 1}', "not a meshlog sidecar cache"),
    ("[]", "not a meshlog sidecar cache"),
])
def test_load_explains_what_is_wrong(tmp_path, content, expect):
    path = tmp_path / cc.CACHE_FILE
    if content is not None:
        path.write_text(content)
    doc, why = cc.load(path)
    assert doc is None and expect in why


@pytest.mark.envoy
def test_real_envoy_accepts_the_static_bootstrap(doc, tmp_path):
    boot, problems = cc.static_bootstrap(doc, node_id=NODE, node_cluster="cli", admin_port=9901)
    assert problems == []
    config = tmp_path / "static.json"
    config.write_text(json.dumps(boot))
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(config), "--disable-hot-restart",
                             "--log-level", "error"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
