"""Story: a projector catching up on a backlog folds it in the order replay folds it.

Given a log in which each run-time subscription comes right after the very first registration of the
service it names, and that registration sits on another partition, a projector started on a fresh data dir
(so everything is backlog) accepts every subscription, as replay does (``events.topics.merge_order``):
none is refused as an unknown service. A consumer hands a backlog over one partition at a time, so before
``events.merge_gate`` the projector folded the subscriptions' partition ahead of the registrations'
and refused them.

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
