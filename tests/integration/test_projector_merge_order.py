"""Story: a projector catching up on a backlog folds it in the order replay folds it.

Given a log in which each run-time subscription comes right after the very first registration of the
service it names, and that registration sits on another partition, a projector started on a fresh data dir
(so everything is backlog) accepts every subscription, as replay does (``events.topics.merge_order``):
none is refused as an unknown service. A consumer hands a backlog over one partition at a time, so before
``events.merge_gate`` the projector folded the subscriptions' partition ahead of the registrations'
and refused them.

And a live projector, caught up, folds a transaction that commits late in the order of its broker times:
given a service's first registration appended in a transaction, then (before the commit) a subscription to
that service on another partition, the projector waits for the commit and accepts the subscription, as
replay (reading after the commit) does. ``read_committed`` hands the transaction's records over only at
the commit, so before ``projector.merged_fetch`` counted a partition with an open transaction as behind,
the projector folded the subscription first and refused it as an unknown service.

Real broker (the session's, shared: the projector folds everyone's events; only this module's instances are
looked at). The projector runs in process to read its folded state; it publishes what any projector of this
log publishes.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from events import topics
from events import types as t
from events.admin import ensure_topics
from events.codec import encode
from events.envelope import new_event
from events.kafka_security import connection_kwargs
from projector.service import ProjectorConfig, ProjectorService
from projector.snapshots import tp_key
from replay.engine import open_log, rebuild

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

P = f"mo{uuid.uuid4().hex[:6]}"
PAIRS = 24
APPS_PARTITION = 5  # the subscriptions' partition; the registrations they name are on 0-4


def registered(service: str, node: str | None = None) -> t.InstanceRegistered:
    return t.InstanceRegistered(
        service=service, instance_id="1", address="127.0.0.1", port=8080, node_id=node,
        sidecar=t.SidecarPorts(inbound_port=15001, outbound_port=15002) if node else None,
    )


async def append_log(bootstrap: str) -> dict[str, int]:
    """Each app registers; then, one pair at a time, a service's first registration and the subscription
    to it. Every append is acknowledged before the next, so broker times follow this order. The offsets
    just past this log, per partition."""
    producer = AIOKafkaProducer(**connection_kwargs(bootstrap), enable_idempotence=True, acks="all")
    await producer.start()
    ends: dict[str, int] = {}

    async def send(partition: int, payload: t.Payload) -> None:
        meta = await producer.send_and_wait(topics.REGISTRATIONS, encode(new_event(payload, producer="test")),
                                            key=payload.key().encode(), partition=partition)
        ends[tp_key(meta.topic, meta.partition)] = meta.offset + 1

    try:
        for i in range(PAIRS):
            await send(APPS_PARTITION, registered(f"{P}-app{i}", node=f"{P}-node{i}"))
        for i in range(PAIRS):
            await send(i % APPS_PARTITION, registered(f"{P}-dep{i}"))
            await send(APPS_PARTITION, t.DependencySubscribed(service=f"{P}-app{i}", instance_id="1",
                                                                dependency=f"{P}-dep{i}"))
    finally:
        await producer.stop()
    return ends


async def test_a_projector_catching_up_accepts_subscriptions_as_replay_does(kafka_bootstrap, tmp_path):
    await ensure_topics(kafka_bootstrap)
    ends = await append_log(kafka_bootstrap)
    svc = ProjectorService(ProjectorConfig(bootstrap=kafka_bootstrap, data_dir=tmp_path / "projector", max_batch=50,
                                    insecure_events=True, gc_freeze=False, snapshot_interval_s=3600.0,
                                    snapshot_events=10_000_000))
    run = asyncio.create_task(svc.run())
    try:
        deadline = time.monotonic() + 240
        while not all(svc.next_folded.get(k, 0) >= end for k, end in ends.items()):
            assert not run.done(), f"the projector stopped: {run.exception() if not run.cancelled() else 'cancelled'}"
            assert time.monotonic() < deadline, f"not folded past {ends} in 240 s: at {svc.next_folded}"
            await asyncio.sleep(0.2)
        refused = [i for i in range(PAIRS)
                   if f"{P}-dep{i}" not in svc.state.instances[f"{P}-app{i}/1"].dependencies()]
        assert refused == [], f"subscriptions refused by the projector (replay accepts them all): {refused}"
    finally:
        svc.request_stop()
        await asyncio.wait_for(run, 60)


async def test_a_live_projector_folds_a_late_committed_transaction_in_log_order(kafka_bootstrap, tmp_path):
    await ensure_topics(kafka_bootstrap)
    app, dep = registered(f"{P}-txapp", node=f"{P}-txnode"), registered(f"{P}-txdep")
    plain = AIOKafkaProducer(**connection_kwargs(kafka_bootstrap), enable_idempotence=True, acks="all")
    txn = AIOKafkaProducer(**connection_kwargs(kafka_bootstrap), enable_idempotence=True, acks="all",
                           transactional_id=f"test-{P}")
    await plain.start()
    await txn.start()

    async def send(producer: AIOKafkaProducer, partition: int, payload: t.Payload) -> int:
        meta = await producer.send_and_wait(topics.REGISTRATIONS, encode(new_event(payload, producer="test")),
                                            key=payload.key().encode(), partition=partition)
        return meta.offset

    svc = ProjectorService(ProjectorConfig(bootstrap=kafka_bootstrap, data_dir=tmp_path / "projector",
                                           insecure_events=True, gc_freeze=False, snapshot_interval_s=3600.0,
                                           snapshot_events=10_000_000))
    run = asyncio.create_task(svc.run())

    async def folded_past(partition: int, offset: int) -> None:
        key, deadline = tp_key(topics.REGISTRATIONS, partition), time.monotonic() + 240
        while svc.next_folded.get(key, 0) <= offset or not svc.caught_up.is_set():
            assert not run.done(), f"the projector stopped: {run.exception() if not run.cancelled() else 'cancelled'}"
            assert time.monotonic() < deadline, f"not folded past {key}@{offset} in 240 s: at {svc.next_folded}"
            await asyncio.sleep(0.1)

    try:
        await folded_past(APPS_PARTITION, await send(plain, APPS_PARTITION, app))  # live from here on
        await txn.begin_transaction()
        dep_at = await send(txn, 0, dep)  # logged first, visible only at the commit
        sub = t.DependencySubscribed(service=f"{P}-txapp", instance_id="1", dependency=f"{P}-txdep")
        sub_at = await send(plain, APPS_PARTITION, sub)  # logged second, visible at once
        await asyncio.sleep(1.0)  # the projector fetches the subscription meanwhile
        await txn.commit_transaction()
        await folded_past(0, dep_at)
        await folded_past(APPS_PARTITION, sub_at)
        assert f"{P}-txdep" in svc.state.instances[f"{P}-txapp/1"].dependencies(), (
            "the subscription was refused: the projector folded it before the registration logged ahead of it")
        async with open_log(kafka_bootstrap) as consumer:  # replay, reading after the commit, agrees
            rebuilt = await rebuild(consumer, int(time.time() * 1000), use_snapshot=False)
        assert f"{P}-txdep" in rebuilt.state.instances[f"{P}-txapp/1"].dependencies()
    finally:
        svc.request_stop()
        await asyncio.wait_for(run, 60)
        await txn.stop()
        await plain.stop()
