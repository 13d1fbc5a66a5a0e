"""Integration tests for the Kafka launcher: a real broker JVM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from events.kafka_security import connection_kwargs

from meshlog import kafka_local as kl

pytestmark = pytest.mark.integration

ADDRESS = re.compile(r"^127\.0\.0\.1:\d{2,5}$")


async def test_topic_produce_consume(kafka_bootstrap):
    topic = f"launcher-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**connection_kwargs(kafka_bootstrap))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        described = await admin.describe_topics([topic])
        assert len(described[0]["partitions"]) == 2
    finally:
        await admin.close()

    producer = AIOKafkaProducer(**connection_kwargs(kafka_bootstrap), enable_idempotence=True)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, key=b"svc-a", value=b"hello mesh")
    finally:
        await producer.stop()
    assert meta.topic == topic and meta.offset == 0

    consumer = AIOKafkaConsumer(topic, **connection_kwargs(kafka_bootstrap), auto_offset_reset="earliest",
                                group_id=f"g-{topic}")
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert (record.key, record.value, record.partition, record.offset) == (b"svc-a", b"hello mesh", meta.partition, 0)


async def test_auto_topic_creation_is_off(kafka_bootstrap):
    admin = AIOKafkaAdminClient(**connection_kwargs(kafka_bootstrap))
    await admin.start()
    try:
        topics = await admin.list_topics()
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**connection_kwargs(kafka_bootstrap), request_timeout_ms=3000)
    await producer.start()
    try:
        missing = f"never-created-{uuid.uuid4().hex[:8]}"
        assert missing not in topics
        with pytest.raises(Exception):
            await producer.send_and_wait(missing, b"x")
    finally:
        await producer.stop()


def test_start_failure_reports_log_tail(tmp_path):
    # Hold the PLAINTEXT port so the broker JVM starts, fails to bind, and exits.
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        broken = kl.LocalKafka(tmp_path / "data", port=port, start_timeout=60, keep_data=True)
        with pytest.raises(kl.KafkaLauncherError) as exc:
            broken.start()
    message = str(exc.value)
    assert "exited with code" in message
    assert "Address already in use" in message  # the JVM's own complaint, from the log tail
    assert str(broken.log_path) in message
    assert broken.process is not None and broken.process.poll() is not None  # no JVM left behind


def test_invalid_config_fails_before_broker_start(tmp_path):
    broken = kl.LocalKafka(tmp_path / "data", extra_properties={"num.partitions": "not-a-number"}, keep_data=True)
    with pytest.raises(kl.KafkaLauncherError, match="(?s)StorageTool format failed.*num.partitions"):
        broken.start()
    assert broken.process is None


# --- meshlog kafka up/status/down as a user would run it -------------------------------


def _meshlog(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshlog.cli", "kafka", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not kl.pid_alive(pid):  # exited (a not-yet-reaped zombie counts as gone)
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def cli_env(tmp_path):
    env = dict(os.environ, MESHLOG_HOME=str(tmp_path / "home"))
    env.pop("MESHLOG_KAFKA_BOOTSTRAP", None)
    yield env
    # Never leave a detached JVM behind, whatever the test did.
    state = tmp_path / "home" / "kafka" / "state.json"
    if state.exists():
        pid = json.loads(state.read_text())["pid"]
        if kl.pid_is_broker(pid, json.loads(state.read_text())["properties_path"]):
            kl.terminate_pid(pid, 5)


def test_cli_up_status_down(cli_env, tmp_path):
    assert _meshlog(cli_env, "status").returncode == 1

    up = _meshlog(cli_env, "up")
    assert up.returncode == 0, up.stderr
    bootstrap = up.stdout.strip().splitlines()[-1]
    assert ADDRESS.match(bootstrap), up.stdout
    assert "ready at" in up.stderr  # progress is logged to stderr, not stdout

    state = json.loads((tmp_path / "home" / "kafka" / "state.json").read_text())
    pid, data_dir = state["pid"], Path(state["data_dir"])
    assert state["bootstrap"] == bootstrap
    assert kl.pid_is_broker(pid, state["properties_path"])
    assert kl.broker_answers(bootstrap)

    # The broker really logs through log4j2 (SLF4J binding present and working).
    log_text = Path(state["log_path"]).read_text()
    assert " INFO " in log_text and "Kafka Server started" in log_text

    again = _meshlog(cli_env, "up", "--json")
    assert again.returncode == 0, again.stderr
    info = json.loads(again.stdout)
    assert info["bootstrap"] == bootstrap and info["pid"] == pid and info["already_running"] is True

    # another data dir is another broker: never answered with this one (its data would land here)
    other = _meshlog(cli_env, "up", "--data-dir", str(tmp_path / "other"))
    assert other.returncode == 1
    assert f"already running at {bootstrap} on data dir {data_dir}" in other.stderr and "MESHLOG_HOME" in other.stderr
    assert not (tmp_path / "other").exists()
    same = _meshlog(cli_env, "up", "--data-dir", str(data_dir), "--json")
    assert same.returncode == 0 and json.loads(same.stdout)["already_running"] is True

    status = _meshlog(cli_env, "status")
    assert status.returncode == 0
    assert status.stdout.startswith(f"running {bootstrap} pid={pid}")

    down = _meshlog(cli_env, "down")
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == "stopped"
    assert _gone(pid), f"JVM {pid} still alive after down"
    assert not data_dir.exists()

    after = _meshlog(cli_env, "status", "--json")
    assert after.returncode == 1
    assert json.loads(after.stdout)["running"] is False


def test_cli_keep_data_and_restart_same_cluster(cli_env, tmp_path):
    data_dir = tmp_path / "kdata"
    up = _meshlog(cli_env, "up", "--data-dir", str(data_dir))
    assert up.returncode == 0, up.stderr
    pid = json.loads((tmp_path / "home" / "kafka" / "state.json").read_text())["pid"]
    meta = (data_dir / "logs" / "meta.properties").read_text()
    cluster_id = re.search(r"^cluster\.id=(\S+)", meta, re.M).group(1)
    assert kl.is_valid_cluster_id(cluster_id)

    assert _meshlog(cli_env, "down", "--keep-data").returncode == 0
    assert _gone(pid)
    assert (data_dir / "logs" / "meta.properties").exists()

    # Restarting on the kept data dir reuses the formatted storage (same cluster id).
    up2 = _meshlog(cli_env, "up", "--data-dir", str(data_dir), "--json")
    assert up2.returncode == 0, up2.stderr
    info = json.loads(up2.stdout)
    assert info["pid"] != pid
    described = kl.describe_cluster(info["bootstrap"])
    assert described["cluster_id"] == cluster_id

    assert _meshlog(cli_env, "down").returncode == 0
    assert _gone(info["pid"])
    assert not data_dir.exists()


def test_the_readme_path_up_then_publish_and_a_missing_topic_named_in_one_line(cli_env, tmp_path):
    """Issue 11, item 10: `meshlog kafka up` then `registrar publish` works as the commands table shows;
    a writer facing a broker without the topics says so in one line, naming the command that creates them."""
    registrar = str(Path(sys.executable).with_name("registrar"))
    publish = [registrar, "publish", "--service", "first", "--instance-id", "first-1", "--address", "127.0.0.1",
               "--port", "9080"]
    up = _meshlog(cli_env, "up")
    assert up.returncode == 0, up.stderr
    bootstrap = up.stdout.strip().splitlines()[-1]
    try:
        first = subprocess.run(publish, env=cli_env, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        assert "appended instance.registered first/first-1 -> meshlog.registrations" in first.stdout

        async def drop_registrations():
            admin = AIOKafkaAdminClient(**connection_kwargs(bootstrap))
            await admin.start()
            try:
                await admin.delete_topics(["meshlog.registrations"])
                for _ in range(100):  # deletion is asynchronous in KRaft
                    if "meshlog.registrations" not in await admin.list_topics():
                        return
                    await asyncio.sleep(0.1)
            finally:
                await admin.close()

        asyncio.run(drop_registrations())
        missing = subprocess.run(publish, env=cli_env, capture_output=True, text=True, timeout=60)
        assert missing.returncode == 3
        lines = missing.stderr.strip().splitlines()
        assert len(lines) == 1, missing.stderr  # no aiokafka "Topic ... not found" retry spam
        assert "has no topic meshlog.registrations" in lines[0] and "`meshlog topics ensure`" in lines[0]
        assert "nothing was appended" in lines[0]

        ensure = subprocess.run([sys.executable, "-m", "meshlog.cli", "topics", "ensure"], env=cli_env,
                                capture_output=True, text=True, timeout=60)
        assert ensure.returncode == 0, ensure.stderr
        assert "created  meshlog.registrations" in ensure.stdout
        again = subprocess.run(publish, env=cli_env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
    finally:
        assert _meshlog(cli_env, "down").returncode == 0
