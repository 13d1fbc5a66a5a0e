"""The broker the tests use: ``$MESHLOG_KAFKA_BOOTSTRAP``, else testcontainers when a Docker engine
answers, else the local launcher."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from meshlog.kafka_local.broker import LocalKafka
from meshlog.kafka_local.cluster import LocalCluster, MAX_BROKERS
from meshlog.kafka_local.settings import (
    DEFAULT_CONTAINER_IMAGE, DEFAULT_START_TIMEOUT, ENV_BOOTSTRAP, ENV_BROKERS, ENV_IMAGE, KafkaLauncherError,
)

log = logging.getLogger("meshlog.kafka")


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
