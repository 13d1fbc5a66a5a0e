"""Story: what each proxy accepted is in the log, and `meshlog status` reads it back.

Real Kafka, the projector, two `xds-gateway` replicas appending to
meshlog.sync, a real Envoy, and the real `meshlog status` CLI:

- Envoy's ACKs show as SYNCED with exactly the versions Envoy's own
  config_dump reports; `kill -9` of its gateway moves it to the other replica
  (the old stream is superseded) with the right versions; a graceful stop
  records its stream closed by the gateway.
- A view record the projector would never write (a Cluster with a negative
  connect_timeout) is NACKed by Envoy: the NACK is in the log with Envoy's
  reason, status says NACKED, and the next good version clears it.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from contextlib import contextmanager

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from envoy.config.cluster.v3 import cluster_pb2

from events import topics
from events.admin import ensure_topics
from events.kafka_security import connection_kwargs
from projector.publisher import (
    membership_value,
    parse_membership_value,
    parse_resource_key,
    record_version,
    resolve_told,
    resource_key,
)
from projector.versioning import version_of
from proxy.envoy_process import dynamic_names, endpoint_count
from tests.integration.test_gateway_envoy import a_mesh, registrar, start_envoy
from tests.support.log import read_since
from tests.support.stack import BIN, metric_sum, metrics, start_gateway, start_projector, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.envoy]

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
KINDS = {"CDS": "clusters", "EDS": "endpoints", "LDS": "listeners", "RDS": "routes"}


@pytest.fixture
def control_plane(kafka_bootstrap, tmp_path):
    asyncio.run(ensure_topics(kafka_bootstrap))
    projector = start_projector(kafka_bootstrap, tmp_path)
    gateways = [start_gateway(kafka_bootstrap, tmp_path, f"gw-{i}", extra=["--replica-id", f"gw-{i}"]) for i in (1, 2)]
    started = [projector, *gateways]
    yield kafka_bootstrap, gateways, started
    for process in reversed(started):
        process.stop()


def status(bootstrap: str, *args: str) -> dict:
    result = subprocess.run([str(BIN / "meshlog"), "status", "--bootstrap", bootstrap, "--json", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


def row(bootstrap: str, node: str) -> dict | None:
    rows = [r for r in status(bootstrap, "--all")["proxies"] if r["node"] == node]
    return rows[0] if rows else None


def states(r: dict | None) -> dict[str, str]:
    return {t: s["state"] for t, s in r["types"].items()} if r else {}


def all_synced(r: dict | None) -> bool:
    return bool(r) and r["connected"] and set(states(r)) == set(KINDS) and set(states(r).values()) == {"SYNCED"}


def all_records(bootstrap: str, topic: str) -> list:
    """Every record of every partition of ``topic``, in broker-time order."""
    return asyncio.run(read_since(bootstrap, topic, {}))


def latest_value(bootstrap: str, topic: str, key: bytes) -> bytes | None:
    values = [r.value for r in all_records(bootstrap, topic) if r.key == key]
    return values[-1] if values else None


def latest_headers(bootstrap: str, topic: str, key: bytes) -> list:
    """The headers of the latest record of ``key`` (a body's: its version, ``publisher.VERSION_HEADER``)."""
    found = [r.headers for r in all_records(bootstrap, topic) if r.key == key]
    return list(found[-1]) if found else []


def append_view(bootstrap: str, records: list[tuple]) -> None:
    """Append (topic, key, value[, headers]) records, in order."""
    async def send() -> None:
        producer = AIOKafkaProducer(**connection_kwargs(bootstrap), acks="all")
        await producer.start()
        try:
            for topic, key, value, *headers in records:  # in order: bodies before the membership naming them
                await (await producer.send(topic, key=key, value=value, headers=headers[0] if headers else None))
        finally:
            await producer.stop()

    asyncio.run(send())


def view_versions(bootstrap: str, node: str) -> dict[str, dict[str, str]]:
    """What the node is told: its membership, endpoints (named at the latest) at their latest body's version."""
    bodies: dict = {}
    for r in all_records(bootstrap, topics.VIEW_RESOURCES):
        if r.value is None:
            bodies.pop(parse_resource_key(r.key), None)
        else:
            bodies[parse_resource_key(r.key)] = record_version(r.value, r.headers)
    return resolve_told(parse_membership_value(latest_value(bootstrap, topics.VIEW_MEMBERSHIP, node.encode()))[1], bodies)


@contextmanager
def synced_envoy(bootstrap: str, gateways, tmp_path):
    """A mesh, and a real Envoy on both gateways whose every type `meshlog status` shows SYNCED."""
    mesh = a_mesh(bootstrap, uuid.uuid4().hex[:6])
    node, reviews = mesh["node"], mesh["reviews"]
    envoy = start_envoy(node, gateways, tmp_path)
    try:
        wait_until(lambda: all_synced(row(bootstrap, node)), 60, "status to show every type SYNCED",
                   on_fail=lambda: f"{row(bootstrap, node)}\n{envoy.log_tail()}")
        yield node, reviews, envoy
    finally:
        envoy.stop()


def test_status_follows_a_proxy_across_a_killed_and_a_stopped_gateway(control_plane, tmp_path):
    bootstrap, gateways, started = control_plane
    with synced_envoy(bootstrap, gateways, tmp_path) as (node, reviews, envoy):
        first = row(bootstrap, node)
        # what status says Envoy ACKed is what Envoy reports holding, version for version
        envoy_held = dynamic_names(envoy.config_dump())
        told = view_versions(bootstrap, node)
        for short, kind in KINDS.items():
            if short == "EDS":
                continue  # Envoy's config_dump carries no version for endpoints
            type_url = next(u for u in told if u.endswith({"CDS": "Cluster", "EDS": "ClusterLoadAssignment",
                                                           "LDS": "Listener", "RDS": "RouteConfiguration"}[short]))
            for name, version in told[type_url].items():
                assert envoy_held[kind].get(name) == version, (short, name, envoy_held[kind], told[type_url])

        # kill -9 the replica holding the stream: no closed record; the reconnect elsewhere supersedes it
        serving_id = first["stream"]["gateway"]
        [serving] = [g for g in gateways if g.name == serving_id]
        [standby] = [g for g in gateways if g is not serving]
        serving.kill9()

        def moved():
            r = row(bootstrap, node)
            return r if r and r["stream"]["gateway"] == standby.name and all_synced(r) else None

        wait_until(moved, 60, "status to show the proxy on the other replica, SYNCED",
                   on_fail=lambda: f"{row(bootstrap, node)}\n{envoy.log_tail()}")
        after_kill = moved()
        [old] = [p for p in after_kill["previous"] if p["gateway"] == serving_id]
        assert old["close_reason"] == "superseded" and old["superseded_by"].startswith(standby.name + "/")

        # a change reaches it through the survivor, and status holds it against the new view
        eds = lambda: view_versions(bootstrap, node)[  # noqa: E731
            "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"][reviews]
        before_eds = eds()
        registrar(bootstrap, "publish", "--service", reviews, "--instance-id", "r3", "--address", "127.0.0.5",
                  "--port", "9080", "--label", "version=v2")
        wait_until(lambda: eds() != before_eds and endpoint_count(envoy.config_dump(), reviews) == 3
                   and all_synced(row(bootstrap, node)), 60, "the new endpoint ACKed and SYNCED",
                   on_fail=lambda: f"{before_eds} {eds()} {row(bootstrap, node)}")
        assert status(bootstrap, "--node", node)["types"]["EDS"]["state"] == "SYNCED"

        # a replacement replica on the freed port, then a graceful stop of the survivor: closed by the gateway
        replacement = start_gateway(bootstrap, tmp_path, "gw-3", port=serving.info["xds_port"],
                                    extra=["--replica-id", "gw-3"])
        started.append(replacement)
        standby.stop()

        def on_replacement():
            r = row(bootstrap, node)
            return r if r and r["stream"]["gateway"] == "gw-3" and all_synced(r) else None

        wait_until(on_replacement, 90, "the proxy on the replacement replica, SYNCED",
                   on_fail=lambda: f"{row(bootstrap, node)}\n{envoy.log_tail()}")
        [stopped] = [p for p in on_replacement()["previous"] if p["gateway"] == standby.name]
        assert stopped["close_reason"] == "gateway_stopping"


def test_a_config_envoy_rejects_is_nacked_in_the_log_and_the_next_good_version_clears_it(control_plane, tmp_path):
    bootstrap, gateways, _started = control_plane
    with synced_envoy(bootstrap, gateways, tmp_path) as (node, reviews, envoy):
        good_body = latest_value(bootstrap, topics.VIEW_RESOURCES, resource_key(CDS, reviews))
        good_headers = latest_headers(bootstrap, topics.VIEW_RESOURCES, resource_key(CDS, reviews))  # its version
        good_membership = latest_value(bootstrap, topics.VIEW_MEMBERSHIP, node.encode())
        _node, resources = parse_membership_value(good_membership)

        # the projector never renders this: a cluster whose connect timeout is negative
        bad = cluster_pb2.Cluster()
        bad.ParseFromString(good_body)
        bad.connect_timeout.seconds = -1
        bad_body = bad.SerializeToString(deterministic=True)
        bad_version = version_of(bad_body)
        resources[CDS][reviews] = bad_version
        append_view(bootstrap, [(topics.VIEW_RESOURCES, resource_key(CDS, reviews), bad_body),
                                (topics.VIEW_MEMBERSHIP, node.encode(), membership_value(node, resources))])

        def nacked():
            r = row(bootstrap, node)
            return r if r and r["types"].get("CDS", {}).get("state") == "NACKED" else None

        wait_until(nacked, 60, "status to show CDS NACKED", on_fail=lambda: f"{row(bootstrap, node)}\n{envoy.log_tail()}")
        cds = nacked()["types"]["CDS"]
        # Envoy's own words, with its newlines escaped
        assert "Expected positive duration" in cds["reason"] and "\n" not in cds["reason"], cds["reason"]
        [diff] = [d for d in cds["differences"] if d["name"] == reviews]
        assert diff["told"] == diff["rejected"] == bad_version and diff["acked"] != bad_version
        # Envoy kept the good cluster
        assert dynamic_names(envoy.config_dump())["clusters"][reviews] == diff["acked"]
        text = subprocess.run([str(BIN / "meshlog"), "status", "--bootstrap", bootstrap, "--node", node],
                              capture_output=True, text=True, timeout=60)
        assert "NACKED" in text.stdout and bad_version in text.stdout, text.stdout

        unknown = subprocess.run([str(BIN / "meshlog"), "status", "--bootstrap", bootstrap, "--node", node + "x"],
                                 capture_output=True, text=True, timeout=60)
        assert unknown.returncode == 2 and "--node" in unknown.stderr and node in unknown.stderr, unknown.stderr

        # the next good version (the projector's own) clears it
        append_view(bootstrap, [(topics.VIEW_RESOURCES, resource_key(CDS, reviews), good_body, good_headers),
                                (topics.VIEW_MEMBERSHIP, node.encode(), good_membership)])
        wait_until(lambda: all_synced(row(bootstrap, node)), 60, "the good version ACKed: SYNCED again",
                   on_fail=lambda: f"{row(bootstrap, node)}\n{envoy.log_tail()}")


def replay_json(bootstrap: str, *args: str) -> dict:
    result = subprocess.run([str(BIN / "replay"), *args, "--json", "--bootstrap", bootstrap], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


def replay_accepted(bootstrap: str, node: str, at_ms: int) -> dict:
    result = subprocess.run([str(BIN / "replay"), "at", "--at", f"@{at_ms}", "--node", node, "--accepted", "--json",
                             "--bootstrap", bootstrap], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)["accepted"]


def test_replay_at_accepted_between_the_event_and_the_ack_shows_what_was_not_acked_yet(control_plane, tmp_path):
    from events.codec import decode

    bootstrap, gateways, _started = control_plane
    with synced_envoy(bootstrap, gateways, tmp_path) as (node, reviews, envoy):
        registrar(bootstrap, "publish", "--service", reviews, "--instance-id", "r3", "--address", "127.0.0.5",
                  "--port", "9080", "--label", "version=v2")
        event_ms = all_records(bootstrap, topics.REGISTRATIONS)[-1].timestamp
        wait_until(lambda: endpoint_count(envoy.config_dump(), reviews) == 3 and all_synced(row(bootstrap, node)), 60,
                   "the new endpoint ACKed")
        new_eds = status(bootstrap, "--node", node)
        eds_url = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
        new_version = view_versions(bootstrap, node)[eds_url][reviews]
        acks = [r for r in all_records(bootstrap, topics.SYNC)
                if (e := decode(r.value)).type == "sync.acked" and e.payload.node == node
                and e.payload.type_url == eds_url and e.payload.held.get(reviews) == new_version]
        ack_ms = acks[0].timestamp
        assert ack_ms > event_ms  # causality: the ACK is logged after the event that caused it

        # at the event's instant the proxy was told the new endpoints but had not ACKed them
        between = replay_accepted(bootstrap, node, event_ms)
        eds = between["types"]["EDS"]
        assert eds["state"] == "STALE", between
        [diff] = [d for d in eds["differences"] if d["name"] == reviews]
        assert diff["told"] == new_version and diff["acked"] not in (None, new_version)
        # once the ACK is logged, what it was told and what it held agree
        after = replay_accepted(bootstrap, node, ack_ms)
        assert after["types"]["EDS"]["state"] == "SYNCED", after
        assert new_eds["types"]["EDS"]["state"] == "SYNCED"
        # replay log: the ACK interleaved with the event, and the event's convergence
        log_doc = replay_json(bootstrap, "log", "--from", f"@{event_ms - 1}", "--to", f"@{ack_ms}", "--node", node)
        kinds = [(e["kind"], e.get("type")) for e in log_doc["entries"]]
        [event] = [e for e in log_doc["entries"] if e["kind"] == "event" and e["timestamp_ms"] == event_ms]
        assert event["convergence"]["reached"] == event["convergence"]["proxies"] == 1, event
        assert event["convergence"]["slowest"] == node
        assert ("ack", None) in kinds and kinds.index(("event", event["type"])) < kinds.index(("ack", None))
        text = subprocess.run([str(BIN / "replay"), "log", "--from", f"@{event_ms - 1}", "--to", f"@{ack_ms}",
                               "--node", node, "--bootstrap", bootstrap], capture_output=True, text=True, timeout=120)
        assert "reached 1 of 1 proxies" in text.stdout and f"slowest {node}" in text.stdout, text.stdout
        # replay diff --node: the changed endpoints, the event that caused them and when this Envoy accepted them
        node_acks = {int(e.occurred_at.timestamp() * 1000) for r in all_records(bootstrap, topics.SYNC)
                     if (e := decode(r.value)).type == "sync.acked" and e.payload.node == node}
        diff_doc = replay_json(bootstrap, "diff", "--from", f"@{event_ms - 1}", "--to", f"@{ack_ms}", "--node", node)
        [changed] = [c for c in diff_doc["changed"] if c["type_url"] == eds_url and c["name"] == reviews]
        assert changed["to_version"] == new_version and [c["timestamp_ms"] for c in changed["caused_by"]] == [event_ms]
        accepted = changed["accepted"]
        assert accepted["state"] == "ACCEPTED" and accepted["via"] is None, accepted
        assert accepted["acked_ms"] in node_acks  # the gateway's time of one of this Envoy's ACKs
        assert accepted["after_ms"] == accepted["acked_ms"] - event_ms >= 0
        assert accepted["acked_ms"] >= int(decode(acks[0].value).occurred_at.timestamp() * 1000)  # not before it held it
        diff_text = subprocess.run([str(BIN / "replay"), "diff", "--from", f"@{event_ms - 1}", "--to", f"@{ack_ms}",
                                    "--node", node, "--bootstrap", bootstrap], capture_output=True, text=True,
                                   timeout=120)
        assert accepted["acked_at"] in diff_text.stdout and f"+{accepted['after_ms']:,} ms" in diff_text.stdout, \
            diff_text.stdout
        # the whole mesh: the causing event says how far it reached
        mesh_doc = replay_json(bootstrap, "diff", "--from", f"@{event_ms - 1}", "--to", f"@{ack_ms}")
        [mesh_changed] = [c for c in mesh_doc["changed"] if c["type_url"] == eds_url and c["name"] == reviews]
        [cause] = mesh_changed["caused_by"]
        assert cause["convergence"]["reached"] == cause["convergence"]["proxies"] == 1, cause
        assert cause["convergence"]["slowest"] == node
        # the gateway measured the append of that event to this ACK (meshlog-source-ms on the view records)
        observed = sum(metric_sum(metrics(g.info["http_port"]), "meshlog_xds_convergence_seconds_count",
                                  type_url=eds_url) for g in gateways)
        assert observed >= 1
