"""Run a real Apache Kafka (KRaft) broker, or a cluster of them, locally, without Docker.

The broker jars come from Maven Central (resolved once with ``mvn`` into a
cache directory); the broker is a plain JVM child process listening on
127.0.0.1 only, on ports chosen at run time.

Main entry points (each importable from here):

* :func:`ensure_kafka_jars` -- fetch (once) and return the ``libs`` directory.
* :class:`LocalKafka` -- start/stop one broker; also a context manager.
* :class:`LocalCluster` -- several nodes (each broker and controller), each its
  own JVM, data dir and ports, kept across restarts.
* :func:`up`, :func:`down`, :func:`status` -- a detached broker or cluster tracked by a
  state file (used by ``meshlog kafka up|down|status``).
* :func:`kafka_for_tests` -- context manager yielding a bootstrap address:
  ``$MESHLOG_KAFKA_BOOTSTRAP``, else a testcontainers Kafka when a Docker
  engine answers, else :class:`LocalKafka`.

One module per job, each importing only the ones before it in this list:

* ``settings`` -- versions, defaults, file names, environment variables, the
  cache and home directories, ``KafkaLauncherError``;
* ``config`` -- pure helpers: the POM, cluster ids, free ports, a node's
  properties and log4j2 configuration, reading a broker's logs;
* ``jars`` -- java and mvn, and the one-time fetch of the jars;
* ``probes`` -- readiness over the Kafka protocol, and the broker processes;
* ``data_dirs`` -- which data directories are ours, a cluster's layout file;
* ``broker`` -- ``LocalKafka``; ``cluster`` -- ``LocalCluster``;
* ``detached`` -- ``up``/``down``/``status`` and their state file;
* ``for_tests`` -- the broker the tests use.
"""

from __future__ import annotations

from meshlog.kafka_local.settings import (
    AUTHORIZER_CLASS, BROKER_LOG_NAME, CONSOLE_LOG_NAME, DATA_MARKER_NAME, DEFAULT_CONTAINER_IMAGE, DEFAULT_JVM_OPTS,
    DEFAULT_START_TIMEOUT, DEFAULT_STOP_TIMEOUT, DEPENDENCY_PLUGIN_VERSION, ENV_BOOTSTRAP, ENV_BROKERS,
    ENV_CACHE_DIR, ENV_HOME, ENV_IMAGE, ENV_JVM_OPTS, HOST, KAFKA_VERSION, LOG4J_VERSION, MAIN_CLASS, MARKER_NAME,
    MIN_JAVA, PRINCIPAL_MAPPING_RULES, SCALA_BINARY_VERSION, SLF4J_VERSION, STORAGE_TOOL_CLASS, TLS_DIR_NAME,
    KafkaLauncherError, cache_root, kafka_libs_dir, kafka_version_dir, meshlog_home, state_file_path,
)
from meshlog.kafka_local.config import (
    CLUSTER_FAILURE_DETECTION, error_lines, free_port, free_ports, is_valid_cluster_id, jars_ready,
    jvm_opts_from_env, missing_jars, parse_java_major, quorum_voters, random_cluster_id, render_log4j2_config,
    render_pom, render_properties, required_jar_patterns, secure_properties, server_properties, tail_text,
    write_marker,
)
from meshlog.kafka_local.jars import check_java, ensure_kafka_jars, find_java, find_mvn
from meshlog.kafka_local.probes import (
    broker_answers, describe_cluster, pid_alive, pid_is_broker, port_accepts, terminate_pid, terminate_pids,
    wait_until_answers,
)
from meshlog.kafka_local.data_dirs import CLUSTER_FILE_NAME, claim_data_dir, load_cluster_layout, remove_data_dir
from meshlog.kafka_local.broker import LocalKafka
from meshlog.kafka_local.cluster import CLUSTER_JVM_OPTS, MAX_BROKERS, LocalCluster
from meshlog.kafka_local.detached import KafkaState, KafkaStatus, down, load_state, status, up
from meshlog.kafka_local.for_tests import brokers_for_tests, docker_engine_available, kafka_for_tests

# the package's API: everything its modules define for others (their own helpers stay private)
__all__ = [
    "AUTHORIZER_CLASS", "BROKER_LOG_NAME", "CONSOLE_LOG_NAME", "DATA_MARKER_NAME", "DEFAULT_CONTAINER_IMAGE",
    "DEFAULT_JVM_OPTS", "DEFAULT_START_TIMEOUT", "DEFAULT_STOP_TIMEOUT", "DEPENDENCY_PLUGIN_VERSION", "ENV_BOOTSTRAP",
    "ENV_BROKERS", "ENV_CACHE_DIR", "ENV_HOME", "ENV_IMAGE", "ENV_JVM_OPTS", "HOST", "KAFKA_VERSION", "LOG4J_VERSION",
    "MAIN_CLASS", "MARKER_NAME", "MIN_JAVA", "PRINCIPAL_MAPPING_RULES", "SCALA_BINARY_VERSION", "SLF4J_VERSION",
    "STORAGE_TOOL_CLASS", "TLS_DIR_NAME", "KafkaLauncherError", "cache_root", "kafka_libs_dir", "kafka_version_dir",
    "meshlog_home", "state_file_path", "CLUSTER_FAILURE_DETECTION", "error_lines", "free_port", "free_ports",
    "is_valid_cluster_id", "jars_ready", "jvm_opts_from_env", "missing_jars", "parse_java_major", "quorum_voters",
    "random_cluster_id", "render_log4j2_config", "render_pom", "render_properties", "required_jar_patterns",
    "secure_properties", "server_properties", "tail_text", "write_marker", "check_java", "ensure_kafka_jars",
    "find_java", "find_mvn", "broker_answers", "describe_cluster", "pid_alive", "pid_is_broker", "port_accepts",
    "terminate_pid", "terminate_pids", "wait_until_answers", "CLUSTER_FILE_NAME", "claim_data_dir",
    "load_cluster_layout", "remove_data_dir", "LocalKafka", "CLUSTER_JVM_OPTS", "MAX_BROKERS", "LocalCluster",
    "KafkaState", "KafkaStatus", "down", "load_state", "status", "up", "brokers_for_tests", "docker_engine_available",
    "kafka_for_tests",
]
