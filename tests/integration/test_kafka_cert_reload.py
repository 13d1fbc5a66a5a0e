"""A Kafka client presents its renewed certificate at the next reconnect, against the real secure broker.

The broker (``LocalKafka(secure=True)``: TLS, client certificates required)
checks a client certificate's validity at every handshake. A producer starts
with a short-lived certificate; the files are then renewed on disk (new key,
new certificate, as ``meshlog ca renew`` or a renewal loop writes them); once
the first certificate has expired and the producer's idle connections are
closed, its next send must open a new connection. The producer built by
``events.kafka_security`` gets in with the renewed certificate; a producer
with a context loaded once (what every client had before) is refused, which
shows the scenario really needs the reload.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

import pytest
from aiokafka import AIOKafkaProducer
from cryptography import x509

from events import topics
from events.admin import ensure_topics
from events.kafka_security import connection_kwargs
from identity import spiffe
from meshlog import kafka_tls
from meshlog.kafka_local import LocalKafka

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

SHORT = timedelta(seconds=15)
IDLE_MS = 1_000  # aiokafka closes a connection idle this long: the next send reconnects
TIMEOUT = 20.0


@pytest.fixture(scope="module")
def secure_kafka():
    with LocalKafka(secure=True) as kafka:
        asyncio.run(ensure_topics(kafka.bootstrap, security=kafka.admin_security))
        yield kafka


def _producer(kwargs: dict) -> AIOKafkaProducer:
    return AIOKafkaProducer(**kwargs, connections_max_idle_ms=IDLE_MS, request_timeout_ms=8_000,
                            retry_backoff_ms=200)


async def test_a_client_reconnects_with_its_renewed_certificate_after_the_old_one_expired(secure_kafka, tmp_path):
    ca = kafka_tls.ensure_ca(secure_kafka.tls_dir)
    # a super user's role (broker/...), so the ACL table is not needed: what is tested is the handshake
    ident = spiffe.SpiffeId.of(ca.domain, kafka_tls.BROKER_ROLE, "reload-test")
    files = kafka_tls.issue_files(ca, ident, tmp_path / "id", lifetime=SHORT)
    first = x509.load_pem_x509_certificate(files.cert.read_bytes())
    security = kafka_tls.security_of(files)

    reloading = _producer(connection_kwargs(secure_kafka.bootstrap, security))
    loaded_once_kwargs = connection_kwargs(secure_kafka.bootstrap, security)
    static = loaded_once_kwargs["ssl_context"]
    static.reload_if_changed = lambda: False  # the context as it was before: chain loaded once, at build time
    loaded_once = _producer(loaded_once_kwargs)
    for producer in (reloading, loaded_once):
        await asyncio.wait_for(producer.start(), TIMEOUT)
    try:
        for producer in (reloading, loaded_once):
            await asyncio.wait_for(producer.send_and_wait(topics.RULES, b"before", key=b"reload-test"), TIMEOUT)

        renewed = kafka_tls.issue_files(ca, ident, tmp_path / "id")  # renewed in place: new key, 24 h
        assert x509.load_pem_x509_certificate(renewed.cert.read_bytes()).serial_number != first.serial_number
        expired_in = (first.not_valid_after_utc - datetime.now(timezone.utc)).total_seconds()
        await asyncio.sleep(max(0.0, expired_in) + 2 * IDLE_MS / 1000 + 1)  # expired, and every connection closed

        sent = await asyncio.wait_for(reloading.send_and_wait(topics.RULES, b"after", key=b"reload-test"), TIMEOUT)
        assert sent.offset >= 0
        with pytest.raises(Exception) as refused:  # the expired certificate does not get through the handshake
            await asyncio.wait_for(loaded_once.send_and_wait(topics.RULES, b"after", key=b"reload-test"), 12.0)
        log.info("the producer without reload failed with %r", refused.value)
    finally:
        for producer in (reloading, loaded_once):
            try:
                await asyncio.wait_for(producer.stop(), TIMEOUT)
            except Exception:  # noqa: BLE001 - the refused one may fail to flush
                pass
