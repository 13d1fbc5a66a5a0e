"""Story: the registrar appends validated events to the real broker, and nothing else.

Runs the real `registrar` console script against the session's Kafka broker
and reads the topics back with a plain aiokafka consumer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import NewTopic

from events import topics
from events.admin import connect_admin, ensure_topics
from events.codec import decode_record
from events.kafka_security import connection_kwargs
from events.topics import TopicSpec
from tests.support.log import end_offset, end_offsets, read_since

pytestmark = pytest.mark.integration

REGISTRAR = str(Path(sys.executable).with_name("registrar"))


def run_registrar(bootstrap: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [REGISTRAR, "--bootstrap", bootstrap, "--timeout", "20", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MESHLOG_PRODUCER": "integration-test"},
    )


async def read_range(bootstrap: str, topic: str, start: int, stop: int):
    """Records of partition 0 with start <= offset < stop, read_committed."""
    consumer = AIOKafkaConsumer(**connection_kwargs(bootstrap), isolation_level="read_committed", enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, start)
        records = []
        while await consumer.position(tp) < stop:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            records += [r for r in batch.get(tp, []) if r.offset < stop]
        return records
    finally:
        await consumer.stop()


@pytest.fixture(scope="session")
async def mesh_topics(kafka_bootstrap):
    await ensure_topics(kafka_bootstrap)
    return kafka_bootstrap


async def test_ensure_topics_creates_every_topic_with_its_settings_and_is_idempotent(mesh_topics):
    report = await ensure_topics(mesh_topics)
    assert report.created == [] and report.consistent
    assert sorted(report.ok) == sorted(t.name for t in topics.ALL_TOPICS)
    admin = await connect_admin(mesh_topics)
    try:
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topics.REGISTRATIONS)])
        config = {e[0]: e[1] for e in response.resources[0][4]}
    finally:
        await admin.close()
    assert config["retention.ms"] == "-1"
    assert config["cleanup.policy"] == "delete"
    assert config["message.timestamp.type"] == "LogAppendTime"


async def test_a_mismatched_topic_is_reported_and_left_unchanged(mesh_topics):
    name = f"meshlog-test.mismatch-{uuid.uuid4().hex[:8]}"
    admin = await connect_admin(mesh_topics)
    try:
        # as many copies as ensure_topics wants on this broker or cluster: only the two differences below
        replicas, _ = topics.replication_for(len((await admin.describe_cluster())["brokers"]))
        await admin.create_topics([NewTopic(name, 2, replicas, topic_configs={"cleanup.policy": "delete"})])
    finally:
        await admin.close()
    wanted = TopicSpec(name, 1, {"cleanup.policy": "compact"})
    report = await ensure_topics(mesh_topics, [wanted])
    assert {(m.setting, m.expected, m.actual) for m in report.mismatches} == {
        ("partitions", "1", "2"),
        ("cleanup.policy", "compact", "delete"),
    }
    again = await ensure_topics(mesh_topics, [wanted])
    assert len(again.mismatches) == 2  # still there: nothing was changed behind the operator's back


async def test_a_topic_with_fewer_partitions_is_reported_with_the_command_and_raised_only_when_asked(mesh_topics):
    """The upgrade of a log created before the event topics had more partitions."""
    name = f"meshlog-test.partitions-{uuid.uuid4().hex[:8]}"
    spec = TopicSpec(name, 3, {"cleanup.policy": "delete"})
    admin = await connect_admin(mesh_topics)
    try:
        replicas, _ = topics.replication_for(len((await admin.describe_cluster())["brokers"]))
        await admin.create_topics([NewTopic(name, 1, replicas, topic_configs={"cleanup.policy": "delete"})])
    finally:
        await admin.close()
    report = await ensure_topics(mesh_topics, [spec])
    [mismatch] = report.mismatches
    assert (mismatch.setting, mismatch.expected, mismatch.actual) == ("partitions", "3", "1")
    assert "meshlog topics ensure --add-partitions" in str(mismatch)
    assert len((await ensure_topics(mesh_topics, [spec])).mismatches) == 1  # left as it was

    raised = await ensure_topics(mesh_topics, [spec], add_partitions=True)
    assert [(m.setting, m.actual, m.expected) for m in raised.updated] == [("partitions", "1", "3")]
    assert raised.consistent
    after = await ensure_topics(mesh_topics, [spec])
    assert after.consistent and after.ok == [name]


async def test_publish_appends_exactly_one_record_with_a_log_append_time(mesh_topics):
    service = f"svc-{uuid.uuid4().hex[:8]}"
    before = await end_offset(mesh_topics, topics.REGISTRATIONS)
    starts = await end_offsets(mesh_topics, topics.REGISTRATIONS)
    result = run_registrar(
        mesh_topics, "--json", "publish", "--service", service, "--instance-id", "i-1", "--address", "127.0.0.1",
        "--port", "8080", "--label", "version=v1", "--label", "zone=a", "--depends-on", "ratings",
        "--node-id", f"{service}-node", "--inbound-port", "15001", "--outbound-port", "15002",
    )
    assert result.returncode == 0, result.stderr
    printed = orjson.loads(result.stdout.strip().splitlines()[-1])
    after = await end_offset(mesh_topics, topics.REGISTRATIONS)
    assert after == before + 1
    assert printed["topic"] == topics.REGISTRATIONS and printed["offset"] == starts[printed["partition"]]

    [record] = await read_since(mesh_topics, topics.REGISTRATIONS, starts)
    assert record.timestamp_type == 1  # LogAppendTime: the broker's clock, not the producer's
    assert record.timestamp == printed["timestamp_ms"]
    assert record.key == f"{service}/i-1".encode()
    logged = decode_record(record)
    assert logged.envelope.producer == "integration-test"
    payload = logged.payload
    assert (payload.service, payload.port, payload.labels, payload.depends_on) == (
        service, 8080, {"version": "v1", "zone": "a"}, ("ratings",),
    )
    assert payload.sidecar.inbound_port == 15001


async def test_publish_with_port_70000_exits_non_zero_naming_port_and_appends_nothing(mesh_topics):
    before = await end_offset(mesh_topics, topics.REGISTRATIONS)
    result = run_registrar(
        mesh_topics, "publish", "--service", "web", "--instance-id", "w1", "--address", "127.0.0.1", "--port", "70000"
    )
    assert result.returncode == 2
    assert "port" in result.stderr
    assert await end_offset(mesh_topics, topics.REGISTRATIONS) == before


async def test_health_and_deregister_go_to_their_topics(mesh_topics):
    service = f"svc-{uuid.uuid4().hex[:8]}"
    health_before = await end_offsets(mesh_topics, topics.HEALTH)
    reg_before = await end_offsets(mesh_topics, topics.REGISTRATIONS)
    assert run_registrar(mesh_topics, "health", "--service", service, "--instance-id", "i-1", "--status", "draining",
                         "--reason", "deploy").returncode == 0
    assert run_registrar(mesh_topics, "deregister", "--service", service, "--instance-id", "i-1").returncode == 0
    [health] = [r for r in await read_since(mesh_topics, topics.HEALTH, health_before)
                if r.key == f"{service}/i-1".encode()]
    assert decode_record(health).payload.status == "draining"
    [dereg] = [r for r in await read_since(mesh_topics, topics.REGISTRATIONS, reg_before)
               if r.key == f"{service}/i-1".encode()]
    assert decode_record(dereg).envelope.type == "instance.deregistered"


async def test_rules_apply_appends_every_document_in_one_transaction(mesh_topics, tmp_path):
    host = f"svc-{uuid.uuid4().hex[:8]}"
    rules = tmp_path / "canary.yaml"
    rules.write_text(
        f"""
kind: DestinationPolicy
service: {host}
revision: 1
subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
kind: RouteRule
host: {host}
revision: 1
routes:
  - destinations: [{{subset: v1, weight: 90}}, {{subset: v2, weight: 10}}]
"""
    )
    before = await end_offset(mesh_topics, topics.RULES)
    result = run_registrar(mesh_topics, "--json", "rules", "apply", "-f", str(rules))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 2
    after = await end_offset(mesh_topics, topics.RULES)
    records = await read_range(mesh_topics, topics.RULES, before, after)
    assert [decode_record(r).envelope.type for r in records] == [
        "destination_policy.upserted",
        "route_rule.upserted",
    ]


async def test_a_rules_file_with_one_bad_document_appends_nothing(mesh_topics, tmp_path):
    rules = tmp_path / "bad.yaml"
    rules.write_text(
        "kind: DestinationPolicy\nservice: a\nrevision: 1\n---\n"
        "kind: RouteRule\nhost: a\nrevision: 1\nroutes: [{destinations: [{subset: v1, weight: 90}]}]\n"
    )
    before = await end_offset(mesh_topics, topics.RULES)
    result = run_registrar(mesh_topics, "rules", "apply", "-f", str(rules))
    assert result.returncode == 2
    assert "document 2 (RouteRule a).routes.0.destinations" in result.stderr
    assert await end_offset(mesh_topics, topics.RULES) == before
