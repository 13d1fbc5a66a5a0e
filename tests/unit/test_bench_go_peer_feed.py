"""bench/xds_fanout_go.py feeds the go-control-plane peer the same view records as the meshlog gateway.

The feed is what a Go control plane keeps of the projector's view records: every body,
each node's names for the snapshot types (endpoints come from a LinearCache shared by
all), and each change as only what moved. Checked on a small mesh the bench renders with
the projector's own fold and render; the Go peer itself is a bench (it needs Go, which
CI does not install).
"""

from __future__ import annotations

import argparse
import base64

import orjson
import pytest

from events.topics import VIEW_MEMBERSHIP, VIEW_RESOURCES
from projector.typeurls import CLUSTER, ENDPOINT
from tests.support.benches import bench_module

xds_fanout = bench_module("xds_fanout")
_go_feed = bench_module("xds_fanout_go")
FeedBuilder, peer_feed = _go_feed.FeedBuilder, _go_feed.peer_feed


def _mesh():
    p = argparse.ArgumentParser()
    xds_fanout.add_mesh_arguments(p)
    args = p.parse_args(["--services", "6", "--instances", "2", "--deps", "2", "--hot", "5"])
    args.changes, args.profile_changes, args.churn_batches, args.churn_services = 2, 0, 1, 2
    return xds_fanout.Mesh(args)


MESH = _mesh()


def _membership(rows) -> dict[str, dict[str, dict[str, str]]]:
    return {k.decode(): orjson.loads(v)["resources"] for t, k, v, _h in rows if t == VIEW_MEMBERSHIP}


def test_the_initial_feed_holds_every_body_and_each_nodes_snapshot_names_without_endpoints():
    feed = peer_feed(MESH.initial, [], [])
    bodies = {(b["type"], b["name"]): base64.b64decode(b["body"]) for b in feed["bodies"]}
    assert bodies == {tuple(k.decode().split("|", 1)): v for t, k, v, _h in MESH.initial if t == VIEW_RESOURCES}
    members = _membership(MESH.initial)
    assert feed["nodes"].keys() == members.keys()
    for node, names in feed["nodes"].items():
        assert names == {t: sorted(ns) for t, ns in members[node].items() if t != ENDPOINT}


def test_a_hot_change_is_its_one_endpoint_body_and_no_snapshot():
    fb = FeedBuilder()
    fb.batch(MESH.initial)
    change = fb.batch(MESH.hot_changes[0][0])
    assert [(b["type"], b["name"]) for b in change["bodies"]] == [(ENDPOINT, xds_fanout.HOT)]
    new_body = next(v for t, k, v, _h in MESH.hot_changes[0][0] if t == VIEW_RESOURCES)
    assert base64.b64decode(change["bodies"][0]["body"]) == new_body
    assert change["nodes"] == {}  # only endpoint versions moved in the memberships
    assert change["notified"] == len(MESH.dependents | {"edge-1"})  # every node whose view names it


def test_a_republished_body_is_no_change():
    fb = FeedBuilder()
    fb.batch(MESH.initial)
    again = [r for r in MESH.initial if r[0] == VIEW_RESOURCES][:3]
    assert fb.batch(again) == {"bodies": [], "nodes": {}, "notified": 0}


def test_a_changed_cluster_rebuilds_the_snapshot_of_every_node_naming_it():
    fb = FeedBuilder()
    fb.batch(MESH.initial)
    naming = {n for n, names in fb.names.items() if "svc-001" in names.get(CLUSTER, [])}
    assert naming  # the edges at least
    change = fb.batch([(VIEW_RESOURCES, f"{CLUSTER}|svc-001".encode(), b"\x0a\x07svc-001")])
    assert change["bodies"] == [{"type": CLUSTER, "name": "svc-001", "body": base64.b64encode(b"\x0a\x07svc-001").decode()}]
    assert change["nodes"] == {n: fb.names[n] for n in naming}


def test_a_membership_naming_other_clusters_gives_the_node_its_new_names_and_a_deleted_node_none():
    fb = FeedBuilder()
    fb.batch(MESH.initial)
    node = MESH.regular[0]
    before = _membership(MESH.initial)[node]
    fewer = {t: (dict(list(ns.items())[:1]) if t == CLUSTER else ns) for t, ns in before.items()}
    change = fb.batch([(VIEW_MEMBERSHIP, node.encode(), orjson.dumps({"node": node, "resources": fewer}))])
    assert change["nodes"] == {node: {t: sorted(ns) for t, ns in fewer.items() if t != ENDPOINT}}
    dropped = next(iter(set(before[CLUSTER]) - set(fewer[CLUSTER])))
    assert node not in fb.referenced_by[(CLUSTER, dropped)]  # a later change of it leaves this node alone

    gone = fb.batch([(VIEW_MEMBERSHIP, node.encode(), None), (VIEW_RESOURCES, f"{ENDPOINT}|svc-005".encode(), None)])
    assert gone["nodes"] == {node: None}
    assert gone["bodies"] == [{"type": ENDPOINT, "name": "svc-005", "deleted": True}]


def test_no_go_toolchain_is_a_clear_error_naming_what_the_peer_needs(monkeypatch):
    monkeypatch.setattr(_go_feed.shutil, "which", lambda _name: None)
    monkeypatch.setattr(_go_feed.os, "access", lambda _path, _mode: False)
    with pytest.raises(_go_feed.GoMissing, match="Go on PATH"):
        _go_feed.build_peer()
