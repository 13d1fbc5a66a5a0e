"""Unit tests for meshlog.kafka_local: the pure parts, no broker and no network."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from meshlog import cli
from meshlog import kafka_local as kl
from meshlog.kafka_local import detached

POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


# --- POM ------------------------------------------------------------------


def test_pom_declares_kafka_logging_binding_and_slf4j2():
    root = ET.fromstring(kl.render_pom("4.1.1"))
    deps = {
        (d.findtext("m:groupId", namespaces=POM_NS), d.findtext("m:artifactId", namespaces=POM_NS)):
            d.findtext("m:version", namespaces=POM_NS)
        for d in root.findall("m:dependencies/m:dependency", POM_NS)
    }
    assert deps[("org.apache.kafka", "kafka_2.13")] == "4.1.1"
    assert deps[("org.apache.logging.log4j", "log4j-slf4j2-impl")] == kl.LOG4J_VERSION
    assert deps[("org.apache.logging.log4j", "log4j-core")] == kl.LOG4J_VERSION
    # Kafka's POM brings slf4j-api 1.7.x; the slf4j2 binding needs 2.x pinned directly.
    assert deps[("org.slf4j", "slf4j-api")].startswith("2.")
    assert root.findtext("m:packaging", namespaces=POM_NS) == "pom"
    plugin = root.find("m:build/m:pluginManagement/m:plugins/m:plugin", POM_NS)
    assert plugin.findtext("m:artifactId", namespaces=POM_NS) == "maven-dependency-plugin"


def test_missing_jars_names_what_is_absent():
    complete = ["kafka_2.13-4.1.1.jar", "kafka-clients-4.1.1.jar", "kafka-server-4.1.1.jar",
                "log4j-core-2.24.3.jar", "log4j-slf4j2-impl-2.24.3.jar", "slf4j-api-2.0.16.jar"]
    assert kl.missing_jars(complete, "4.1.1") == []
    with_old_slf4j = [n for n in complete if not n.startswith("slf4j")] + ["slf4j-api-1.7.36.jar"]
    missing = kl.missing_jars(with_old_slf4j, "4.1.1")
    assert len(missing) == 1 and "slf4j-api-2" in missing[0]
    assert len(kl.missing_jars(complete, "4.2.0")) == 3  # the three versioned Kafka jars


# --- server.properties / log4j2 ---------------------------------------------


def _parse_props(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k] = v
    return out


def test_server_properties_single_node_kraft(tmp_path):
    props = _parse_props(kl.render_properties(
        kl.server_properties(port=41000, controller_port=41001, log_dir=tmp_path / "logs")))
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:41001"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:41000,CONTROLLER://127.0.0.1:41001"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:41000"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["log.dirs"] == str(tmp_path / "logs")
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr", "share.coordinator.state.topic.replication.factor",
                "share.coordinator.state.topic.min.isr", "num.partitions"):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"
    assert "0.0.0.0" not in "".join(props.values())


def test_server_properties_of_a_three_node_cluster_replicate_the_internal_topics(tmp_path):
    voters = {1: 41001, 2: 41003, 3: 41005}
    props = kl.server_properties(port=41002, controller_port=41003, node_id=2, log_dir=tmp_path, voters=voters)
    assert props["node.id"] == "2"
    assert props["process.roles"] == "broker,controller"  # combined: every node is a voter
    assert props["controller.quorum.voters"] == "1@127.0.0.1:41001,2@127.0.0.1:41003,3@127.0.0.1:41005"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:41002,CONTROLLER://127.0.0.1:41003"
    for key in ("default.replication.factor", "offsets.topic.replication.factor",
                "transaction.state.log.replication.factor", "share.coordinator.state.topic.replication.factor"):
        assert props[key] == "3", key
    for key in ("min.insync.replicas", "transaction.state.log.min.isr", "share.coordinator.state.topic.min.isr"):
        assert props[key] == "2", key
    assert props["unclean.leader.election.enable"] == "false"
    # a dead node is fenced (and loses its leaderships) after a short session, not Kafka's 9 s
    assert int(props["broker.session.timeout.ms"]) <= 3000
    single = kl.server_properties(port=1, controller_port=2, log_dir=tmp_path)
    assert "broker.session.timeout.ms" not in single and single["min.insync.replicas"] == "1"


def test_server_properties_refuse_a_node_outside_its_quorum(tmp_path):
    with pytest.raises(ValueError, match="not among the voters"):
        kl.server_properties(port=1, controller_port=9, node_id=2, log_dir=tmp_path, voters={1: 2, 2: 4})


def test_cluster_layout_is_kept_and_a_damaged_one_is_a_clear_error(tmp_path):
    assert kl.load_cluster_layout(tmp_path) is None
    cluster = kl.LocalCluster(3, tmp_path / "c")
    cluster._prepare()  # chooses ports and the cluster id, writes cluster.json; starts nothing
    layout = kl.load_cluster_layout(tmp_path / "c")
    assert layout["brokers"] == 3 and kl.is_valid_cluster_id(layout["cluster_id"])
    ports = [p for n in layout["nodes"] for p in (n["port"], n["controller_port"])]
    assert len(set(ports)) == 6
    assert cluster.bootstrap == ",".join(f"127.0.0.1:{n['port']}" for n in layout["nodes"])
    again = kl.LocalCluster(3, tmp_path / "c")
    again._prepare()
    assert again.bootstrap == cluster.bootstrap and again.cluster_id == cluster.cluster_id  # the same cluster
    with pytest.raises(kl.KafkaLauncherError, match="holds a cluster of 3 brokers, not 2"):
        kl.LocalCluster(2, tmp_path / "c")._prepare()
    (tmp_path / "c" / "cluster.json").write_text('{"cluster_id": "x", "brokers": 3, "nodes": []}')
    with pytest.raises(kl.KafkaLauncherError, match="cluster.json is unreadable"):
        kl.load_cluster_layout(tmp_path / "c")
    with pytest.raises(kl.KafkaLauncherError, match="out of range"):
        kl.LocalCluster(0)


@pytest.mark.parametrize("raw, expected", [("", 1), ("3", 3), (" 2 ", 2)])
def test_brokers_for_tests_reads_the_switch(monkeypatch, raw, expected):
    monkeypatch.setenv(kl.ENV_BROKERS, raw)
    assert kl.brokers_for_tests() == expected


@pytest.mark.parametrize("raw", ["0", "x", "-1", "99"])
def test_brokers_for_tests_names_a_bad_switch(monkeypatch, raw):
    monkeypatch.setenv(kl.ENV_BROKERS, raw)
    with pytest.raises(kl.KafkaLauncherError, match="MESHLOG_KAFKA_BROKERS"):
        kl.brokers_for_tests()


def test_server_properties_extra_overrides_and_escaping():
    props = kl.server_properties(port=1, controller_port=2, log_dir="C:\\data",
                                 extra={"auto.create.topics.enable": True, "log.cleaner.backoff.ms": 100})
    assert props["auto.create.topics.enable"] == "true"
    assert props["log.cleaner.backoff.ms"] == "100"
    rendered = kl.render_properties(props)
    assert "log.dirs=C:\\\\data\n" in rendered  # backslash escaped for java.util.Properties


def test_log4j2_config_is_xml_and_points_at_log_file(tmp_path):
    log_file = tmp_path / "a&b" / "kafka.log"
    root = ET.fromstring(kl.render_log4j2_config(log_file))
    file_appender = root.find("Appenders/File")
    assert file_appender.get("fileName") == str(log_file)
    levels = {lg.get("name"): lg.get("level") for lg in root.findall("Loggers/Logger")}
    assert levels["kafka"] == "INFO" and levels["org.apache.kafka"] == "INFO"
    assert root.find("Loggers/Root").get("level") == "WARN"  # third-party libraries quiet


# --- ids, ports, java version --------------------------------------------------


def test_random_cluster_id_is_kafka_uuid():
    ids = {kl.random_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cid in ids:
        assert len(cid) == 22 and "=" not in cid and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16
        assert kl.is_valid_cluster_id(cid)


@pytest.mark.parametrize("bad", ["", "short", "A" * 23, "AAAAAAAAAAAAAAAAAAAAAA", "abc+def/ghijklmnopqrst", 42])
def test_is_valid_cluster_id_rejects(bad):
    assert not kl.is_valid_cluster_id(bad)  # AAAA... decodes to 16 zero bytes (Kafka's ZERO_UUID)


def test_free_ports_are_distinct_and_bindable():
    ports = kl.free_ports(3)
    assert len(set(ports)) == 3
    for p in ports:
        assert 1024 <= p <= 65535
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_free_port_respects_exclude():
    first = kl.free_port()
    assert kl.free_port(exclude=[first]) != first


@pytest.mark.parametrize("text,major", [
    ('openjdk version "17.0.15" 2025-04-15', 17),
    ('java version "1.8.0_392"', 8),
    ('openjdk version "21-ea" 2023-09-19', 21),
    ('openjdk version "11.0.2+9"', 11),
])
def test_parse_java_major(text, major):
    assert kl.parse_java_major(text) == major


def test_parse_java_major_garbage():
    with pytest.raises(ValueError):
        kl.parse_java_major("command not found")


def _fake_tool(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def test_check_java_rejects_old_java(tmp_path, monkeypatch):
    java = _fake_tool(tmp_path / "java", """
        import sys
        sys.stderr.write('openjdk version "11.0.20" 2023-07-18\\n')
    """)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(kl.KafkaLauncherError, match="Java 11.*17"):
        kl.check_java(str(java))


def test_check_java_missing(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(kl.KafkaLauncherError, match="'java' not found"):
        kl.check_java()


# --- jar cache ------------------------------------------------------------------

FAKE_MVN = """
    import os, sys
    args = sys.argv[1:]
    calls = os.environ["FAKE_MVN_CALLS"]
    with open(calls, "a") as f:
        f.write(" ".join(args) + "\\n")
    if os.environ.get("FAKE_MVN_FAIL"):
        out = [a.split("=", 1)[1] for a in args if a.startswith("-DoutputDirectory=")][0]
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, "kafka_2.13-4.1.1.jar"), "w").write("half")
        sys.stderr.write("Could not resolve dependencies: network unreachable\\n")
        sys.exit(1)
    assert "dependency:copy-dependencies" in args and "-DincludeScope=runtime" in args
    pom = args[args.index("-f") + 1]
    assert "kafka_2.13" in open(pom).read()
    out = [a.split("=", 1)[1] for a in args if a.startswith("-DoutputDirectory=")][0]
    os.makedirs(out, exist_ok=True)
    for name in ["kafka_2.13-4.1.1.jar", "kafka-clients-4.1.1.jar", "kafka-server-4.1.1.jar",
                 "log4j-core-2.24.3.jar", "log4j-slf4j2-impl-2.24.3.jar", "slf4j-api-2.0.16.jar"]:
        open(os.path.join(out, name), "w").write("jar:" + name)
"""


@pytest.fixture
def fake_mvn(tmp_path, monkeypatch):
    calls = tmp_path / "mvn-calls.txt"
    calls.write_text("")
    monkeypatch.setenv("FAKE_MVN_CALLS", str(calls))
    return _fake_tool(tmp_path / "mvn", FAKE_MVN), calls


def _ncalls(calls: Path) -> int:
    return len(calls.read_text().splitlines())


def test_fetch_writes_marker_then_cache_hit_skips_mvn(tmp_path, fake_mvn, monkeypatch):
    mvn, calls = fake_mvn
    cache = tmp_path / "cache"
    libs = kl.ensure_kafka_jars("4.1.1", cache, mvn=str(mvn))
    assert libs == cache / "kafka" / "4.1.1" / "libs"
    assert kl.jars_ready(libs)
    marker = json.loads((libs / kl.MARKER_NAME).read_text())
    assert "kafka_2.13-4.1.1.jar" in marker["jars"]
    assert (cache / "kafka" / "4.1.1" / "pom.xml").exists()
    assert not list((cache / "kafka" / "4.1.1").glob(".fetch-*"))  # temp dir cleaned up
    assert _ncalls(calls) == 1
    # Second call: cache hit with no mvn at all on PATH.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert kl.ensure_kafka_jars("4.1.1", cache, mvn="mvn-that-does-not-exist") == libs
    assert _ncalls(calls) == 1


def test_env_cache_dir_is_used(tmp_path, fake_mvn, monkeypatch):
    mvn, _ = fake_mvn
    monkeypatch.setenv("MESHLOG_CACHE_DIR", str(tmp_path / "envcache"))
    assert kl.kafka_libs_dir() == tmp_path / "envcache" / "kafka" / kl.KAFKA_VERSION / "libs"
    assert kl.ensure_kafka_jars("4.1.1", mvn=str(mvn)) == tmp_path / "envcache" / "kafka" / "4.1.1" / "libs"


def test_failed_fetch_leaves_nothing_usable(tmp_path, fake_mvn, monkeypatch):
    mvn, calls = fake_mvn
    cache = tmp_path / "cache"
    monkeypatch.setenv("FAKE_MVN_FAIL", "1")
    with pytest.raises(kl.KafkaLauncherError, match="network unreachable"):
        kl.ensure_kafka_jars("4.1.1", cache, mvn=str(mvn))
    vdir = cache / "kafka" / "4.1.1"
    assert not (vdir / "libs").exists()
    assert not list(vdir.glob(".fetch-*"))
    monkeypatch.delenv("FAKE_MVN_FAIL")
    assert kl.jars_ready(kl.ensure_kafka_jars("4.1.1", cache, mvn=str(mvn)))
    assert _ncalls(calls) == 2


def test_half_finished_libs_dir_is_redone(tmp_path, fake_mvn):
    mvn, calls = fake_mvn
    libs = tmp_path / "cache" / "kafka" / "4.1.1" / "libs"
    libs.mkdir(parents=True)
    (libs / "kafka_2.13-4.1.1.jar").write_text("truncated")  # no marker: an interrupted fetch
    assert not kl.jars_ready(libs)
    kl.ensure_kafka_jars("4.1.1", tmp_path / "cache", mvn=str(mvn))
    assert _ncalls(calls) == 1
    assert (libs / "kafka_2.13-4.1.1.jar").read_text() == "jar:kafka_2.13-4.1.1.jar"
    assert kl.jars_ready(libs)


def test_marker_with_damaged_jar_is_not_ready(tmp_path, fake_mvn):
    mvn, _ = fake_mvn
    libs = kl.ensure_kafka_jars("4.1.1", tmp_path / "cache", mvn=str(mvn))
    (libs / "kafka-clients-4.1.1.jar").write_text("x")  # size changed
    assert not kl.jars_ready(libs)
    (libs / "kafka-clients-4.1.1.jar").unlink()
    assert not kl.jars_ready(libs)


def test_missing_mvn_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(kl.KafkaLauncherError, match="'mvn'.*not found"):
        kl.ensure_kafka_jars("4.1.1", tmp_path / "cache")


def test_incomplete_resolution_is_rejected(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    monkeypatch.setenv("FAKE_MVN_CALLS", str(calls))
    mvn = _fake_tool(tmp_path / "mvn", FAKE_MVN.replace('"slf4j-api-2.0.16.jar"', '"slf4j-api-1.7.36.jar"'))
    with pytest.raises(kl.KafkaLauncherError, match="slf4j-api-2"):
        kl.ensure_kafka_jars("4.1.1", tmp_path / "cache", mvn=str(mvn))
    assert not (tmp_path / "cache" / "kafka" / "4.1.1" / "libs").exists()


# --- processes --------------------------------------------------------------------


def test_terminate_pid_escalates_to_sigkill():
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    kl.terminate_pid(proc.pid, timeout=0.5, proc=proc)
    assert proc.wait(1) == -signal.SIGKILL
    assert time.monotonic() - t0 < 5


def test_pdeathsig_kills_child_when_parent_dies(tmp_path):
    pidfile = tmp_path / "child.pid"
    parent_code = textwrap.dedent(f"""
        import os, subprocess, sys, time
        from meshlog.procs import tied_to_parent
        argv, kwargs = tied_to_parent([sys.executable, "-c", "import time; time.sleep(60)"], own_group=True)
        child = subprocess.Popen(argv, **kwargs)
        open({str(pidfile)!r}, "w").write(str(child.pid))
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    try:
        deadline = time.monotonic() + 20
        while not (pidfile.exists() and pidfile.read_text()):
            assert time.monotonic() < deadline, "parent never started the child"
            time.sleep(0.05)
        child_pid = int(pidfile.read_text())
        assert kl.pid_alive(child_pid)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while kl.pid_alive(child_pid):
            assert time.monotonic() < deadline, "child survived its parent"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_pid_is_broker_guards_pid_reuse(tmp_path):
    assert not kl.pid_is_broker(os.getpid(), tmp_path / "server.properties")  # we are not a kafka JVM
    assert not kl.pid_alive(2**22 + 12345)


# --- data dir and state -------------------------------------------------------------


def test_remove_data_dir_only_with_marker(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    assert kl.remove_data_dir(foreign) is False
    assert (foreign / "precious.txt").exists()
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / kl.DATA_MARKER_NAME).write_text("")
    assert kl.remove_data_dir(ours) is True
    assert not ours.exists()


def test_refuses_foreign_non_empty_data_dir(tmp_path):
    (tmp_path / "something").write_text("x")
    with pytest.raises(kl.KafkaLauncherError, match="not created by meshlog"):
        kl.LocalKafka(tmp_path)._prepare_data_dir()


def test_status_without_and_with_stale_state(tmp_path, monkeypatch):
    monkeypatch.setenv("MESHLOG_HOME", str(tmp_path / "home"))
    assert kl.state_file_path() == tmp_path / "home" / "kafka" / "state.json"
    st = kl.status()
    assert (st.running, st.answering, st.state) == (False, False, None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    data = tmp_path / "data"
    data.mkdir()
    (data / kl.DATA_MARKER_NAME).write_text("")
    detached._save_state(kl.KafkaState(pid=dead.pid, bootstrap="127.0.0.1:1", data_dir=str(data),
                                 log_path=str(data / "kafka.log"), properties_path=str(data / "server.properties")))
    st = kl.status()
    assert st.state is not None and st.state.pid == dead.pid and not st.running
    before = kl.down()  # cleans up the stale record and its data dir
    assert before.running is False
    assert not kl.state_file_path().exists() and not data.exists()


# --- CLI ----------------------------------------------------------------------------


def test_cli_parser_and_help(capsys):
    args = cli.build_parser().parse_args(["kafka", "up", "--json", "--port", "9999"])
    assert args.json and args.port == 9999 and callable(args.func)
    with pytest.raises(SystemExit) as exc:
        cli.main(["kafka", "status", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and "MESHLOG_HOME" in out
    with pytest.raises(SystemExit) as exc:
        cli.main(["kafka"])
    assert exc.value.code == 2


def test_cli_status_and_down_with_nothing_running(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MESHLOG_HOME", str(tmp_path))
    assert cli.main(["kafka", "status"]) == 1
    assert capsys.readouterr().out.strip() == "not running"
    assert cli.main(["kafka", "status", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {"running": False, "answering": False}
    assert cli.main(["kafka", "down"]) == 0
    assert capsys.readouterr().out.strip() == "not running"


def test_kafka_for_tests_prefers_env(monkeypatch):
    monkeypatch.setenv("MESHLOG_KAFKA_BOOTSTRAP", "10.1.2.3:9092")
    monkeypatch.setattr(kl, "docker_engine_available", lambda *a, **k: pytest.fail("docker checked"))
    with kl.kafka_for_tests() as bootstrap:
        assert bootstrap == "10.1.2.3:9092"


def test_docker_check_is_quick_without_engine(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no.sock")
    t0 = time.monotonic()
    assert kl.docker_engine_available(timeout=1.0) is False
    assert time.monotonic() - t0 < 5


def test_secure_cluster_nodes_share_one_ca_and_each_has_its_own_certificate(tmp_path):
    """--secure --brokers 3: the nodes share tls_dir (one CA, one admin) but never rewrite each other's keystore."""
    stores = []
    for node_id in (1, 2, 3):
        node = kl.LocalKafka(tmp_path / f"node-{node_id}", node_id=node_id, secure=True, tls_dir=tmp_path / "tls",
                             host="10.215.1.2")
        node._prepare_data_dir()
        stores.append(node._prepare_tls()["ssl.keystore.location"])
    assert len(set(stores)) == 3 and all(f"broker_{i}" in s for i, s in zip((1, 2, 3), stores))
    assert len(list((tmp_path / "tls" / "ca").iterdir())) >= 1
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((Path(stores[1]).parent / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "10.215.1.2" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}  # its own address


def test_port_accepts_any_address_of_a_bootstrap_list():
    """A cluster answers while its first node is down: the probe tries every address."""
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed.bind(("127.0.0.1", 0))  # bound, not listening: refuses connections
        dead, alive = closed.getsockname()[1], listening.getsockname()[1]
        assert kl.port_accepts(f"127.0.0.1:{dead},127.0.0.1:{alive}")
        assert not kl.port_accepts(f"127.0.0.1:{dead}")


def test_a_single_broker_and_a_cluster_never_start_on_each_others_data(tmp_path):
    cluster = kl.LocalCluster(3, tmp_path / "c")
    cluster._prepare()
    with pytest.raises(kl.KafkaLauncherError, match="holds a cluster's data"):
        kl.LocalKafka(tmp_path / "c")._prepare_data_dir()
    (tmp_path / "single" / "logs").mkdir(parents=True)
    (tmp_path / "single" / kl.DATA_MARKER_NAME).write_text("")
    (tmp_path / "single" / "logs" / "meta.properties").write_text("cluster.id=x\n")
    with pytest.raises(kl.KafkaLauncherError, match="single broker's data"):
        kl.LocalCluster(3, tmp_path / "single")._prepare()
