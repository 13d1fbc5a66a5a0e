"""What the launcher is built from and where it keeps things: versions, defaults, file names,
environment variables, the cache and home directories."""

from __future__ import annotations

import os
from pathlib import Path


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
