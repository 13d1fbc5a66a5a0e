"""Run a real Apache Kafka (KRaft) broker, or a cluster of them, locally, without Docker.

The broker jars come from Maven Central (resolved once with ``mvn`` into a
cache directory); the broker is a plain JVM child process listening on
127.0.0.1 only, on ports chosen at run time.

Main entry points:

* :func:`ensure_kafka_jars` -- fetch (once) and return the ``libs`` directory.
* :class:`LocalKafka` -- start/stop one broker; also a context manager.
* :class:`LocalCluster` -- several nodes (each broker and controller), each its
  own JVM, data dir and ports, kept across restarts.
* :func:`up`, :func:`down`, :func:`status` -- a detached broker or cluster tracked by a
  state file (used by ``meshlog kafka up|down|status``).
* :func:`kafka_for_tests` -- context manager yielding a bootstrap address:
  ``$MESHLOG_KAFKA_BOOTSTRAP``, else a testcontainers Kafka when a Docker
  engine answers, else :class:`LocalKafka`.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Iterator, Mapping, Sequence
from xml.sax.saxutils import escape as _xml_escape
from xml.sax.saxutils import quoteattr as _xml_attr

from events.files import write_file_atomic
from events.kafka_security import KafkaSecurity, connection_kwargs, to_env
from meshlog.procs import die_with_parent

log = logging.getLogger("meshlog.kafka")

KAFKA_VERSION = "4.1.1"
SCALA_BINARY_VERSION = "2.13"
LOG4J_VERSION = "2.24.3"
# Kafka 4.1.1's POM pulls slf4j-api 1.7.36; log4j-slf4j2-impl needs the 2.x API.
# Declaring it directly in our POM makes it win (Maven: nearest declaration wins).
SLF4J_VERSION = "2.0.16"
DEPENDENCY_PLUGIN_VERSION = "3.8.1"
MIN_JAVA = 17
HOST = "127.0.0.1"

DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 20.0
# Measured on 2 vCPU: C1-only + a small serial-GC heap starts ~1 s faster
# than the defaults and is plenty for tests and demos.  Override with
# $MESHLOG_KAFKA_JVM_OPTS (whitespace separated) or LocalKafka(jvm_opts=...).
DEFAULT_JVM_OPTS: tuple[str, ...] = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)
# Testcontainers image used when a Docker engine is available (Kafka 4.1 line).
DEFAULT_CONTAINER_IMAGE = "confluentinc/cp-kafka:8.1.0"

MARKER_NAME = ".meshlog-complete"
DATA_MARKER_NAME = ".meshlog-kafka-data"
BROKER_LOG_NAME = "kafka.log"
CONSOLE_LOG_NAME = "kafka.console.log"
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL_CLASS = "kafka.tools.StorageTool"

ENV_CACHE_DIR = "MESHLOG_CACHE_DIR"
ENV_HOME = "MESHLOG_HOME"
ENV_BOOTSTRAP = "MESHLOG_KAFKA_BOOTSTRAP"
ENV_JVM_OPTS = "MESHLOG_KAFKA_JVM_OPTS"
ENV_IMAGE = "MESHLOG_KAFKA_IMAGE"
ENV_BROKERS = "MESHLOG_KAFKA_BROKERS"  # the tests' local Kafka: this many nodes (default 1)

# --secure: a certificate's CN is its SPIFFE path (``sidecar/reviews/i1``, identity.spiffe); the principal is
# its first segment, the role (``User:sidecar``), which is what events.kafka_acls grants to. Any other subject keeps
# Kafka's default principal (the whole DN), which no ACL names. ('/' is escaped inside a rule.)
PRINCIPAL_MAPPING_RULES = r"RULE:^CN=([a-z][a-z0-9-]*)(\/[^,]*)?(,.*)?$/$1/,DEFAULT"
AUTHORIZER_CLASS = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
TLS_DIR_NAME = "tls"


class KafkaLauncherError(RuntimeError):
    """Anything that prevents the local broker from being fetched, started or stopped."""


# --------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------


def cache_root() -> Path:
    """``$MESHLOG_CACHE_DIR`` or ``~/.cache/meshlog``."""
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "meshlog"


def meshlog_home() -> Path:
    """``$MESHLOG_HOME`` or ``~/.meshlog``."""
    env = os.environ.get(ENV_HOME)
    return Path(env).expanduser() if env else Path.home() / ".meshlog"


def kafka_version_dir(version: str = KAFKA_VERSION, cache_dir: Path | None = None) -> Path:
    return Path(cache_dir or cache_root()) / "kafka" / version


def kafka_libs_dir(version: str = KAFKA_VERSION, cache_dir: Path | None = None) -> Path:
    return kafka_version_dir(version, cache_dir) / "libs"


def state_file_path(home: Path | None = None) -> Path:
    return Path(home or meshlog_home()) / "kafka" / "state.json"


# --------------------------------------------------------------------------
# Pure helpers (unit tested)
# --------------------------------------------------------------------------


def render_pom(
    kafka_version: str = KAFKA_VERSION,
    *,
    scala_version: str = SCALA_BINARY_VERSION,
    log4j_version: str = LOG4J_VERSION,
    slf4j_version: str = SLF4J_VERSION,
    plugin_version: str = DEPENDENCY_PLUGIN_VERSION,
) -> str:
    """A throw-away POM whose runtime classpath is a complete Kafka broker."""
    deps = [
        ("org.apache.kafka", f"kafka_{scala_version}", kafka_version),
        ("org.slf4j", "slf4j-api", slf4j_version),
        ("org.apache.logging.log4j", "log4j-slf4j2-impl", log4j_version),
        ("org.apache.logging.log4j", "log4j-core", log4j_version),
    ]
    dep_xml = "\n".join(
        "    <dependency>\n"
        f"      <groupId>{_xml_escape(g)}</groupId>\n"
        f"      <artifactId>{_xml_escape(a)}</artifactId>\n"
        f"      <version>{_xml_escape(v)}</version>\n"
        "    </dependency>"
        for g, a, v in deps
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by meshlog.kafka_local: resolves the Kafka broker runtime. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.meshlog</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{_xml_escape(kafka_version)}</version>
  <packaging>pom</packaging>
  <dependencies>
{dep_xml}
  </dependencies>
  <build>
    <pluginManagement>
      <plugins>
        <plugin>
          <groupId>org.apache.maven.plugins</groupId>
          <artifactId>maven-dependency-plugin</artifactId>
          <version>{_xml_escape(plugin_version)}</version>
        </plugin>
      </plugins>
    </pluginManagement>
  </build>
</project>
"""


def required_jar_patterns(kafka_version: str = KAFKA_VERSION) -> list[str]:
    """Regexes that a complete ``libs`` directory must each match at least once."""
    v = re.escape(kafka_version)
    return [
        rf"^kafka_{re.escape(SCALA_BINARY_VERSION)}-{v}\.jar$",
        rf"^kafka-clients-{v}\.jar$",
        rf"^kafka-server-{v}\.jar$",
        r"^log4j-core-[\d.]+\.jar$",
        r"^log4j-slf4j2-impl-[\d.]+\.jar$",
        r"^slf4j-api-2\.[\d.]+\.jar$",
    ]


def missing_jars(names: Sequence[str], kafka_version: str = KAFKA_VERSION) -> list[str]:
    """Patterns from :func:`required_jar_patterns` that no name matches."""
    return [p for p in required_jar_patterns(kafka_version) if not any(re.match(p, n) for n in names)]


def write_marker(libs: Path) -> None:
    jars = sorted(p.name for p in libs.glob("*.jar"))
    payload = {"jars": {n: (libs / n).stat().st_size for n in jars}, "fetched_at": time.time()}
    (libs / MARKER_NAME).write_text(json.dumps(payload, indent=1, sort_keys=True))


def jars_ready(libs: Path) -> bool:
    """True when ``libs`` holds a complete fetch: the marker exists and every jar it lists is intact."""
    marker = Path(libs) / MARKER_NAME
    try:
        listed = json.loads(marker.read_text())["jars"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not listed:
        return False
    for name, size in listed.items():
        try:
            if (Path(libs) / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def parse_java_major(version_output: str) -> int:
    """Major version from ``java -version`` output (``1.8.0_x`` -> 8, ``17.0.15`` -> 17, ``21-ea`` -> 21)."""
    m = re.search(r'version "([^"]+)"', version_output)
    if not m:
        raise ValueError(f"cannot parse java version from: {version_output.strip()[:200]!r}")
    parts = re.split(r"[._\-+]", m.group(1))
    major = int(parts[0])
    if major == 1 and len(parts) > 1:
        major = int(parts[1])
    return major


def random_cluster_id() -> str:
    """A valid Kafka cluster id: 16 random bytes, URL-safe base64, no padding (22 chars)."""
    while True:
        raw = os.urandom(16)
        # Kafka's Uuid.randomUuid avoids ids whose base64 starts with '-' (looks like a CLI flag).
        cid = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
        if not cid.startswith("-") and any(raw):
            return cid


def is_valid_cluster_id(value: str) -> bool:
    if not isinstance(value, str) or len(value) != 22 or not re.fullmatch(r"[A-Za-z0-9_-]{22}", value):
        return False
    try:
        raw = base64.urlsafe_b64decode(value + "==")
    except ValueError:
        return False
    return len(raw) == 16 and any(raw)


def free_port(host: str = HOST, *, exclude: Sequence[int] = ()) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in exclude:
            return port
    raise KafkaLauncherError("could not find a free port")


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct free ports."""
    ports: list[int] = []
    while len(ports) < count:
        ports.append(free_port(host, exclude=ports))
    return ports


def _prop_escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n")


def secure_properties(*, keystore: str | os.PathLike, truststore: str | os.PathLike,
                      super_users: Sequence[str]) -> dict[str, str]:
    """TLS with required client certificates on every listener, principals from the certificate, ACLs enforced.

    The controller listener is SSL too: with a PLAINTEXT one the broker's own controller requests would
    come from ``User:ANONYMOUS``, which would then have to be a super user (and any local process could
    be one through the controller port).
    """
    return {
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(truststore),
        "ssl.client.auth": "required",
        "ssl.principal.mapping.rules": PRINCIPAL_MAPPING_RULES,
        "authorizer.class.name": AUTHORIZER_CLASS,
        "allow.everyone.if.no.acl.found": "false",
        "super.users": ";".join(f"User:{u}" for u in super_users),
    }


def quorum_voters(controller_ports: Mapping[int, int], host: str = HOST, hosts: Mapping[int, str] | None = None) -> str:
    """``controller.quorum.voters`` of a static KRaft quorum: ``1@host:port,2@host:port,...`` by node id
    (``hosts``: a node's own address where it has one, e.g. in its own network namespace)."""
    if not controller_ports:
        raise ValueError("a quorum needs at least one voter")
    return ",".join(f"{node}@{(hosts or {}).get(node, host)}:{port}" for node, port in sorted(controller_ports.items()))


# A cluster node that dies without a word (kill -9, a cut link) keeps leading its partitions until the
# controller fences it when its session times out (Kafka's default: 9 s). Loopback heartbeats are cheap,
# so a cluster of local nodes beats every 500 ms and is fenced after 3 s: a shorter stall, still several
# missed beats on a loaded 2-core host before a live broker is fenced.
CLUSTER_FAILURE_DETECTION: Mapping[str, str] = {
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "3000",
}


def server_properties(
    *,
    port: int,
    controller_port: int,
    log_dir: str | os.PathLike,
    node_id: int = 1,
    host: str = HOST,
    secure: Mapping[str, str] | None = None,
    extra: Mapping[str, object] | None = None,
    voters: Mapping[int, int] | None = None,
    voter_hosts: Mapping[int, str] | None = None,
) -> dict[str, str]:
    """The broker configuration as an ordered dict (``secure``: :func:`secure_properties`; ``extra`` overrides/extends).

    ``voters`` (node id -> controller port): the nodes of a cluster, every one broker and controller; the
    internal topics get meshlog's replication (``events.topics.replication_for``) for that many brokers.
    Default: this node alone."""
    from events.topics import replication_for

    listener, protocol_map = ("SSL", "SSL:SSL,CONTROLLER:SSL") if secure else ("PLAINTEXT", "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT")
    voters = dict(voters) if voters else {node_id: controller_port}
    if voters.get(node_id) != controller_port:
        raise ValueError(f"node {node_id} with controller port {controller_port} is not among the voters {voters}")
    replicas, min_isr = (str(n) for n in replication_for(len(voters)))
    props: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": quorum_voters(voters, host, voter_hosts),
        "listeners": f"{listener}://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"{listener}://{host}:{port}",
        "listener.security.protocol.map": protocol_map,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": listener,
        "log.dirs": str(log_dir),
        "num.partitions": "1",
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        "unclean.leader.election.enable": "false",
        "offsets.topic.replication.factor": replicas,
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        **(CLUSTER_FAILURE_DETECTION if len(voters) > 1 else {}),
        **(secure or {}),
    }
    for k, v in (extra or {}).items():
        props[str(k)] = str(v).lower() if isinstance(v, bool) else str(v)
    return props


def render_properties(props: Mapping[str, str], header: str = "Generated by meshlog.kafka_local") -> str:
    lines = [f"# {header}"] + [f"{k}={_prop_escape(v)}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


def render_log4j2_config(log_file: str | os.PathLike, level: str = "INFO") -> str:
    """log4j2 XML: Kafka's own loggers at ``level`` into ``log_file``; third-party libraries at WARN."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by meshlog.kafka_local -->
<Configuration status="WARN" shutdownHook="disable">
  <Appenders>
    <File name="broker" fileName={_xml_attr(str(log_file))} append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="{level}"/>
    <Logger name="org.apache.kafka" level="{level}"/>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Root level="WARN">
      <AppenderRef ref="broker"/>
    </Root>
  </Loggers>
</Configuration>
"""


def tail_text(path: str | os.PathLike, max_lines: int = 40, max_bytes: int = 64 * 1024) -> str:
    """The last lines of a (possibly large or missing) text file."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-max_lines:])


def error_lines(path: str | os.PathLike, start_offset: int = 0, limit: int = 12, max_bytes: int = 4 << 20) -> str:
    """ERROR/FATAL lines of a Kafka log written after ``start_offset``, each with the line after it
    (usually the exception message); the first ``limit`` such pairs."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(start_offset, size - max_bytes))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    picked: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith("[") and ("] ERROR " in line or "] FATAL " in line):
            picked.append(line)
            if i + 1 < len(lines) and not lines[i + 1].startswith("["):
                picked.append("    " + lines[i + 1].strip())
            if len(picked) >= 2 * limit:
                break
    return "\n".join(picked)


def jvm_opts_from_env() -> tuple[str, ...]:
    env = os.environ.get(ENV_JVM_OPTS)
    return tuple(env.split()) if env and env.strip() else DEFAULT_JVM_OPTS


# --------------------------------------------------------------------------
# Tools: java, mvn
# --------------------------------------------------------------------------


def find_java(java: str | None = None) -> str:
    """Path of the ``java`` to use: argument, else ``$JAVA_HOME/bin/java``, else ``java`` on PATH."""
    if java:
        found = shutil.which(java)
        if not found:
            raise KafkaLauncherError(f"java executable {java!r} not found")
        return found
    jh = os.environ.get("JAVA_HOME")
    if jh and os.access(Path(jh) / "bin" / "java", os.X_OK):
        return str(Path(jh) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise KafkaLauncherError(
            f"'java' not found: Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+ "
            "(install e.g. openjdk-17-jre-headless, or set JAVA_HOME)"
        )
    return found


def check_java(java: str | None = None) -> tuple[str, int]:
    """Return ``(java_path, major_version)``; raise if missing or older than Java 17."""
    path = find_java(java)
    try:
        out = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KafkaLauncherError(f"could not run {path} -version: {e}") from e
    try:
        major = parse_java_major(out.stderr + out.stdout)
    except ValueError as e:
        raise KafkaLauncherError(str(e)) from e
    if major < MIN_JAVA:
        raise KafkaLauncherError(f"{path} is Java {major}; Kafka {KAFKA_VERSION} needs Java {MIN_JAVA} or newer")
    return path, major


def find_mvn(mvn: str | None = None) -> str:
    found = shutil.which(mvn or "mvn")
    if not found:
        raise KafkaLauncherError(
            "'mvn' (Apache Maven) not found: it is needed once to fetch the Kafka jars "
            f"into {kafka_libs_dir()} (install maven, or pre-populate that cache)"
        )
    return found


# --------------------------------------------------------------------------
# Jar fetch
# --------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_kafka_jars(
    version: str = KAFKA_VERSION,
    cache_dir: str | os.PathLike | None = None,
    *,
    mvn: str | None = None,
    maven_repo_local: str | os.PathLike | None = None,
    timeout: float = 900.0,
) -> Path:
    """Return the directory holding a complete Kafka broker classpath, fetching it first if needed.

    A cached, complete fetch (marker present) is returned without running
    ``mvn`` or touching the network.  Otherwise the jars are resolved into a
    temporary directory next to the cache and renamed into place together
    with the marker, so an interrupted fetch is never used and is redone.
    ``maven_repo_local`` passes ``-Dmaven.repo.local`` (e.g. an empty dir to
    force downloads).
    """
    vdir = kafka_version_dir(version, Path(cache_dir) if cache_dir else None)
    libs = vdir / "libs"
    if jars_ready(libs):
        return libs
    with _file_lock(vdir / ".fetch.lock"):
        if jars_ready(libs):  # another process finished while we waited
            return libs
        mvn_path = find_mvn(mvn)
        log.info("fetching Kafka %s jars with Maven into %s", version, libs)
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=vdir))
        try:
            (tmp / "pom.xml").write_text(render_pom(version))
            out_dir = tmp / "libs"
            cmd = [
                mvn_path, "-q", "-B", "-Dstyle.color=never",
                "-f", str(tmp / "pom.xml"),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={out_dir}",
            ]
            if maven_repo_local:
                cmd.append(f"-Dmaven.repo.local={maven_repo_local}")
            try:
                res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired as e:
                raise KafkaLauncherError(f"mvn did not finish within {timeout:.0f}s fetching Kafka jars") from e
            if res.returncode != 0:
                output = "\n".join((res.stdout + "\n" + res.stderr).strip().splitlines()[-30:])
                raise KafkaLauncherError(f"mvn failed (exit {res.returncode}) fetching Kafka {version} jars:\n{output}")
            names = [p.name for p in out_dir.glob("*.jar")] if out_dir.is_dir() else []
            missing = missing_jars(names, version)
            if missing:
                raise KafkaLauncherError(f"mvn finished but the Kafka classpath is incomplete; missing {missing}")
            write_marker(out_dir)
            if libs.exists():  # a stale/incomplete earlier attempt
                shutil.rmtree(libs)
            os.replace(out_dir, libs)
            os.replace(tmp / "pom.xml", vdir / "pom.xml")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("fetched %d jars in %.1fs", len(list(libs.glob("*.jar"))), time.monotonic() - started)
        return libs


# --------------------------------------------------------------------------
# Readiness probe
# --------------------------------------------------------------------------


async def _describe_cluster(bootstrap: str, request_timeout_ms: int, security: KafkaSecurity | None) -> dict:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**connection_kwargs(bootstrap, security), request_timeout_ms=request_timeout_ms)
    try:
        await admin.start()
        return await admin.describe_cluster()
    finally:
        await admin.close()


def describe_cluster(bootstrap: str, timeout: float = 5.0, security: KafkaSecurity | None = None) -> dict:
    """Run aiokafka's ``describe_cluster`` against ``bootstrap`` (sync; safe inside a running event loop)."""
    result: dict = {}
    error: list[BaseException] = []

    def runner() -> None:
        try:
            result.update(asyncio.run(asyncio.wait_for(_describe_cluster(bootstrap, int(timeout * 1000), security), timeout)))
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            error.append(e)

    # A separate thread keeps this independent of any event loop of the caller (pytest-asyncio).
    t = threading.Thread(target=runner, name="kafka-probe", daemon=True)
    t.start()
    t.join(timeout + 5)
    if t.is_alive():
        raise TimeoutError(f"describe_cluster on {bootstrap} hung")
    if error:
        raise error[0]
    return result


def port_accepts(bootstrap: str, timeout: float = 1.0) -> bool:
    """True if a TCP connection to ``host:port`` (any address of a comma-separated list) succeeds."""
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host or HOST, int(port)), timeout=timeout):
                return True
        except (OSError, ValueError):
            continue
    return False


def broker_answers(bootstrap: str, timeout: float = 3.0, security: KafkaSecurity | None = None) -> bool:
    """True if an admin ``describe_cluster`` succeeds and reports at least one broker."""
    if not port_accepts(bootstrap):  # cheap pre-check; spares aiokafka's connection-error logging
        return False
    try:
        return bool(describe_cluster(bootstrap, timeout, security).get("brokers"))
    except Exception:  # noqa: BLE001
        return False


def wait_until_answers(bootstrap: str, timeout: float, pid: int | None = None,
                       security: KafkaSecurity | None = None) -> bool:
    """Poll :func:`broker_answers` until it succeeds (True), ``timeout`` passes or ``pid`` dies (False)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (pid is not None and not pid_alive(pid)):
            return False
        if broker_answers(bootstrap, timeout=min(3.0, max(0.5, remaining)), security=security):
            return True
        time.sleep(0.2)


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def pid_is_broker(pid: int, properties_path: str | os.PathLike) -> bool:
    """True if ``pid`` is alive and is a ``kafka.Kafka`` JVM started with ``properties_path`` (guards pid reuse)."""
    if not pid_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return MAIN_CLASS.encode() in argv and str(properties_path).encode() in argv


def _wait_pid_gone(pid: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None:
            if proc.poll() is not None:
                return True
        elif not pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def terminate_pids(pids: Sequence[int], timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
    """SIGTERM every node of a cluster at once, then wait for each (SIGKILL after ``timeout``).

    At once, not one by one: the last node stopped alone has no quorum left to grant its controlled
    shutdown and waits out the whole timeout (measured: 37 s one by one with a SIGKILL, 9 s at once)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in pids:
        terminate_pid(pid, max(0.0, deadline - time.monotonic()))


def terminate_pid(pid: int, timeout: float = DEFAULT_STOP_TIMEOUT, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL (and wait for it to be gone)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if _wait_pid_gone(pid, timeout, proc):
        return
    log.warning("broker pid %d ignored SIGTERM for %.0fs; sending SIGKILL", pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_pid_gone(pid, 10.0, proc):
        raise KafkaLauncherError(f"broker pid {pid} survived SIGKILL")


# --------------------------------------------------------------------------
# LocalKafka
# --------------------------------------------------------------------------


class LocalKafka:
    """One single-node KRaft broker as a child JVM.

    ``data_dir``: where properties, logs and the log segments go (created if
    needed).  Default: a fresh temp dir, removed on :meth:`stop` unless
    ``keep_data``.  A given ``data_dir`` is kept unless ``keep_data=False``;
    reusing a formatted one restarts the same cluster with its data.

    ``detached=False`` (default): the JVM is tied to this Python process
    (PR_SET_PDEATHSIG + atexit stop).  Linux delivers the death signal when
    the *thread* that called :meth:`start` exits, so start it from a
    long-lived thread (the main thread, a pytest fixture).  ``detached=True``: own session, no
    pdeathsig -- it outlives us (used by ``meshlog kafka up``).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        version: str = KAFKA_VERSION,
        cache_dir: str | os.PathLike | None = None,
        java: str | None = None,
        jvm_opts: Sequence[str] | None = None,
        extra_properties: Mapping[str, object] | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        detached: bool = False,
        keep_data: bool | None = None,
        secure: bool = False,
        tls_dir: str | os.PathLike | None = None,
        node_id: int = 1,
        voters: Mapping[int, int] | None = None,
        cluster_id: str | None = None,
        host: str = HOST,
        voter_hosts: Mapping[int, str] | None = None,
        netns: str | None = None,
    ) -> None:
        self.secure = secure
        self.host = host  # the address it listens on and advertises
        self.voter_hosts = dict(voter_hosts or {})
        self.netns = netns  # run the JVM inside this network namespace (`ip netns exec`), e.g. to cut its links
        self.node_id = node_id
        self.voters = dict(voters) if voters else None  # a cluster's node id -> controller port (LocalCluster)
        self._given_cluster_id = cluster_id
        self._given_tls_dir = Path(tls_dir).expanduser().resolve() if tls_dir else None
        self._given_data_dir = Path(data_dir).expanduser().resolve() if data_dir else None
        self.keep_data = keep_data if keep_data is not None else data_dir is not None
        self._fixed_port = port
        self._fixed_controller_port = controller_port
        self.version = version
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.java = java
        self.jvm_opts = tuple(jvm_opts) if jvm_opts is not None else jvm_opts_from_env()
        self.extra_properties = dict(extra_properties or {})
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.detached = detached

        self.data_dir: Path | None = None
        self.port: int | None = None
        self.controller_port: int | None = None
        self.cluster_id: str | None = None
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._atexit_registered = False
        self._log_offset = 0
        self._t0 = 0.0

    # -- paths ------------------------------------------------------------
    def _require_data_dir(self) -> Path:
        if self.data_dir is None:
            raise KafkaLauncherError("broker has not been started")
        return self.data_dir

    @property
    def log_path(self) -> Path:
        """The broker's log4j log file."""
        return self._require_data_dir() / BROKER_LOG_NAME

    @property
    def console_log_path(self) -> Path:
        """The JVM's stdout/stderr."""
        return self._require_data_dir() / CONSOLE_LOG_NAME

    @property
    def properties_path(self) -> Path:
        return self._require_data_dir() / "server.properties"

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` once started."""
        if self.port is None:
            raise KafkaLauncherError("broker has not been started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- lifecycle --------------------------------------------------------
    def start(self, *, wait: bool = True) -> str:
        """Fetch jars if needed, format storage, start the JVM and wait until an admin call succeeds.

        Returns the bootstrap address.  Raises :class:`KafkaLauncherError`
        (with the broker log tail) if the JVM exits or the timeout expires.
        ``wait=False``: return once the JVM is launched (a cluster node answers only once a
        majority of the quorum runs); :meth:`wait_ready` then waits.
        """
        if self.is_running():
            return self.bootstrap
        t0 = time.monotonic()
        self._t0 = t0
        java, _ = check_java(self.java)
        libs = ensure_kafka_jars(self.version, self.cache_dir)
        self._prepare_data_dir()
        attempts = 1 if (self._fixed_port or self._fixed_controller_port) else 3
        try:
            for attempt in range(1, attempts + 1):
                try:
                    self._start_once(java, libs, t0, wait)
                    break
                except _PortInUse as e:
                    if attempt == attempts:
                        raise KafkaLauncherError(str(e)) from None
                    log.info("port clash; retrying with new ports")
        except BaseException:
            self._kill_quietly()
            self._unregister_atexit()
            if not self.keep_data:
                log.warning("start failed; data dir %s kept for inspection", self.data_dir)
            raise
        if wait:
            self._ready(t0)
        return self.bootstrap

    def wait_ready(self) -> None:
        """After ``start(wait=False)``: wait (up to the start timeout from the launch) until it answers."""
        try:
            self._wait_ready(self._t0)
        except BaseException:
            self._kill_quietly()
            raise
        self._ready(self._t0)

    def _ready(self, t0: float) -> None:
        self.startup_seconds = time.monotonic() - t0
        log.info("Kafka %s node %d ready at %s in %.1fs (pid %d, log %s)",
                 self.version, self.node_id, self.bootstrap, self.startup_seconds, self.pid, self.log_path)

    def _prepare_data_dir(self) -> None:
        self.data_dir = claim_data_dir(self._given_data_dir, "broker")
        if load_cluster_layout(self.data_dir) is not None:
            raise KafkaLauncherError(f"{self.data_dir} holds a cluster's data: start it with --brokers")

    def _java_base(self, java: str, libs: Path) -> list[str]:
        return [
            java,
            *self.jvm_opts,
            f"-Dlog4j2.configurationFile={self._require_data_dir() / 'log4j2.xml'}",
            "-cp",
            str(libs / "*"),
        ]

    def _popen_kwargs(self) -> dict:
        if self.detached:
            return {"start_new_session": True}
        return {"preexec_fn": die_with_parent(own_group=True)}

    def _start_once(self, java: str, libs: Path, t0: float, wait: bool = True) -> None:
        d = self._require_data_dir()
        self.port, self.controller_port = self._choose_ports()
        log_dir = d / "logs"
        props = server_properties(
            port=self.port, controller_port=self.controller_port, log_dir=log_dir, node_id=self.node_id,
            host=self.host, secure=self._prepare_tls() if self.secure else None, extra=self.extra_properties,
            voters=self.voters, voter_hosts=self.voter_hosts,
        )
        self.properties_path.write_text(render_properties(props))
        (d / "log4j2.xml").write_text(render_log4j2_config(self.log_path))
        base = self._java_base(java, libs)

        meta = log_dir / "meta.properties"
        if meta.exists():
            m = re.search(r"^cluster\.id=(\S+)", meta.read_text(), re.M)
            self.cluster_id = m.group(1) if m else None
            log.info("reusing formatted storage in %s (cluster %s)", log_dir, self.cluster_id)
        else:
            self.cluster_id = self._given_cluster_id or random_cluster_id()
            fmt = [*base, STORAGE_TOOL_CLASS, "format", "-t", self.cluster_id, "-c", str(self.properties_path)]
            try:
                res = subprocess.run(fmt, capture_output=True, text=True, timeout=120,
                                     stdin=subprocess.DEVNULL, **self._popen_kwargs())
            except subprocess.TimeoutExpired as e:
                raise KafkaLauncherError("kafka StorageTool format timed out") from e
            if res.returncode != 0:
                raise KafkaLauncherError(
                    f"kafka StorageTool format failed (exit {res.returncode}):\n"
                    f"{(res.stdout + res.stderr).strip()[-3000:]}\n--- {self.log_path} ---\n{tail_text(self.log_path)}"
                )

        cmd = [*(["ip", "netns", "exec", self.netns] if self.netns else []), *base, MAIN_CLASS, str(self.properties_path)]
        try:
            self._log_offset = self.log_path.stat().st_size  # the log is appended to across restarts
        except OSError:
            self._log_offset = 0
        with open(self.console_log_path, "ab") as console:
            self.process = subprocess.Popen(
                cmd, cwd=d, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                close_fds=True, **self._popen_kwargs()
            )
        if not self.detached and not self._atexit_registered:
            atexit.register(self._atexit_stop)
            self._atexit_registered = True
        if not wait:
            return
        try:
            self._wait_ready(t0)
        except BaseException:
            self._kill_quietly()
            raise

    # -- TLS (secure=True) ----------------------------------------------------
    @property
    def tls_dir(self) -> Path:
        """CA, broker and admin certificates: the given ``tls_dir`` (the demo keeps its mesh CA beside its
        logs), else kept with the data, so a restart keeps its identities."""
        return self._given_tls_dir or self._require_data_dir() / TLS_DIR_NAME

    def _prepare_tls(self) -> dict[str, str]:
        from identity import spiffe
        from meshlog import kafka_tls

        ca = kafka_tls.ensure_ca(self.tls_dir)
        # each node its own certificate (broker/<node id>: principal User:broker), so the nodes of a cluster
        # sharing one tls_dir never rewrite each other's keystore
        broker_id = spiffe.SpiffeId.of(ca.domain, kafka_tls.BROKER_ROLE, str(self.node_id))
        broker_dir = kafka_tls.identity_dir(self.tls_dir, broker_id)
        files = kafka_tls.issue_files(ca, broker_id, broker_dir, server_names=tuple(dict.fromkeys((self.host, HOST, "localhost"))),
                                      lifetime=kafka_tls.LOCAL_LIFETIME)
        self.security_for(f"{kafka_tls.BROKER_ROLE}/{kafka_tls.ADMIN_ID}", lifetime=kafka_tls.LOCAL_LIFETIME)
        return secure_properties(keystore=broker_dir / kafka_tls.KEYSTORE_FILE, truststore=files.bundle,
                                 super_users=(kafka_tls.BROKER_ROLE,))

    @property
    def admin_security(self) -> KafkaSecurity | None:
        """A super user's client settings (secure broker only; what ``meshlog topics ensure`` needs)."""
        if not self.secure:
            return None
        from meshlog import kafka_tls

        return self.security_for(f"{kafka_tls.BROKER_ROLE}/{kafka_tls.ADMIN_ID}")

    def security_for(self, path: str, *, lifetime: timedelta | None = None) -> KafkaSecurity:
        """Client settings for the identity ``spiffe://<domain>/<path>`` (``sidecar/reviews/i1``: principal
        ``User:sidecar``), issued from this broker's CA into ``tls_dir`` unless it is there already."""
        from identity import pki, spiffe
        from meshlog import kafka_tls

        if not self.secure:
            raise KafkaLauncherError("security_for: this broker is not secure")
        ca = kafka_tls.ensure_ca(self.tls_dir)
        ident = spiffe.parse(f"spiffe://{ca.domain}/{path}")
        directory = kafka_tls.identity_dir(self.tls_dir, ident)
        files = pki.IdentityFiles.in_dir(directory)
        if lifetime is not None or not files.cert.exists():
            files = kafka_tls.issue_files(ca, ident, directory, lifetime=lifetime or pki.DEFAULT_LIFETIME)
        return kafka_tls.security_of(files)

    def _choose_ports(self) -> tuple[int, int]:
        taken = [p for p in (self._fixed_port, self._fixed_controller_port) if p]
        port = self._fixed_port or free_port(exclude=taken)
        cport = self._fixed_controller_port or free_port(exclude=[port, *taken])
        if port == cport:
            raise KafkaLauncherError("port and controller_port must differ")
        return port, cport

    def _wait_ready(self, t0: float) -> None:
        assert self.process is not None
        deadline = t0 + self.start_timeout
        while True:
            rc = self.process.poll()
            if rc is not None:
                errors = error_lines(self.log_path, self._log_offset)
                tail = tail_text(self.log_path, 25)
                console = tail_text(self.console_log_path, 20)
                msg = (f"Kafka broker exited with code {rc} during start-up.\n"
                       + (f"--- errors in {self.log_path} ---\n{errors}\n" if errors else "")
                       + f"--- {self.log_path} (tail) ---\n{tail}"
                       + (f"\n--- {self.console_log_path} (tail) ---\n{console}" if console else ""))
                if "Address already in use" in errors + console and not (self._fixed_port or self._fixed_controller_port):
                    raise _PortInUse(msg)
                raise KafkaLauncherError(msg)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KafkaLauncherError(
                    f"Kafka broker did not answer on {self.bootstrap} within {self.start_timeout:.0f}s.\n"
                    f"--- {self.log_path} (tail) ---\n{tail_text(self.log_path)}"
                )
            if broker_answers(self.bootstrap, timeout=min(3.0, max(0.5, remaining)), security=self.admin_security or KafkaSecurity()):
                return
            time.sleep(0.1)

    def _kill_quietly(self) -> None:
        if self.process and self.process.poll() is None:
            with contextlib.suppress(Exception):
                terminate_pid(self.process.pid, 5.0, self.process)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, wait (bounded), SIGKILL; then remove a temp data dir unless ``keep_data``. Idempotent."""
        self._stop(self.stop_timeout if timeout is None else timeout, quiet=False)

    def _stop(self, timeout: float, quiet: bool) -> None:
        if self.process is not None and self.process.poll() is None:
            terminate_pid(self.process.pid, timeout, self.process)
            self.process.wait()
            if not quiet:
                log.info("Kafka broker pid %d stopped", self.process.pid)
        self._unregister_atexit()
        if self.data_dir is not None and not self.keep_data and self.data_dir.exists():
            remove_data_dir(self.data_dir)

    def _unregister_atexit(self) -> None:
        if self._atexit_registered:
            atexit.unregister(self._atexit_stop)
            self._atexit_registered = False

    def _atexit_stop(self) -> None:
        # Logging may already be shut down at interpreter exit: stay quiet.
        with contextlib.suppress(Exception):
            self._stop(10.0, quiet=True)

    def __enter__(self) -> "LocalKafka":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port else "not started"
        return f"<LocalKafka {self.version} {where} pid={self.pid}>"


class _PortInUse(KafkaLauncherError):
    pass


# --------------------------------------------------------------------------
# LocalCluster: several KRaft nodes on loopback
# --------------------------------------------------------------------------

CLUSTER_FILE_NAME = "cluster.json"
MAX_BROKERS = 9
# three nodes share two cores and the tests' own broker: a smaller heap each (measured: idle ~150 MB)
CLUSTER_JVM_OPTS: tuple[str, ...] = tuple(o if not o.startswith("-Xmx") else "-Xmx384m" for o in DEFAULT_JVM_OPTS)


class LocalCluster:
    """``brokers`` KRaft nodes on 127.0.0.1, each its own JVM, data dir (``data_dir/node-<id>``) and ports.

    Every node is both broker and controller (combined mode): three JVMs instead of six on a small
    host, and a quorum of three controllers that outlives any one node, which is what the fault tests
    kill. (Production separates the roles so a busy broker cannot starve the controller; nothing here
    depends on the choice.)

    The cluster id and every node's ports are chosen once and kept in ``data_dir/cluster.json``: a
    restart on the same data dir is the same cluster at the same addresses, so clients that kept
    running (projector, gateways) reconnect by themselves. ``secure``: every node its own certificate
    from one CA in ``tls_dir`` (default ``data_dir/tls``; the demo gives its mesh CA's). Other arguments
    as :class:`LocalKafka`.
    """

    def __init__(self, brokers: int = 3, data_dir: str | os.PathLike | None = None, *,
                 start_timeout: float = DEFAULT_START_TIMEOUT, stop_timeout: float = DEFAULT_STOP_TIMEOUT,
                 jvm_opts: Sequence[str] | None = None, detached: bool = False, keep_data: bool | None = None,
                 secure: bool = False, extra_properties: Mapping[str, object] | None = None,
                 hosts: Sequence[str] | None = None, netns: Sequence[str] | None = None,
                 tls_dir: str | os.PathLike | None = None) -> None:
        if not 1 <= brokers <= MAX_BROKERS:
            raise KafkaLauncherError(f"brokers: {brokers} is out of range (1 to {MAX_BROKERS})")
        self.brokers = brokers
        self._given_data_dir = Path(data_dir).expanduser().resolve() if data_dir else None
        self.keep_data = keep_data if keep_data is not None else data_dir is not None
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self.jvm_opts = tuple(jvm_opts) if jvm_opts is not None else (
            jvm_opts_from_env() if os.environ.get(ENV_JVM_OPTS) else CLUSTER_JVM_OPTS)
        self.detached, self.secure = detached, secure
        self._given_tls_dir = Path(tls_dir).expanduser().resolve() if tls_dir else None
        self.extra_properties = dict(extra_properties or {})
        # node i's address and network namespace (default: 127.0.0.1 in ours); not kept in cluster.json:
        # whoever made the namespaces gives them again at a restart
        self.hosts = list(hosts) if hosts else [HOST] * brokers
        self.netns = list(netns) if netns else [None] * brokers
        if len(self.hosts) != brokers or len(self.netns) != brokers:
            raise KafkaLauncherError(f"hosts and netns must name one per broker ({brokers})")
        self.data_dir: Path | None = None
        self.cluster_id: str | None = None
        self.nodes: list[LocalKafka] = []

    @property
    def bootstrap(self) -> str:
        """Every node's client address, comma separated (clients find the others from any one)."""
        if not self.nodes:
            raise KafkaLauncherError("cluster has not been started")
        return ",".join(self.node_bootstrap(n.node_id) for n in self.nodes)

    def node_bootstrap(self, node_id: int) -> str:
        """A node's client address, whether or not this object started it (the ports are the layout's)."""
        node = self.node(node_id)
        return f"{node.host}:{node._fixed_port}"

    def node_dir(self, node_id: int) -> Path:
        assert self.data_dir is not None
        return self.data_dir / f"node-{node_id}"

    def node(self, node_id: int) -> LocalKafka:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)

    @property
    def admin_security(self) -> KafkaSecurity | None:
        return self.nodes[0].admin_security if self.nodes else None

    def start(self, only: Sequence[int] | None = None) -> str:
        """Start every node that is not running (all at once: none answers before a majority runs), wait
        until each answers and the cluster reports every broker; return the bootstrap list.

        ``only``: start just these node ids (the others run already, e.g. detached by another process)."""
        self._prepare()
        t0 = time.monotonic()
        stopped = [n for n in self.nodes if not n.is_running() and (only is None or n.node_id in only)]
        try:
            for n in stopped:
                n.start(wait=False)
            launched = time.monotonic()
            for n in stopped:
                # no node answers before a majority runs: each one's start timeout counts from the moment
                # the last was launched (formatting a node's storage is a JVM run of its own)
                n._t0 = launched
                n.wait_ready()
            self._wait_all_registered(launched)
        except BaseException:
            if len(stopped) == len(self.nodes):
                self._stop_nodes(5.0)
            raise
        log.info("Kafka cluster %s of %d nodes ready at %s in %.1fs", self.cluster_id, self.brokers,
                 self.bootstrap, time.monotonic() - t0)
        return self.bootstrap

    def _prepare(self) -> None:
        if self.nodes:
            return
        d = self.data_dir = claim_data_dir(self._given_data_dir, "cluster")
        if (d / "logs" / "meta.properties").exists():
            raise KafkaLauncherError(f"{d} holds a single broker's data, not a cluster's: start it without --brokers")
        layout = load_cluster_layout(d)
        if layout is None:
            ports = free_ports(2 * self.brokers)
            layout = {"cluster_id": random_cluster_id(), "brokers": self.brokers,
                      "nodes": [{"node_id": i + 1, "port": ports[2 * i], "controller_port": ports[2 * i + 1]}
                                for i in range(self.brokers)]}
            write_file_atomic(d / CLUSTER_FILE_NAME, json.dumps(layout, indent=1).encode())
        elif layout["brokers"] != self.brokers:
            raise KafkaLauncherError(f"{d} holds a cluster of {layout['brokers']} brokers, not {self.brokers}: "
                                     f"start it with --brokers {layout['brokers']} or use another data dir")
        self.cluster_id = layout["cluster_id"]
        voters = {n["node_id"]: n["controller_port"] for n in layout["nodes"]}
        voter_hosts = {n["node_id"]: self.hosts[i] for i, n in enumerate(layout["nodes"])}
        self.nodes = [
            LocalKafka(d / f"node-{n['node_id']}", port=n["port"], controller_port=n["controller_port"],
                       node_id=n["node_id"], voters=voters, cluster_id=self.cluster_id, jvm_opts=self.jvm_opts,
                       start_timeout=self.start_timeout, stop_timeout=self.stop_timeout, detached=self.detached,
                       keep_data=True, secure=self.secure, tls_dir=self._given_tls_dir or d / TLS_DIR_NAME,
                       extra_properties=self.extra_properties, host=self.hosts[i], voter_hosts=voter_hosts,
                       netns=self.netns[i])
            for i, n in enumerate(layout["nodes"])
        ]

    def _wait_all_registered(self, t0: float) -> None:
        deadline = t0 + self.start_timeout
        while True:
            try:
                seen = len(describe_cluster(self.bootstrap, 3.0, self.admin_security)["brokers"])
            except Exception:  # noqa: BLE001 - retried until the deadline
                seen = 0
            if seen == self.brokers:
                return
            if time.monotonic() > deadline:
                raise KafkaLauncherError(f"only {seen} of {self.brokers} brokers registered at {self.bootstrap} "
                                         f"within {self.start_timeout:.0f}s; see {self.data_dir}/node-*/{BROKER_LOG_NAME}")
            time.sleep(0.2)

    def kill(self, node_id: int) -> int:
        """SIGKILL one node's JVM (no shutdown, no leadership hand-over); returns its pid."""
        n = self.node(node_id)
        pid = n.pid
        if n.process is None or pid is None:
            raise KafkaLauncherError(f"node {node_id} is not running")
        n.process.kill()
        n.process.wait(10)
        return pid

    def stop(self, timeout: float | None = None) -> None:
        """Stop every node (SIGTERM each, then wait: a controlled shutdown hands leadership over), then
        remove the data dir unless ``keep_data``."""
        self._stop_nodes(self.stop_timeout if timeout is None else timeout)
        if self.data_dir is not None and not self.keep_data:
            remove_data_dir(self.data_dir)

    def stop_nodes(self, timeout: float | None = None) -> None:
        """Stop every node and keep the data: :meth:`start` then restarts the same cluster."""
        self._stop_nodes(self.stop_timeout if timeout is None else timeout)

    def _stop_nodes(self, timeout: float) -> None:
        running = [n for n in self.nodes if n.is_running()]
        terminate_pids([n.pid for n in running if n.pid], timeout)
        for n in self.nodes:
            n.stop(timeout)  # reaps the JVMs stopped above; unregisters their atexit hooks

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load_cluster_layout(data_dir: str | os.PathLike) -> dict | None:
    """``data_dir/cluster.json`` (cluster id, broker count, each node's id and ports), or None if absent."""
    path = Path(data_dir) / CLUSTER_FILE_NAME
    try:
        layout = json.loads(path.read_text())
        nodes = layout["nodes"]
        if (not is_valid_cluster_id(layout["cluster_id"]) or layout["brokers"] != len(nodes)
                or not all(isinstance(n[k], int) for n in nodes for k in ("node_id", "port", "controller_port"))):
            raise ValueError("inconsistent")
        return layout
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise KafkaLauncherError(f"{path} is unreadable ({e}); remove the data dir to start a new cluster") from None


def claim_data_dir(given: Path | None, what: str) -> Path:
    """``given`` (created if needed; refused if it holds anything not made by meshlog), else a new temp
    dir; marked as meshlog's, so that :func:`remove_data_dir` may delete it."""
    if given is not None:
        if given.exists() and any(given.iterdir()) and not (given / DATA_MARKER_NAME).exists():
            raise KafkaLauncherError(f"{given} is not empty and was not created by meshlog; refusing to use it")
        given.mkdir(parents=True, exist_ok=True)
        d = given
    else:
        d = Path(tempfile.mkdtemp(prefix="meshlog-kafka-" if what == "broker" else f"meshlog-kafka-{what}-"))
    (d / DATA_MARKER_NAME).write_text(f"data directory of a meshlog local Kafka {what}\n")
    return d


def remove_data_dir(path: str | os.PathLike) -> bool:
    """Delete a broker data dir, but only one carrying meshlog's marker file."""
    p = Path(path)
    if not (p / DATA_MARKER_NAME).exists():
        if p.exists():
            log.warning("not removing %s: no %s marker", p, DATA_MARKER_NAME)
        return False
    shutil.rmtree(p, ignore_errors=True)
    return True


# --------------------------------------------------------------------------
# Detached broker with a state file (meshlog kafka up|down|status)
# --------------------------------------------------------------------------


@dataclass
class KafkaState:
    pid: int
    bootstrap: str
    data_dir: str
    log_path: str
    properties_path: str
    version: str = KAFKA_VERSION
    started_at: float = field(default_factory=time.time)
    security_env: dict | None = None  # --secure: the admin identity's MESHLOG_KAFKA_* variables
    # a cluster (--brokers N > 1): every node's node_id, pid, bootstrap, properties_path, log_path, data_dir;
    # pid/log_path/properties_path above are node 1's and bootstrap lists every node
    nodes: list | None = None

    @property
    def admin_security(self) -> KafkaSecurity | None:
        return KafkaSecurity.from_env(self.security_env) if self.security_env else None

    @property
    def node_list(self) -> list[dict]:
        """Every node, a single broker as one node."""
        return self.nodes or [{"node_id": 1, "pid": self.pid, "bootstrap": self.bootstrap, "data_dir": self.data_dir,
                               "properties_path": self.properties_path, "log_path": self.log_path}]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def load_state(home: Path | None = None) -> KafkaState | None:
    path = state_file_path(home)
    try:
        data = json.loads(path.read_text())
        return KafkaState(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:
        log.warning("ignoring unreadable state file %s: %s", path, e)
        return None


def _save_state(state: KafkaState, home: Path | None = None) -> None:
    path = state_file_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, state.to_json().encode())


def _clear_state(home: Path | None = None) -> None:
    with contextlib.suppress(FileNotFoundError):
        state_file_path(home).unlink()


def _kept_path(home: Path | None = None) -> Path:
    """What ``down --keep-data`` kept (data dir, client port), so a plain ``up`` restarts the same broker(s)."""
    return state_file_path(home).with_name("kept.json")


def _load_kept(home: Path | None = None) -> dict | None:
    try:
        kept = json.loads(_kept_path(home).read_text())
        return kept if Path(kept["data_dir"]).is_dir() else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _clear_kept(home: Path | None = None) -> None:
    with contextlib.suppress(FileNotFoundError):
        _kept_path(home).unlink()


@dataclass
class KafkaStatus:
    running: bool  # some node's JVM alive
    answering: bool  # admin describe_cluster succeeded
    state: KafkaState | None
    already_running: bool = False
    nodes_running: list[int] = field(default_factory=list)  # node ids whose JVM is alive

    @property
    def complete(self) -> bool:
        """Every node of the recorded broker or cluster is alive."""
        return self.state is not None and len(self.nodes_running) == len(self.state.node_list)

    def as_dict(self) -> dict:
        d = {"running": self.running, "answering": self.answering}
        if self.state is not None:
            d.update(asdict(self.state))
            if self.state.nodes:
                d["nodes_running"] = self.nodes_running
        if self.already_running:
            d["already_running"] = True
        return d


def status(home: Path | None = None, probe_timeout: float = 3.0) -> KafkaStatus:
    """What the state file says, checked against the process table and an admin call."""
    st = load_state(home)
    if st is None:
        return KafkaStatus(False, False, None)
    alive = [n["node_id"] for n in st.node_list if pid_is_broker(n["pid"], n["properties_path"])]
    if not alive:
        return KafkaStatus(False, False, st)
    answering = broker_answers(st.bootstrap, probe_timeout, st.admin_security or KafkaSecurity())
    return KafkaStatus(True, answering, st, nodes_running=alive)


def up(
    home: Path | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    port: int | None = None,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    jvm_opts: Sequence[str] | None = None,
    secure: bool = False,
    brokers: int | None = None,
) -> KafkaStatus:
    """Ensure a detached broker (``brokers`` > 1: a :class:`LocalCluster`) is running; return its status
    (``already_running`` if it was).

    Without ``data_dir``, what the last ``down --keep-data`` kept is restarted (same data, same ports),
    else a new temp dir is used. ``brokers`` defaults to what the data dir holds, else 1.
    ``secure``: TLS listeners requiring client certificates and ACLs (see :func:`secure_properties`)."""
    sf = state_file_path(home)
    with _file_lock(sf.with_name("lock")):
        current = status(home)
        if current.running:
            st = current.state
            assert st is not None
            if bool(st.security_env) != secure:
                raise KafkaLauncherError(
                    f"a {'secure' if st.security_env else 'plaintext'} broker is already running at "
                    f"{st.bootstrap}; run 'meshlog kafka down' first"
                )
            if brokers is not None and brokers != len(st.node_list):
                raise KafkaLauncherError(f"a Kafka of {len(st.node_list)} broker(s) is already running at "
                                         f"{st.bootstrap}; run 'meshlog kafka down' first")
            if data_dir is not None and Path(data_dir).resolve() != Path(st.data_dir).resolve():
                # answering with the running broker would put this caller's data into another data dir
                raise KafkaLauncherError(
                    f"a broker is already running at {st.bootstrap} on data dir {st.data_dir}, not {data_dir}; "
                    "run 'meshlog kafka down' first, or give the second broker its own MESHLOG_HOME")
            if not current.complete:  # a node of the cluster died: start it again on its data
                gone = sorted({n["node_id"] for n in st.node_list} - set(current.nodes_running))
                log.info("restarting node(s) %s of the cluster at %s", ", ".join(map(str, gone)), st.bootstrap)
                cluster = LocalCluster(len(st.node_list), st.data_dir, start_timeout=start_timeout, jvm_opts=jvm_opts,
                                       detached=True, keep_data=True, secure=secure)
                cluster.start(only=gone)
                st.nodes = _node_records(cluster, previous=st.nodes)
                st.pid = st.nodes[0]["pid"]
                _save_state(st, home)
                return KafkaStatus(True, True, st, nodes_running=[n["node_id"] for n in st.node_list])
            if current.answering or wait_until_answers(st.bootstrap, start_timeout, st.pid,
                                                       st.admin_security or KafkaSecurity()):
                log.info("Kafka already running at %s (pid %d)", st.bootstrap, st.pid)
                current.already_running = True
                current.answering = True
                return current
            raise KafkaLauncherError(
                f"broker pid {st.pid} is running but not answering on {st.bootstrap}; "
                f"see {st.log_path} or run 'meshlog kafka down'"
            )
        if current.state is not None:
            log.info("removing stale state (pid %d is gone)", current.state.pid)
            _clear_state(home)
        kept = _load_kept(home) if data_dir is None else None
        if kept is not None:
            data_dir = kept["data_dir"]
            port = port or kept.get("port")
            log.info("restarting the Kafka kept by 'down --keep-data' in %s", data_dir)
        layout = load_cluster_layout(data_dir) if data_dir is not None else None
        if brokers is None:
            brokers = layout["brokers"] if layout else 1
        if brokers > 1 or layout is not None:
            if port is not None and kept is None:
                raise KafkaLauncherError("--port applies to a single broker; a cluster chooses its nodes' ports")
            st = _up_cluster(brokers, data_dir, start_timeout, jvm_opts, secure)
        else:
            st = _up_single(data_dir, port, start_timeout, jvm_opts, secure)
        _save_state(st, home)
        _clear_kept(home)
        return KafkaStatus(True, True, st, nodes_running=[n["node_id"] for n in st.node_list])


def _up_single(data_dir, port, start_timeout, jvm_opts, secure) -> KafkaState:
    kafka = LocalKafka(data_dir, port=port, start_timeout=start_timeout, jvm_opts=jvm_opts,
                       detached=True, keep_data=True, secure=secure)
    kafka.start()
    return _state_of(kafka, kafka.bootstrap, kafka.data_dir, kafka.admin_security)


def _up_cluster(brokers, data_dir, start_timeout, jvm_opts, secure) -> KafkaState:
    cluster = LocalCluster(brokers, data_dir, start_timeout=start_timeout, jvm_opts=jvm_opts, detached=True,
                           keep_data=True, secure=secure)
    cluster.start()
    return _state_of(cluster.nodes[0], cluster.bootstrap, cluster.data_dir, cluster.admin_security,
                     _node_records(cluster))


def _state_of(first: LocalKafka, bootstrap: str, data_dir, admin: KafkaSecurity | None,
              nodes: list | None = None) -> KafkaState:
    """The state file's record: ``first`` (the only node, or a cluster's node 1) gives pid, log and properties."""
    return KafkaState(
        pid=first.pid or 0,
        bootstrap=bootstrap,
        data_dir=str(data_dir),
        log_path=str(first.log_path),
        properties_path=str(first.properties_path),
        version=first.version,
        security_env=to_env(admin) if admin else None,
        nodes=nodes,
    )


def _node_records(cluster: LocalCluster, previous: list | None = None) -> list[dict]:
    """The state file's record of every node; a node this ``cluster`` object did not start keeps ``previous``'s pid."""
    pids = {n["node_id"]: n["pid"] for n in previous or ()}
    return [{"node_id": n.node_id, "pid": n.pid or pids.get(n.node_id, 0),
             "bootstrap": cluster.node_bootstrap(n.node_id), "data_dir": str(cluster.node_dir(n.node_id)),
             "properties_path": str(cluster.node_dir(n.node_id) / "server.properties"),
             "log_path": str(cluster.node_dir(n.node_id) / BROKER_LOG_NAME)}
            for n in cluster.nodes]


def down(home: Path | None = None, *, keep_data: bool = False, timeout: float = DEFAULT_STOP_TIMEOUT) -> KafkaStatus:
    """Stop the detached broker or every node of the cluster (if any), remove the data dir unless
    ``keep_data`` (then a plain ``up`` restarts it), clear the state file.

    Returns the status *before* stopping (``running`` False if nothing was running).
    """
    sf = state_file_path(home)
    with _file_lock(sf.with_name("lock")):
        before = status(home, probe_timeout=1.0)
        st = before.state
        if st is None:
            return before
        alive = [n for n in st.node_list if n["node_id"] in before.nodes_running]
        for n in alive:
            log.info("stopping Kafka node %d pid %d at %s", n["node_id"], n["pid"], n["bootstrap"])
        terminate_pids([n["pid"] for n in alive], timeout)
        if not alive:
            log.info("Kafka pid %d was not running; cleaning up", st.pid)
        if not keep_data:
            if remove_data_dir(st.data_dir):
                log.info("removed data dir %s", st.data_dir)
            _clear_kept(home)
        else:
            log.info("kept data dir %s", st.data_dir)
            port = None if st.nodes else int(st.bootstrap.rpartition(":")[2])
            write_file_atomic(_kept_path(home), json.dumps({"data_dir": st.data_dir, "port": port}).encode())
        _clear_state(home)
        return before


# --------------------------------------------------------------------------
# Test selection: env var -> testcontainers (Docker) -> local launcher
# --------------------------------------------------------------------------


def docker_engine_available(timeout: float = 2.0) -> bool:
    """True if a Docker engine answers a ping within ``timeout`` seconds."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host and not any(os.path.exists(p) for p in ("/var/run/docker.sock", os.path.expanduser("~/.docker/run/docker.sock"))):
        return False
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means "no usable engine"
        return False


@contextlib.contextmanager
def _container_kafka(image: str) -> Iterator[str]:
    try:
        from testcontainers.community.kafka import KafkaContainer  # testcontainers >= 4.14
    except ImportError:
        from testcontainers.kafka import KafkaContainer  # type: ignore[no-redef]

    container = (
        KafkaContainer(image)
        .with_kraft()
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR", "1")
    )
    with container as kafka:
        yield kafka.get_bootstrap_server()


def brokers_for_tests() -> int:
    """``$MESHLOG_KAFKA_BROKERS`` (1 to MAX_BROKERS), default 1; a bad value is a clear error."""
    raw = os.environ.get(ENV_BROKERS, "").strip() or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_BROKERS:
        raise KafkaLauncherError(f"${ENV_BROKERS}: {raw[:20]!r} is not a broker count from 1 to {MAX_BROKERS}")
    return int(raw)


@contextlib.contextmanager
def kafka_for_tests(start_timeout: float = DEFAULT_START_TIMEOUT) -> Iterator[str]:
    """Yield a bootstrap address for a test session, and clean up after.

    Order: ``$MESHLOG_KAFKA_BOOTSTRAP`` (used as is) -> a testcontainers
    KRaft Kafka (``$MESHLOG_KAFKA_IMAGE``, default %s) when a Docker engine
    answers -> :class:`LocalKafka` in a temp dir (``$MESHLOG_KAFKA_BROKERS`` > 1: a
    :class:`LocalCluster` of that many nodes).
    """
    explicit = os.environ.get(ENV_BOOTSTRAP, "").strip()
    if explicit:
        log.info("Kafka for tests: %s from $%s", explicit, ENV_BOOTSTRAP)
        yield explicit
        return
    if docker_engine_available():
        image = os.environ.get(ENV_IMAGE, DEFAULT_CONTAINER_IMAGE)
        log.info("Kafka for tests: testcontainers %s (Docker engine answered)", image)
        with _container_kafka(image) as bootstrap:
            log.info("Kafka for tests: container at %s", bootstrap)
            yield bootstrap
        return
    brokers = brokers_for_tests()
    if brokers > 1:
        log.info("Kafka for tests: a local cluster of %d nodes ($%s)", brokers, ENV_BROKERS)
        with LocalCluster(brokers, start_timeout=start_timeout) as cluster:
            log.info("Kafka for tests: local cluster at %s (data %s)", cluster.bootstrap, cluster.data_dir)
            yield cluster.bootstrap
        return
    log.info("Kafka for tests: local launcher (no $%s, no Docker engine)", ENV_BOOTSTRAP)
    with LocalKafka(start_timeout=start_timeout) as kafka:
        log.info("Kafka for tests: local broker at %s (pid %s, log %s)", kafka.bootstrap, kafka.pid, kafka.log_path)
        yield kafka.bootstrap


if kafka_for_tests.__doc__:
    kafka_for_tests.__doc__ = kafka_for_tests.__doc__ % DEFAULT_CONTAINER_IMAGE

__all__ = [
    "KAFKA_VERSION", "DEFAULT_JVM_OPTS", "KafkaLauncherError", "LocalKafka", "LocalCluster", "KafkaState", "KafkaStatus",
    "ensure_kafka_jars", "check_java", "kafka_libs_dir", "cache_root", "meshlog_home", "state_file_path",
    "render_pom", "server_properties", "render_properties", "render_log4j2_config", "random_cluster_id",
    "is_valid_cluster_id", "free_port", "free_ports", "jars_ready", "describe_cluster", "broker_answers",
    "up", "down", "status", "load_state", "docker_engine_available", "kafka_for_tests", "parse_java_major",
]
