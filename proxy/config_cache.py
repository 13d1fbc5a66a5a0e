"""The sidecar's on-disk configuration cache, and the static bootstrap built from it.

What is cached is what Envoy *accepted*: the dynamic (xDS-delivered) resources
in its admin ``/config_dump?include_eds`` — active clusters, their endpoint
assignments, active listeners and route configurations — never what a gateway
merely sent. A cache document is plain JSON::

    {"format": 1, "node_id": ..., "saved_at": ISO-8601 UTC,
     "versions": {"clusters": {name: version}, "endpoints": ..., "listeners": ..., "routes": ...},
     "clusters": [Cluster], "endpoints": [ClusterLoadAssignment],
     "listeners": [Listener], "routes": [RouteConfiguration]}

(each resource in Envoy's proto3 JSON form, without its top-level ``@type``).

``static_bootstrap`` turns a cache document into an Envoy bootstrap that needs
no control plane: every EDS cluster becomes STATIC with the cached endpoints
inline (``load_assignment``, health statuses kept), every HTTP connection
manager that used RDS carries the cached route configuration inline
(``route_config``). Cluster, listener and route names are unchanged, so the
listeners bind the same addresses and a hot restart into ADS mode hands their
sockets over.

Invariants:
- Everything here except ``save``/``load`` is pure (dict in, dict out; inputs
  are never modified).
- ``save`` is atomic: a temp file in the same directory, fsync, rename, fsync
  of the directory. A reader sees the old document or the new one, never half.
- ``load`` returns None (and says why) for a missing, unreadable or malformed
  file; it never raises for bad content.
"""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from events.files import write_file_atomic

FORMAT = 1
CACHE_FILE = "envoy-config.json"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
KINDS = ("clusters", "endpoints", "listeners", "routes")


class CacheError(ValueError):
    """A cache document that cannot be turned into a bootstrap."""


def _strip_type(resource: dict) -> dict:
    out = copy.deepcopy(resource)
    out.pop("@type", None)
    return out


def dynamic_resources(dump: dict) -> dict[str, list[dict]]:
    """The dynamic resources Envoy holds, from a ``/config_dump?include_eds`` document.

    Only active clusters and listeners (a warming one has not been accepted
    yet). Endpoint assignments are taken for the dynamic (EDS) clusters only;
    the static ones already carry theirs.
    """
    out: dict[str, list[dict]] = {k: [] for k in KINDS}
    for config in dump.get("configs", []):
        kind = config.get("@type", "")
        if kind.endswith("ClustersConfigDump"):
            out["clusters"] += [_strip_type(c["cluster"]) for c in config.get("dynamic_active_clusters", [])]
        elif kind.endswith("EndpointsConfigDump"):
            out["endpoints"] += [_strip_type(e["endpoint_config"]) for e in config.get("dynamic_endpoint_configs", [])]
        elif kind.endswith("ListenersConfigDump"):
            for listener in config.get("dynamic_listeners", []):
                active = listener.get("active_state")
                if active and "listener" in active:
                    out["listeners"].append(_strip_type(active["listener"]))
        elif kind.endswith("RoutesConfigDump"):
            out["routes"] += [_strip_type(r["route_config"]) for r in config.get("dynamic_route_configs", [])]
    for k in KINDS:
        out[k].sort(key=lambda r: r.get("name") or r.get("cluster_name") or "")
    return out


def _hcms(listener: dict):
    """Every HTTP connection manager config inside a listener (all filter chains)."""
    chains = list(listener.get("filter_chains", []))
    if "default_filter_chain" in listener:
        chains.append(listener["default_filter_chain"])
    for chain in chains:
        for f in chain.get("filters", []):
            typed = f.get("typed_config") or {}
            if typed.get("@type") == HCM_TYPE:
                yield typed


def missing_parts(resources: dict[str, list[dict]]) -> list[str]:
    """What a bootstrap from these resources would lack: RDS routes and EDS assignments not held."""
    routes = {r.get("name") for r in resources.get("routes", [])}
    assignments = {e.get("cluster_name") for e in resources.get("endpoints", [])}
    problems = []
    for listener in resources.get("listeners", []):
        for hcm in _hcms(listener):
            rds = hcm.get("rds")
            if rds and rds.get("route_config_name") not in routes:
                problems.append(f"listener {listener.get('name')!r}: route {rds.get('route_config_name')!r} not held")
    for cluster in resources.get("clusters", []):
        if cluster.get("type") == "EDS" and _eds_name(cluster) not in assignments:
            problems.append(f"cluster {cluster.get('name')!r}: no endpoints held")
    return problems


def _eds_name(cluster: dict) -> str:
    return (cluster.get("eds_cluster_config") or {}).get("service_name") or cluster.get("name", "")


def cache_document(dump: dict, node_id: str, versions: dict[str, dict[str, str]], now: datetime | None = None) -> dict:
    doc: dict[str, Any] = {
        "format": FORMAT,
        "node_id": node_id,
        "saved_at": (now or datetime.now(timezone.utc)).isoformat(timespec="milliseconds"),
        "versions": versions,
    }
    doc.update(dynamic_resources(dump))
    return doc


def content_key(doc: dict) -> str:
    """A digest of the resources alone (not of when they were saved).

    Envoy reports an empty ``version_info`` for EDS assignments received over
    delta ADS, so versions alone would miss an endpoint change.
    """
    body = json.dumps({k: doc.get(k) for k in KINDS}, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(body).hexdigest()


def worth_saving(doc: dict) -> bool:
    """A document a proxy could serve from: at least one listener, every RDS route present."""
    if not doc.get("listeners"):
        return False
    return not any("route" in p for p in missing_parts(doc))


def static_bootstrap(doc: dict, *, node_id: str, node_cluster: str, admin_port: int,
                     locality_zone: str | None = None) -> tuple[dict, list[str]]:
    """A control-plane-free Envoy bootstrap from a cache document, and the problems met (not fatal).

    Raises CacheError only for a document that is not a cache document at all.
    """
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CacheError(f"not a meshlog sidecar cache document (format {doc.get('format') if isinstance(doc, dict) else None!r})")
    for k in KINDS:
        if not isinstance(doc.get(k), list):
            raise CacheError(f"cache document has no {k!r} list")
    problems: list[str] = []
    assignments = {e.get("cluster_name"): e for e in doc["endpoints"]}
    routes = {r.get("name"): r for r in doc["routes"]}

    clusters = []
    for original in doc["clusters"]:
        cluster = _strip_type(original)
        if cluster.get("type") == "EDS":
            cla = assignments.get(_eds_name(cluster))
            cluster.pop("eds_cluster_config", None)
            cluster["type"] = "STATIC"
            if cla is None:
                problems.append(f"cluster {cluster['name']!r}: no cached endpoints; served with none")
                cla = {}
            cla = _strip_type(cla)
            cla["cluster_name"] = cluster["name"]
            cluster["load_assignment"] = cla
        elif "cluster_type" in cluster or cluster.get("type") not in (None, "STATIC", "STRICT_DNS", "LOGICAL_DNS"):
            problems.append(f"cluster {cluster.get('name')!r}: discovery type not supported from cache; left out")
            continue
        clusters.append(cluster)

    listeners = []
    for original in doc["listeners"]:
        listener = _strip_type(original)
        for hcm in _hcms(listener):
            rds = hcm.pop("rds", None)
            if rds is None:
                continue
            name = rds.get("route_config_name", "")
            route = routes.get(name)
            if route is None:
                problems.append(f"listener {listener.get('name')!r}: route {name!r} not cached; every request gets 404")
                route = {"name": name}
            hcm["route_config"] = _strip_type(route)
        if any("scoped_routes" in hcm for hcm in _hcms(listener)):
            problems.append(f"listener {listener.get('name')!r}: scoped routes not supported from cache; left out")
            continue
        listeners.append(listener)

    node: dict[str, Any] = {"id": node_id, "cluster": node_cluster}
    if locality_zone:
        node["locality"] = {"zone": locality_zone}
    bootstrap = {
        "node": node,
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"clusters": clusters, "listeners": listeners},
    }
    return bootstrap, problems


# ---------------------------------------------------------------- disk


def save(path: Path, doc: dict) -> None:
    """Write ``doc`` to ``path`` atomically (temp file, fsync, rename, fsync the directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    write_file_atomic(path, data, 0o600)


def load(path: Path) -> tuple[dict | None, str]:
    """(document, "") or (None, why not)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None, f"no cache at {path}"
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror}"
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return None, f"{path} is not JSON: {exc}"
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not all(isinstance(doc.get(k), list) for k in KINDS):
        return None, f"{path} is not a meshlog sidecar cache (format {FORMAT})"
    return doc, ""
