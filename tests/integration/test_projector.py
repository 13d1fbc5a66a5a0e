"""Story: events appended with the real `registrar` come out of the running `projector` on the view topics.

The projector runs as a subprocess (`projector run`) against the session's
Kafka broker, with a fresh data dir. The broker is shared by the whole test
session (other tests append to the same topics, and a fresh projector folds
everything in the log), so every assertion is about this module's own
uniquely named services and nodes, never about counts of everything.
Waits are bounded polls with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from events import topics
from events.admin import ensure_topics
from events.codec import decode
from events.kafka_security import connection_kwargs
from projector.deadletter import parse_dead_letter
from projector.render_envoy import ON_DEMAND_VHOST
from projector.publisher import LATEST, parse_membership_value, parse_resource_key, record_version
from projector.snapshots import decode_snapshot
from projector.typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
REGISTRAR = str(BIN / "registrar")
PROJECTOR = str(BIN / "projector")
WAIT_S = 60.0
RUN = uuid.uuid4().hex[:8]
P = f"pt{RUN}"  # prefix of every service / node this module creates
SEEN: dict[str, bytes] = {}  # facts one test leaves for a later one


def registrar(bootstrap: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [REGISTRAR, "--bootstrap", bootstrap, "--timeout", "20", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=90,
        env={**os.environ, "MESHLOG_PRODUCER": "projector-integration-test"},
    )
    assert proc.returncode == 0, f"registrar {' '.join(args)} failed ({proc.returncode}): {proc.stderr}"
    return proc


def publish(bootstrap: str, service: str, instance: str, node: str | None, *, port: int = 8080,
            depends_on: tuple[str, ...] = (), sidecar: bool = True) -> None:
    args = ["publish", "--service", service, "--instance-id", instance, "--address", "127.0.0.1", "--port", str(port)]
    if node:
        args += ["--node-id", node]
    if sidecar:
        args += ["--inbound-port", "15001", "--outbound-port", "15002"]
    for dep in depends_on:
        args += ["--depends-on", dep]
    registrar(bootstrap, *args)


class Projector:
    """A `projector run` subprocess with its log in a file."""

    def __init__(self, bootstrap: str, data_dir: Path, log_path: Path, *extra: str) -> None:
        self.bootstrap, self.data_dir, self.log_path, self.extra = bootstrap, data_dir, log_path, extra
        self.proc: subprocess.Popen | None = None
        self._log_start = 0

    def start(self) -> None:
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [PROJECTOR, "run", "-v", "--bootstrap", self.bootstrap, "--data-dir", str(self.data_dir),
             "--poll-ms", "100", "--snapshot-interval", "1", *self.extra],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()

    def log_text(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    async def wait_log(self, needle: str, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log_text():
            assert self.proc is not None and self.proc.poll() is None, f"projector exited:\n{self.log_text()[-4000:]}"
            assert time.monotonic() < deadline, f"{needle!r} not logged within {timeout}s:\n{self.log_text()[-4000:]}"
            await asyncio.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)


class Tail:
    """Reads one single-partition topic from a start offset, keeping every record seen."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.tp = TopicPartition(topic, 0)
        self.records: list = []
        self.consumer: AIOKafkaConsumer | None = None

    async def start(self, offset: int = 0) -> "Tail":
        self.consumer = AIOKafkaConsumer(**connection_kwargs(self.bootstrap), enable_auto_commit=False,
                                         isolation_level="read_committed")
        await self.consumer.start()
        self.consumer.assign([self.tp])
        self.consumer.seek(self.tp, offset)
        return self

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def end(self) -> int:
        return (await self.consumer.end_offsets([self.tp]))[self.tp]

    def latest(self) -> dict[bytes, bytes | None]:
        out = {}
        for r in self.records:
            out[r.key] = r.value
        return out

    async def until(self, predicate, what: str, timeout: float = WAIT_S):
        deadline = time.monotonic() + timeout
        while True:
            got = predicate(self)
            if got:
                return got
            assert time.monotonic() < deadline, f"{self.topic}: {what} not seen within {timeout}s"
            batch = await self.consumer.getmany(self.tp, timeout_ms=300)
            self.records += batch.get(self.tp, [])

    async def drain(self) -> None:
        """Read up to the current end."""
        end = await self.end()
        while await self.consumer.position(self.tp) < end:
            batch = await self.consumer.getmany(self.tp, timeout_ms=300)
            self.records += batch.get(self.tp, [])


def membership_of(tail: Tail, node: str) -> dict | None:
    value = tail.latest().get(node.encode(), b"missing")
    if value in (b"missing", None):
        return None
    return parse_membership_value(value)[1]


def resources_of(tail: Tail) -> dict[tuple[str, str], bytes | None]:
    return {parse_resource_key(k): v for k, v in tail.latest().items()}


def versions_of(tail: Tail) -> dict[tuple[str, str], str]:
    """The version each body record was published with (``projector.publisher.record_version``)."""
    out = {}
    for r in tail.records:
        if r.value is None:
            out.pop(parse_resource_key(r.key), None)
        else:
            out[parse_resource_key(r.key)] = record_version(r.value, r.headers)
    return out


@pytest.fixture(scope="module")
async def bootstrap(kafka_bootstrap):
    await ensure_topics(kafka_bootstrap)
    return kafka_bootstrap


@pytest.fixture(scope="module")
async def projector(bootstrap, tmp_path_factory):
    base = tmp_path_factory.mktemp("projector")
    p = Projector(bootstrap, base / "data", base / "projector.log")
    p.start()
    await p.wait_log("projector started")
    yield p
    if p.proc is not None and p.proc.poll() is None:
        p.stop()


@pytest.fixture
async def views(bootstrap):
    res, mem = await Tail(bootstrap, topics.VIEW_RESOURCES).start(), await Tail(bootstrap, topics.VIEW_MEMBERSHIP).start()
    yield res, mem
    await res.stop()
    await mem.stop()


def _all_bodies_present(res: Tail, membership: dict) -> bool:
    have = resources_of(res)
    published = versions_of(res)
    for type_url, names in membership.items():
        for name, version in names.items():
            body = have.get((type_url, name))
            if body is None or (version != LATEST and published[(type_url, name)] != version):
                return False
    return True


async def test_registrations_come_out_on_the_view_topics(bootstrap, projector, views):
    res, mem = views
    publish(bootstrap, f"{P}-db", "db-1", None, port=5432, sidecar=False)
    publish(bootstrap, f"{P}-api", "api-1", f"{P}-node-api", depends_on=(f"{P}-db",))

    node = f"{P}-node-api"
    m = await mem.until(lambda t: membership_of(t, node), f"membership of {node}")
    assert set(m) == {CLUSTER, ENDPOINT, LISTENER, ROUTE}
    assert f"{P}-db" in m[CLUSTER] and f"{P}-db" in m[ENDPOINT]
    assert f"{node}~outbound" in m[LISTENER] and f"{node}~inbound" in m[LISTENER]
    assert m[ENDPOINT][f"{P}-db"] == LATEST  # endpoints are held at their latest body, not a version
    # every body the membership names is on the resources topic, with the version it names
    await res.until(lambda t: _all_bodies_present(t, m), f"bodies named by {node}'s membership")
    # and the endpoints of db name the registered instance
    from envoy.config.endpoint.v3 import endpoint_pb2

    cla = endpoint_pb2.ClusterLoadAssignment.FromString(resources_of(res)[(ENDPOINT, f"{P}-db")])
    ports = [lb.endpoint.address.socket_address.port_value for e in cla.endpoints for lb in e.lb_endpoints]
    assert ports == [5432]


async def test_garbage_record_is_dead_lettered_and_projection_continues(bootstrap, projector, views):
    res, mem = views
    dl = await Tail(bootstrap, topics.DEADLETTER).start()
    producer = AIOKafkaProducer(**connection_kwargs(bootstrap), enable_idempotence=True)
    await producer.start()
    garbage = b"\x00 not an event " + RUN.encode()
    try:
        meta = await (await producer.send(topics.REGISTRATIONS, value=garbage, key=f"{P}/garbage".encode()))
    finally:
        await producer.stop()
    node = f"{P}-node-after-garbage"
    publish(bootstrap, f"{P}-web", "web-1", node, depends_on=(f"{P}-db",))

    key = f"{topics.REGISTRATIONS}/{meta.partition}/{meta.offset}".encode()
    SEEN["dead_letter_key"] = key
    try:
        rec = await dl.until(lambda t: next((r for r in t.records if r.key == key), None), f"dead letter {key!r}")
    finally:
        await dl.stop()
    letter = parse_dead_letter(rec.value)
    assert letter.stage == "decode" and "JSON" in letter.reason
    assert (letter.topic, letter.partition, letter.offset) == (topics.REGISTRATIONS, meta.partition, meta.offset)
    assert letter.value == garbage and letter.key == f"{P}/garbage".encode()
    assert letter.value_bytes.exact == garbage and letter.raw["value"]["size"] == len(garbage)
    # the projector kept going: the later valid registration is projected
    m = await mem.until(lambda t: membership_of(t, node), f"membership of {node}")
    assert f"{P}-db" in m[CLUSTER]
    assert projector.proc.poll() is None
    assert f"dead-lettered {topics.REGISTRATIONS}/{meta.partition}/{meta.offset}" in projector.log_text()


async def test_invalid_rule_is_rejected_and_never_reaches_a_proxy(bootstrap, projector, views):
    res, mem = views
    host = f"{P}-db"
    rej = await Tail(bootstrap, topics.REJECTIONS).start()
    rule = orjson.dumps({"kind": "RouteRule", "host": host, "revision": 1,
                         "routes": [{"destinations": [{"subset": "v9", "weight": 100}]}]}).decode()
    registrar(bootstrap, "rules", "apply", "-f", "-", stdin=rule)
    try:
        rec = await rej.until(
            lambda t: next((r for r in t.records if r.key == f"route_rule/{host}".encode()), None),
            f"RuleRejected for {host}",
        )
    finally:
        await rej.stop()
    env = decode(rec.value)
    assert env.type == "rule.rejected" and env.producer == "projector"
    assert env.payload.kind == "route_rule" and env.payload.name == host and env.payload.revision == 1
    assert "v9" in env.payload.reason and env.payload.source_topic == topics.RULES
    # a later event is projected (so the rule's batch is long done) and the rule reached no view
    node = f"{P}-node-after-rule"
    publish(bootstrap, f"{P}-cli", "cli-1", node, depends_on=(host,))
    m = await mem.until(lambda t: membership_of(t, node), f"membership of {node}")
    await res.until(lambda t: _all_bodies_present(t, m), f"bodies of {node}")
    assert not [k for k in resources_of(res) if f"{host}|v9" in k[1]]
    for n in (node, f"{P}-node-api"):
        assert not [c for c in (membership_of(mem, n) or {}).get(CLUSTER, {}) if "|v9" in c]
    from envoy.config.route.v3 import route_pb2

    rc = route_pb2.RouteConfiguration.FromString(resources_of(res)[(ROUTE, f"{node}~outbound")])
    # every virtual host but the on-demand catch-all (it names its cluster by header, for issue 18)
    clusters = {r.route.cluster for vh in rc.virtual_hosts if vh.name != ON_DEMAND_VHOST for r in vh.routes}
    assert clusters == {host}


async def test_snapshot_is_appended_and_decodes(bootstrap, projector):
    snaps = await Tail(bootstrap, topics.SNAPSHOTS).start()
    try:
        def mine(t):
            for r in reversed(t.records):
                snap = decode_snapshot(r.value)
                if any(key == f"{P}-api/api-1" for key, _ in orjson.loads(snap.state_bytes)["instances"]):
                    return snap
            return None

        snap = await snaps.until(mine, "a snapshot holding this module's instances")
    finally:
        await snaps.stop()
    # registrations have several partitions: this module's instances are in some of them
    assert sum(snap.next_offset(topics.REGISTRATIONS, p) for p in range(topics.EVENT_PARTITIONS)) > 0
    assert snap.events > 0
    assert snap.max_timestamp_ms is not None
    state = snap.state()
    assert f"{P}-api/api-1" in state.instances


async def test_restart_republishes_nothing_unchanged(bootstrap, projector, views):
    res, mem = views
    node = f"{P}-node-api"
    await mem.until(lambda t: membership_of(t, node), f"membership of {node}")
    assert projector.stop(signal.SIGTERM) == 0, projector.log_text()[-3000:]
    assert "projector stopped" in projector.log_text()
    await res.drain()
    await mem.drain()
    ends = (await res.end(), await mem.end())

    projector.start()
    await projector.wait_log("caught up at")
    # an event after the restart, and its effect on the views, bound the window we look at
    publish(bootstrap, f"{P}-late", "late-1", f"{P}-node-late", depends_on=(f"{P}-db",))
    await mem.until(lambda t: membership_of(t, f"{P}-node-late"), "membership of the late node")
    await res.drain()
    await mem.drain()
    republished = [r.key for t, end in ((res, ends[0]), (mem, ends[1])) for r in t.records if r.offset >= end]
    ours = [k for k in republished if P.encode() in k and b"late" not in k]
    assert ours == [], f"republished after restart: {ours}\n{projector.log_text()[-6000:]}"
    assert "views are up to date with the stored state" in projector.log_text() or "catching up" in projector.log_text()


async def test_killed_projector_loses_nothing_and_republishes_nothing(bootstrap, projector, views):
    res, mem = views
    await mem.until(lambda t: membership_of(t, f"{P}-node-late"), "membership of the late node")
    projector.stop(signal.SIGKILL)
    await res.drain()
    await mem.drain()
    ends = (await res.end(), await mem.end())
    # appended while the projector is down
    publish(bootstrap, f"{P}-down", "down-1", f"{P}-node-down", depends_on=(f"{P}-late",))
    projector.start()
    m = await mem.until(lambda t: membership_of(t, f"{P}-node-down"), "membership appended while down")
    await res.until(lambda t: _all_bodies_present(t, m), "its bodies")
    await projector.wait_log("caught up at")
    await res.drain()
    await mem.drain()
    again = [r.key for t, end in ((res, ends[0]), (mem, ends[1])) for r in t.records if r.offset >= end]
    ours = [k for k in again if P.encode() in k and b"down" not in k and f"{P}-late".encode() not in k]
    assert ours == [], f"republished after a kill: {ours}"


async def test_a_fresh_data_dir_adopts_what_is_published(bootstrap, projector, views, tmp_path):
    """A new deployment (empty data dir) republishes no unchanged view and repeats no dead letter or rejection."""
    res, mem = views
    await mem.until(lambda t: membership_of(t, f"{P}-node-down"), "membership of the node appended while down")
    assert projector.stop(signal.SIGTERM) == 0
    effects = {}
    for name in (topics.DEADLETTER, topics.REJECTIONS):
        tail = await Tail(bootstrap, name).start()
        effects[name] = (tail, await tail.end())
    await res.drain()
    await mem.drain()
    ends = (await res.end(), await mem.end())

    fresh = Projector(bootstrap, tmp_path / "fresh-data", tmp_path / "fresh.log")
    fresh.start()
    try:
        await fresh.wait_log("caught up at")
        publish(bootstrap, f"{P}-fresh", "fresh-1", f"{P}-node-fresh", depends_on=(f"{P}-db",))
        await mem.until(lambda t: membership_of(t, f"{P}-node-fresh"), "membership of the fresh node")
        await res.drain()
        await mem.drain()
        again = [r.key for t, end in ((res, ends[0]), (mem, ends[1])) for r in t.records if r.offset >= end]
        ours = [k for k in again if P.encode() in k and b"fresh" not in k]
        assert ours == [], f"a fresh data dir republished: {ours}"
        for name, (tail, end) in effects.items():
            await tail.drain()
            mine = (SEEN.get("dead_letter_key"), f"route_rule/{P}-db".encode())
            repeated = [r.key for r in tail.records if r.offset >= end and r.key in mine]
            assert repeated == [], f"{name}: repeated {repeated}"
        assert "fresh data dir: adopted" in fresh.log_text()
    finally:
        assert fresh.stop() == 0
        for tail, _end in effects.values():
            await tail.stop()
