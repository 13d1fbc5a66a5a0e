"""Shared pytest fixtures."""

from __future__ import annotations

import logging
from typing import Iterator

import pytest


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A Kafka bootstrap address ("host:port") for the whole test session.

    $MESHLOG_KAFKA_BOOTSTRAP if set, else a testcontainers Kafka when a Docker
    engine answers, else a local broker JVM (see meshlog.kafka_local), stopped
    at session end. Topics are not auto-created: create the ones you need.
    """
    from meshlog.kafka_local import kafka_for_tests

    logging.getLogger("meshlog.kafka").setLevel(logging.INFO)
    with kafka_for_tests() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="module")
def kafka_cluster() -> Iterator["LocalCluster"]:  # noqa: F821 - imported lazily below
    """A local three-node KRaft cluster of the module's own (meshlog.kafka_local.LocalCluster), for
    tests that kill, stop and restart its nodes; data removed at the end. (The whole suite can run on a
    cluster too: MESHLOG_KAFKA_BROKERS=3 makes ``kafka_bootstrap`` one.)"""
    from meshlog.kafka_local import LocalCluster

    logging.getLogger("meshlog.kafka").setLevel(logging.INFO)
    with LocalCluster(3, start_timeout=180.0) as cluster:
        yield cluster
