"""Story: records that must never wedge or crash a reader of the log (issue 11, items 1-3, and the poison suite).

Everything is real: the session's Kafka broker, the `registrar`, `projector`,
`xds-gateway` and `replay` commands, a `registrar healthcheck` checker, and
Envoy. Bad records are appended with a plain aiokafka producer (its
max_request_size raised, as an attacker would), straight past the registrar.

The broker is shared with the whole session: every assertion is about this
module's own records (by offset) and uniquely named services.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from events.kafka_security import connection_kwargs
from events import topics
from events.admin import connect_admin, ensure_topics
from events.codec import decode, encode
from events.envelope import new_event
from events.errors import EventValidationError
from events.types import InstanceHealthChanged, InstanceRegistered, RouteRuleUpserted
from meshlog.kafka_local import free_port
from projector.deadletter import parse_dead_letter
from proxy.bootstrap import envoy_bootstrap
from proxy.envoy_process import EnvoyProcess, endpoint_count
from tests.support import poison
from tests.support.log import end_offset
from tests.support.stack import spawn, start_gateway, start_projector, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.envoy]

BIN = Path(sys.executable).parent
RUN = uuid.uuid4().hex[:6]
WAIT_S = 90.0
POISON_EXAMPLES = 5  # x one record per category = 40 bad records, then a valid event after each batch


def cli(name: str, *args: str, timeout: float = 120, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, timeout=timeout, input=stdin,
                          env={**os.environ, "MESHLOG_PRODUCER": "poison-test"})


def registrar(bootstrap: str, *args: str) -> None:
    result = cli("registrar", "--bootstrap", bootstrap, "--timeout", "20", *args)
    assert result.returncode == 0, result.stderr


async def append_raw(bootstrap: str, records: list[tuple[str, bytes | None, bytes | None]]) -> list[tuple[str, int, int]]:
    """Append (topic, key, value) records as they are, like anyone with a producer could; their (topic, partition, offset)."""
    producer = AIOKafkaProducer(**connection_kwargs(bootstrap), max_request_size=2 << 20, enable_idempotence=True)
    await producer.start()
    try:
        out = []
        for topic, key, value in records:
            meta = await (await producer.send(topic, key=key, value=value))
            out.append((meta.topic, meta.partition, meta.offset))
        return out
    finally:
        await producer.stop()


async def dead_letters(bootstrap: str, start: int = 0) -> dict[tuple[str, int, int], list]:
    """Every dead letter from ``start`` to the current end, by source record (a list: it must be one)."""
    consumer = AIOKafkaConsumer(**connection_kwargs(bootstrap), isolation_level="read_committed", enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topics.DEADLETTER, 0)
        stop = (await consumer.end_offsets([tp]))[tp]
        consumer.assign([tp])
        consumer.seek(tp, start)
        found: dict[tuple[str, int, int], list] = {}
        while await consumer.position(tp) < stop:
            for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                letter = parse_dead_letter(record.value)
                found.setdefault((letter.topic, letter.partition, letter.offset), []).append((record, letter))
        return found
    finally:
        await consumer.stop()


def wait_dead_lettered(bootstrap: str, sources: list[tuple[str, int, int]], start: int, on_fail) -> dict:
    def all_there():
        found = asyncio.run(dead_letters(bootstrap, start))
        return found if all(s in found for s in sources) else None

    return wait_until(all_there, WAIT_S, f"{len(sources)} dead letters", interval=0.5, on_fail=on_fail)


def replay(bootstrap: str, *args: str) -> subprocess.CompletedProcess:
    return cli("replay", *args, "--bootstrap", bootstrap, "--no-progress")


def replay_json(bootstrap: str, *args: str) -> dict:
    result = replay(bootstrap, *args, "--json")
    assert result.returncode == 0, f"replay {' '.join(args)} exited {result.returncode}: {result.stderr[-3000:]}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def bootstrap(kafka_bootstrap):
    asyncio.run(ensure_topics(kafka_bootstrap))
    return kafka_bootstrap


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("poison")


# ---------------------------------------------------------------- item 1: a dead letter always fits; size caps


def test_event_topics_are_capped_and_the_registrar_refuses_an_oversized_event_with_exit_2(bootstrap, tmp_path):
    async def configs() -> dict[str, dict[str, str]]:
        admin = await connect_admin(bootstrap)
        try:
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, t.name) for t in topics.ALL_TOPICS
                 if "max.message.bytes" in t.config])  # every topic that holds records
        finally:
            await admin.close()
        return {r[3]: {e[0]: e[1] for e in r[4]} for resp in responses for r in resp.resources}

    got = asyncio.run(configs())
    for spec in topics.EVENT_TOPICS:
        assert got[spec.name]["max.message.bytes"] == str(topics.EVENT_MAX_MESSAGE_BYTES) == "1048576"
    assert got[topics.SNAPSHOTS]["max.message.bytes"] == str(16 << 20)

    # a valid rules document of 2.1 MB: 2,000 routes with long path prefixes
    routes = [{"match": {"path_prefix": f"/{i}/" + "p" * 1000}, "destinations": [{"weight": 100}]} for i in range(2000)]
    rules = tmp_path / "big-rules.json"
    rules.write_text(json.dumps({"kind": "RouteRule", "host": f"big{RUN}", "revision": 1, "routes": routes}))
    assert rules.stat().st_size > 2_000_000
    before = asyncio.run(end_offset(bootstrap, topics.RULES))
    result = cli("registrar", "--bootstrap", bootstrap, "--timeout", "20", "rules", "apply", "-f", str(rules))
    assert result.returncode == 2, result.stderr
    assert "over the 1,044,480 bytes an event may have" in result.stderr and "nothing was appended" in result.stderr
    assert "Traceback" not in result.stderr
    assert asyncio.run(end_offset(bootstrap, topics.RULES)) == before


def test_topics_ensure_sets_the_size_cap_on_an_existing_topic_and_keeps_its_other_settings(bootstrap):
    from aiokafka.admin import NewTopic

    from events.topics import TopicSpec

    name = f"meshlog-test.cap-{RUN}"

    async def settings_of() -> dict[str, str]:
        admin = await connect_admin(bootstrap)
        try:
            [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        finally:
            await admin.close()
        return {e[0]: e[1] for e in response.resources[0][4]}

    async def create() -> None:
        admin = await connect_admin(bootstrap)
        try:
            await admin.create_topics([NewTopic(name, 1, 1, topic_configs={
                "retention.ms": "-1", "segment.ms": "3600000", "max.message.bytes": "500000"})])
        finally:
            await admin.close()

    asyncio.run(create())
    spec = TopicSpec(name, 1, {"retention.ms": "-1", "max.message.bytes": "1048576"})
    report = asyncio.run(ensure_topics(bootstrap, [spec]))
    assert [(m.setting, m.actual, m.expected) for m in report.updated] == [("max.message.bytes", "500000", "1048576")]
    assert report.consistent and report.ok == [name]
    got = asyncio.run(settings_of())
    assert (got["max.message.bytes"], got["segment.ms"], got["retention.ms"]) == ("1048576", "3600000", "-1")
    again = asyncio.run(ensure_topics(bootstrap, [spec]))
    assert again.updated == [] and again.consistent


def test_replay_says_dead_lettered_live_only_for_what_the_projector_dead_lettered(bootstrap, workdir):
    t0 = int(time.time() * 1000) - 1
    [src] = asyncio.run(append_raw(bootstrap, [(topics.REGISTRATIONS, b"x/y", b"not an event " + RUN.encode())]))
    # no projector has run over it yet: replay sees it undecodable, the dead-letter topic does not have it
    doc = replay_json(bootstrap, "log", "--from", f"@{t0}", "--to", "now")
    [entry] = [e for e in doc["entries"] if e["kind"] == "dead_letter" and e["source"]["offset"] == src[2]]
    assert entry["recorded"] is False
    at = replay_json(bootstrap, "at", "--at", "now", "--no-snapshot")
    assert at["source"]["undecodable_dead_lettered"] <= at["source"]["undecodable"] - 1
    text = replay(bootstrap, "at", "--at", "now", "--no-snapshot")
    assert text.returncode == 0 and "(dead-lettered live)" not in text.stdout


@pytest.fixture(scope="module")
def stack(bootstrap, workdir):
    """Projector, one gateway, and an Envoy whose node depends on a service the suite keeps registering."""
    projector = start_projector(bootstrap, workdir, extra=["--snapshot-interval", "2"])
    gateway = start_gateway(bootstrap, workdir, "gateway")
    service, node = f"pz{RUN}", f"pzweb{RUN}-node"
    registrar(bootstrap, "publish", "--service", service, "--instance-id", "r0", "--address", "127.0.0.2", "--port", "9080")
    registrar(bootstrap, "publish", "--service", f"pzweb{RUN}", "--instance-id", "w1", "--address", "127.0.0.1",
              "--port", str(free_port()), "--node-id", node, "--inbound-port", str(free_port()), "--outbound-port",
              str(free_port()), "--depends-on", service)
    admin = free_port()
    envoy = EnvoyProcess(envoy_bootstrap(node_id=node, node_cluster="web", admin_port=admin,
                                         gateways=[f"127.0.0.1:{gateway.info['xds_port']}"]),
                         admin_port=admin, base_id=random.randint(1000, 60000), workdir=str(workdir / "envoy"),
                         log_level="info").start()
    state = {"bootstrap": bootstrap, "projector": projector, "gateway": gateway, "envoy": envoy, "service": service,
             "instances": 1, "bad": [], "workdir": workdir}
    wait_until(lambda: endpoint_count(envoy.config_dump(), service) == 1, WAIT_S, "Envoy to hold the first endpoint",
               on_fail=lambda: envoy.log_tail() + gateway.log_tail() + projector.log_tail())
    yield state
    envoy.stop()
    # the tests may replace the projector (a restart): stop whichever runs now, or it outlives the module and
    # keeps projecting the session's shared broker under the next module's feet
    for process in (state["gateway"], state["projector"]):
        process.stop()


def _tails(stack) -> str:
    return "\n".join(p.log_tail() for p in (stack["projector"], stack["gateway"])) + stack["envoy"].log_tail()


def _register_next(stack) -> None:
    """A valid event after the bad ones: it must reach Envoy."""
    n = stack["instances"]
    registrar(stack["bootstrap"], "publish", "--service", stack["service"], "--instance-id", f"r{n}",
              "--address", f"127.0.1.{n}", "--port", "9080")
    stack["instances"] = n + 1
    wait_until(lambda: endpoint_count(stack["envoy"].config_dump(), stack["service"]) == n + 1, WAIT_S,
               f"Envoy to hold {n + 1} endpoints of {stack['service']}", on_fail=lambda: _tails(stack))


# ---------------------------------------------------------------- items 1-3 against the running projector


def test_a_900_kb_record_is_dead_lettered_small_and_a_restart_does_not_wedge(stack, workdir):
    bootstrap, projector = stack["bootstrap"], stack["projector"]
    start = asyncio.run(end_offset(bootstrap, topics.DEADLETTER))
    big = random.Random(11).randbytes(921_600)
    [src] = asyncio.run(append_raw(bootstrap, [(topics.REGISTRATIONS, b"big/1", big)]))
    found = wait_dead_lettered(bootstrap, [src], start, on_fail=lambda: _tails(stack))
    [(record, letter)] = found[src]
    assert len(record.value) < 4096  # measured: ~2.1 KB (the old format's copy was 1.23 MB and never fit)
    assert letter.value_bytes.size == 921_600 and letter.value_bytes.truncated and "JSON" in letter.reason
    _register_next(stack)  # the projector went on (before: 'publishing failed (MessageSizeTooLargeError)' forever)
    assert projector.alive()
    # a restart re-reads the record's neighbourhood without wedging or dead-lettering it again
    assert projector.stop() == 0
    stack["projector"] = start_projector(bootstrap, workdir, extra=["--snapshot-interval", "2"])
    _register_next(stack)
    assert len(asyncio.run(dead_letters(bootstrap, start))[src]) == 1


def test_an_overflowing_time_and_events_on_the_wrong_topic_are_dead_lettered_and_skipped_by_every_reader(stack):
    bootstrap = stack["bootstrap"]
    start = asyncio.run(end_offset(bootstrap, topics.DEADLETTER))
    t0 = int(time.time() * 1000) - 1
    overflow = orjson.loads(encode(new_event(InstanceHealthChanged(
        service=stack["service"], instance_id="r0", status="unhealthy", reason="x", observer="o"))))
    overflow["occurred_at"] = "0001-01-01T00:00:00+14:00"
    rule = new_event(RouteRuleUpserted(host=f"gbhost{RUN}", revision=1, routes=[{"destinations": [{"weight": 100}]}]))
    reg = new_event(InstanceRegistered(service=f"gb{RUN}", instance_id="gb-1", address="10.0.0.9", port=80))
    v1_labels = {"event_id": "e", "type": "instance.registered", "schema_version": 1, "producer": "old",
                 "occurred_at": "2020-01-01T00:00:00+00:00",
                 "payload": {"service": f"gbv1{RUN}", "instance_id": "i", "address": "10.0.0.8", "port": 80,
                             "labels": [1], "version": "v1"}}
    sources = asyncio.run(append_raw(bootstrap, [
        (topics.HEALTH, b"k", orjson.dumps(overflow)),
        (topics.REGISTRATIONS, rule.key.encode(), encode(rule)),
        (topics.HEALTH, reg.key.encode(), encode(reg)),
        (topics.REGISTRATIONS, b"k", orjson.dumps(v1_labels)),
    ]))
    found = wait_dead_lettered(bootstrap, sources, start, on_fail=lambda: _tails(stack))
    reasons = [found[s][0][1].reason for s in sources]
    assert "occurred_at" in reasons[0] and "out of range" in reasons[0]
    assert f"route_rule.upserted events belong on {topics.RULES}, not on '{topics.REGISTRATIONS}'" in reasons[1]
    assert f"instance.registered events belong on {topics.REGISTRATIONS}, not on '{topics.HEALTH}'" in reasons[2]
    assert "payload.labels" in reasons[3]
    _register_next(stack)
    # replay skips them the same way: no rule gbhost, no instance gb/gb-1, nothing from the v1 record
    for args in (("at", "--at", "now", "--no-snapshot"), ("at", "--at", "now")):
        mesh = replay_json(bootstrap, *args)
        names = {s["name"] for s in mesh["services"]}
        assert f"gb{RUN}" not in names and f"gbv1{RUN}" not in names and stack["service"] in names
        assert f"gbhost{RUN}" not in json.dumps(mesh)
    log = replay_json(bootstrap, "log", "--from", f"@{t0}", "--to", "now")
    dead = {(e["source"]["topic"], e["source"]["offset"]): e for e in log["entries"] if e["kind"] == "dead_letter"}
    for topic, _p, offset in sources:
        assert dead[(topic, offset)]["recorded"] is True
    diff = replay(bootstrap, "diff", "--from", f"@{t0}", "--to", "now", "--no-snapshot")
    assert diff.returncode == 0 and "dead-lettered" in diff.stdout, diff.stderr[-3000:]


# ---------------------------------------------------------------- the poison suite


def _decodes(record: tuple[str, bytes]) -> bool:
    topic, value = record
    try:
        decode(value, topic)
        return True
    except EventValidationError:
        return False


# one bad record of every category per example; a record that happens to be valid is not poison
poison_batch = st.tuples(*[s.filter(lambda r: not _decodes(r)) for s in poison.CATEGORIES.values()])


@settings(max_examples=POISON_EXAMPLES, derandomize=True, database=None, deadline=None,
          phases=[Phase.generate], suppress_health_check=list(HealthCheck))
@given(batch=poison_batch)
def test_poison_suite_every_bad_record_is_dead_lettered_and_the_next_valid_event_reaches_envoy(stack, batch):
    bootstrap = stack["bootstrap"]
    start = asyncio.run(end_offset(bootstrap, topics.DEADLETTER))
    sources = asyncio.run(append_raw(bootstrap, [(topic, b"poison", value) for topic, value in batch]))
    stack["bad"] += sources
    _register_next(stack)
    found = wait_dead_lettered(bootstrap, sources, start, on_fail=lambda: _tails(stack))
    for (topic, value), src in zip(batch, sources):
        [(record, letter)] = found[src]
        assert letter.reason and letter.stage == "decode"
        assert letter.value_bytes.size == len(value) and len(record.value) < 16 * 1024
    assert stack["projector"].alive()


def test_poison_suite_replay_and_a_health_checker_read_the_poisoned_log(stack, workdir):
    bootstrap = stack["bootstrap"]
    assert len(stack["bad"]) == POISON_EXAMPLES * len(poison.CATEGORIES)  # the suite above ran
    first = replay_json(bootstrap, "at", "--at", "now", "--no-snapshot")
    assert first["source"]["undecodable"] >= len(stack["bad"])
    assert first["source"]["undecodable_dead_lettered"] >= len(stack["bad"])
    assert replay_json(bootstrap, "at", "--at", "now")["format"] == 1
    for command, extra in (("log", ("--no-snapshot",)), ("diff", ())):  # (the other pairing ran above)
        result = replay(bootstrap, command, "--from", "-1h", "--to", "now", *extra)
        assert result.returncode == 0, f"replay {command} {extra}: {result.stderr[-3000:]}"
    # a central health checker folds the same log: it starts, catches up and runs (it exited 1 at start)
    status = workdir / "checker.status.json"
    checker = spawn("checker", [str(BIN / "registrar"), "--bootstrap", bootstrap, "healthcheck", "--checker-id",
                                f"poison{RUN}", "--group", f"poison{RUN}", "--status-file", str(status)], workdir)
    try:
        read = wait_until(lambda: status.exists() and json.loads(status.read_text()).get("caught_up")
                          and json.loads(status.read_text()), WAIT_S, "the checker to catch up", on_fail=checker.log_tail)
        assert read["undecodable"] >= len([s for s in stack["bad"] if s[0] != topics.RULES])
        assert checker.alive()
        log_text = checker.log_path.read_text(errors="replace")
        assert log_text.count("skipping undecodable record") <= 10  # said, bounded
    finally:
        assert checker.stop() == 0
