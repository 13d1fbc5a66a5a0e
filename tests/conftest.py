"""Shared pytest fixtures."""

from __future__ import annotations

import logging
import os
from typing import Iterator

import pytest

# The session's broker is plaintext and most tests append unsigned events: the projector and replay they run
# fold those unverified, explicitly (projector.cli / replay.cli read this). Tests of verification itself and
# the demo (secure by default) run their processes without it.
os.environ.setdefault("MESHLOG_INSECURE_EVENTS", "1")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A Kafka bootstrap address ("host:port") for the whole test session.

    $MESHLOG_KAFKA_BOOTSTRAP if set, else a testcontainers Kafka when a Docker
    engine answers, else a local broker JVM (see meshlog.kafka_local), stopped
    at session end; MESHLOG_KAFKA_BROKERS=3 makes it a local three-node cluster. Topics are not auto-created: create the ones you need.
    """
    from meshlog.kafka_local import kafka_for_tests

    logging.getLogger("meshlog.kafka").setLevel(logging.INFO)
    with kafka_for_tests() as bootstrap:
        yield bootstrap

