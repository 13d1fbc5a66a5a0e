"""A secure broker (TLS, required client certificates, StandardAuthorizer) enforces meshlog's ACL table.

One broker for the module (``LocalKafka(secure=True)``), topics created and the
ACL table applied by the admin identity exactly as ``meshlog topics ensure``
does. Each role gets a certificate from the broker's mesh CA; the tests then
check, per role and per topic, that the broker allows what the table grants
and refuses everything else, and that connections without a certificate of
this CA never get in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from events import topics
from events.admin import BrokerUnavailable, NotAuthorized, connect_admin, ensure_topics
from events.envelope import new_event
from events.kafka_acls import (
    ACL_TABLE,
    CA_SERVER,
    CHECKER,
    GATEWAY,
    HEALTHCHECK_GROUP_PREFIX,
    OPERATOR,
    PROJECTOR,
    READ,
    REPLAY,
    SIDECAR,
    TOPIC,
    WRITE,
)
from events.kafka_security import SSL, KafkaSecurity, connection_kwargs, to_env
from events.producer import EventProducer
from events.types import InstanceRegistered, RouteRuleDeleted
from identity import pki, spiffe
from meshlog import kafka_tls
from meshlog.kafka_acl_apply import apply_acls
from meshlog.kafka_local import LocalKafka

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

# one identity per role, as the mesh CA names them
IDENTITIES = {
    SIDECAR: "sidecar/reviews/r1",
    CHECKER: "checker/c1",
    OPERATOR: "operator/alice",
    PROJECTOR: "projector",
    GATEWAY: "gateway/g1",
    REPLAY: "replay/r1",
    CA_SERVER: "ca-server/c1",
}
ALL_TOPIC_NAMES = [t.name for t in topics.ALL_TOPICS]
TIMEOUT = 20.0
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def secure_kafka():
    logging.getLogger("meshlog.kafka").setLevel(logging.INFO)
    with LocalKafka(secure=True) as kafka:
        log.info("secure broker started in %.1fs", kafka.startup_seconds)
        admin = kafka.admin_security
        asyncio.run(ensure_topics(kafka.bootstrap, security=admin))
        first = apply_acls(kafka.bootstrap, admin)
        kafka.first_acl_report = first  # type: ignore[attr-defined]
        asyncio.run(seed_every_topic(kafka.bootstrap, admin))
        yield kafka


@pytest.fixture(scope="module")
def roles(secure_kafka) -> dict[str, KafkaSecurity]:
    return {role: secure_kafka.security_for(path) for role, path in IDENTITIES.items()}


async def seed_every_topic(bootstrap: str, admin: KafkaSecurity) -> None:
    """One record in partition 0 of every topic, so a permitted read has something to fetch."""
    producer = AIOKafkaProducer(**connection_kwargs(bootstrap, admin))
    await asyncio.wait_for(producer.start(), TIMEOUT)
    try:
        for name in ALL_TOPIC_NAMES:
            await asyncio.wait_for(producer.send_and_wait(name, b"seed", key=b"seed", partition=0), TIMEOUT)
    finally:
        await producer.stop()


def allowed(role: str, operation: str) -> set[str]:
    """Topics the table grants ``operation`` on to ``role``."""
    return {g.name for g in ACL_TABLE[role] if g.resource_type == TOPIC and operation in g.operations}


async def try_write(bootstrap: str, security: KafkaSecurity, topic: str) -> bool:
    """True if a record was appended to ``topic``; False if the broker refused it as unauthorized."""
    producer = AIOKafkaProducer(**connection_kwargs(bootstrap, security), request_timeout_ms=10_000)
    await asyncio.wait_for(producer.start(), TIMEOUT)
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, b"probe", key=b"acl-test"), TIMEOUT)
        return True
    except TopicAuthorizationFailedError:
        return False
    finally:
        await producer.stop()


async def readable_topics(bootstrap: str, security: KafkaSecurity, names: list[str], within_s: float = 8.0) -> set[str]:
    """The topics of ``names`` (each seeded with a record) from which ``security`` actually fetched a record."""
    consumer = AIOKafkaConsumer(**connection_kwargs(bootstrap, security), enable_auto_commit=False,
                                auto_offset_reset="earliest", request_timeout_ms=10_000)
    await asyncio.wait_for(consumer.start(), TIMEOUT)
    pending = {TopicPartition(t, 0) for t in names}
    got: set[str] = set()
    try:
        consumer.assign(sorted(pending))
        deadline = asyncio.get_running_loop().time() + within_s
        while pending and asyncio.get_running_loop().time() < deadline:
            try:
                batch = await asyncio.wait_for(consumer.getmany(*pending, timeout_ms=500), TIMEOUT)
            except TopicAuthorizationFailedError as refused:  # names the refused topic(s); stop asking for them
                pending = {tp for tp in pending if tp.topic not in str(refused)}
                continue
            for tp, records in batch.items():
                if records:
                    got.add(tp.topic)
                    pending.discard(tp)
        return got
    finally:
        await consumer.stop()


def test_acl_table_applied_once_then_idempotent(secure_kafka):
    first = secure_kafka.first_acl_report
    assert first.created > 0 and first.present == 0
    again = apply_acls(secure_kafka.bootstrap, secure_kafka.admin_security)
    assert (again.created, again.present, again.extra) == (0, first.created, 0)


@pytest.mark.parametrize("role", list(IDENTITIES))
async def test_each_role_writes_exactly_its_topics(secure_kafka, roles, role):
    results = {t: await try_write(secure_kafka.bootstrap, roles[role], t) for t in ALL_TOPIC_NAMES}
    assert {t for t, ok in results.items() if ok} == allowed(role, WRITE)


@pytest.mark.parametrize("role", list(IDENTITIES))
async def test_each_role_reads_exactly_its_topics(secure_kafka, roles, role):
    assert await readable_topics(secure_kafka.bootstrap, roles[role], ALL_TOPIC_NAMES) == allowed(role, READ)


def _registration(service: str = "reviews", instance: str = "r1"):
    return new_event(InstanceRegistered(service=service, instance_id=instance, address="10.0.0.7", port=9080))


def _rule():
    return new_event(RouteRuleDeleted(host="reviews", revision=1))


async def test_sidecar_registers_through_the_product_producer_but_cannot_set_a_rule(secure_kafka, roles):
    async with EventProducer(secure_kafka.bootstrap, timeout_s=TIMEOUT, security=roles[SIDECAR]) as producer:
        appended = await producer.append(_registration())
        assert appended.topic == topics.REGISTRATIONS
    async with EventProducer(secure_kafka.bootstrap, timeout_s=TIMEOUT, security=roles[SIDECAR]) as producer:
        with pytest.raises(Exception) as refused:
            await producer.append(_rule())
        assert "TopicAuthorizationFailed" in str(refused.value)


async def test_operator_appends_a_transaction_a_gateway_cannot(secure_kafka, roles):
    envs = [_registration("ratings", "a"), _registration("ratings", "b")]
    async with EventProducer(secure_kafka.bootstrap, timeout_s=TIMEOUT, transactional=True,
                             security=roles[OPERATOR]) as producer:
        assert len(await producer.append_many(envs)) == 2
    producer = AIOKafkaProducer(**connection_kwargs(secure_kafka.bootstrap, roles[GATEWAY]),
                                transactional_id=f"meshlog-registrar-{uuid.uuid4()}")
    try:
        with pytest.raises(TransactionalIdAuthorizationFailed):
            await asyncio.wait_for(producer.start(), TIMEOUT)
    finally:
        await producer.stop()


async def _join_group(bootstrap: str, security: KafkaSecurity, group: str) -> None:
    consumer = AIOKafkaConsumer(topics.HEALTHCHECK_SHARDS, **connection_kwargs(bootstrap, security), group_id=group,
                                enable_auto_commit=False, request_timeout_ms=10_000)
    await asyncio.wait_for(consumer.start(), TIMEOUT)
    try:
        await asyncio.wait_for(consumer.getmany(timeout_ms=3000), TIMEOUT)
        assert consumer.assignment(), "joined the group but got no shard"
    finally:
        await consumer.stop()


async def test_checker_uses_its_group_a_sidecar_cannot(secure_kafka, roles):
    await _join_group(secure_kafka.bootstrap, roles[CHECKER], HEALTHCHECK_GROUP_PREFIX)
    with pytest.raises((GroupAuthorizationFailedError, TopicAuthorizationFailedError)):
        await _join_group(secure_kafka.bootstrap, roles[SIDECAR], HEALTHCHECK_GROUP_PREFIX)


async def test_plaintext_client_is_refused(secure_kafka):
    with pytest.raises(BrokerUnavailable):
        admin = await connect_admin(secure_kafka.bootstrap, 5.0, security=KafkaSecurity())
        await admin.close()


async def test_tls_client_without_a_certificate_is_refused(secure_kafka, roles):
    no_cert = KafkaSecurity(protocol=SSL, ca_file=roles[SIDECAR].ca_file)
    with pytest.raises(BrokerUnavailable):
        admin = await connect_admin(secure_kafka.bootstrap, 5.0, security=no_cert)
        await admin.close()


async def test_certificate_from_another_ca_is_refused(secure_kafka, roles, tmp_path):
    # same trust domain name and the operator role: only the signing root differs
    other = pki.create_root(kafka_tls.DEFAULT_TRUST_DOMAIN)
    files = kafka_tls.issue_files(other, spiffe.operator(kafka_tls.DEFAULT_TRUST_DOMAIN, "mallory"), tmp_path)
    forged = KafkaSecurity(protocol=SSL, ca_file=roles[OPERATOR].ca_file, cert_file=str(files.cert),
                           key_file=str(files.key))
    with pytest.raises(BrokerUnavailable):
        admin = await connect_admin(secure_kafka.bootstrap, 5.0, security=forged)
        await admin.close()
    with pytest.raises((KafkaError, asyncio.TimeoutError)):
        await try_write(secure_kafka.bootstrap, forged, topics.RULES)


def test_topics_ensure_cli_applies_the_table_with_the_admin_identity(secure_kafka):
    env = {**os.environ, **to_env(secure_kafka.admin_security), "MESHLOG_KAFKA_BOOTSTRAP": secure_kafka.bootstrap}
    done = subprocess.run([str(BIN / "meshlog"), "topics", "ensure", "--json"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["acls"] == {"created": 0, "present": secure_kafka.first_acl_report.created, "extra": 0}
    assert sorted(report["ok"]) == sorted(ALL_TOPIC_NAMES)
    # a non-admin identity may not manage ACLs: exit 4, the Java tool's reason on stderr
    sidecar = secure_kafka.security_for(IDENTITIES[SIDECAR])
    env = {**os.environ, **to_env(sidecar), "MESHLOG_KAFKA_BOOTSTRAP": secure_kafka.bootstrap}
    refused = subprocess.run([str(BIN / "meshlog"), "topics", "ensure"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 4, (refused.returncode, refused.stderr)
    assert "may not create it" in refused.stderr


async def test_roles_that_check_topics_on_start_may_do_so(secure_kafka, roles):
    """`projector run` and `registrar healthcheck` call ensure_topics for their topics at start."""
    report = await ensure_topics(secure_kafka.bootstrap, security=roles[PROJECTOR])
    assert report.consistent and not report.created and len(report.ok) == len(ALL_TOPIC_NAMES)
    checked = [topics.BY_NAME[t] for t in (topics.REGISTRATIONS, topics.HEALTH, topics.HEALTHCHECK_SHARDS)]
    report = await ensure_topics(secure_kafka.bootstrap, checked, security=roles[CHECKER])
    assert report.consistent and len(report.ok) == 3
    with pytest.raises(NotAuthorized, match="meshlog topics ensure"):
        await ensure_topics(secure_kafka.bootstrap, security=roles[GATEWAY])


async def test_a_sidecar_reads_the_refusal_of_its_subscription_as_its_api_does(secure_kafka, roles):
    """proxy.subscriptions: position at the end of meshlog.rejections, append, then find the projector's
    SubscriptionRejected naming the event. Without READ on the rejections the first step is refused."""
    from events import types as t

    refusal = new_event(t.SubscriptionRejected(
        action="subscribe", problem="unknown_service", service="reviews", instance_id="r1", dependency="nosuch",
        reason="no instance of nosuch was ever registered", source_topic=topics.REGISTRATIONS, source_partition=0,
        source_offset=12345))
    consumer = AIOKafkaConsumer(**connection_kwargs(secure_kafka.bootstrap, roles[SIDECAR]), enable_auto_commit=False,
                                isolation_level="read_committed", request_timeout_ms=10_000)
    await asyncio.wait_for(consumer.start(), TIMEOUT)
    try:
        tps = [TopicPartition(topics.REJECTIONS, p) for p in range(topics.BY_NAME[topics.REJECTIONS].partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await asyncio.wait_for(consumer.position(tp), TIMEOUT)
        async with EventProducer(secure_kafka.bootstrap, timeout_s=TIMEOUT,
                                 security=roles[PROJECTOR]) as producer:  # the projector's decision
            await producer.append(refusal)
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        found = None
        while found is None and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if record.value and b"nosuch" in record.value:
                        found = record
        assert found is not None, "the sidecar did not see the refusal of its subscription"
    finally:
        await consumer.stop()
