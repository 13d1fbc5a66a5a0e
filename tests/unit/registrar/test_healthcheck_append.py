"""The health checker's transition records: what a probe saw is escaped and bounded before it is logged; a
lone transition is appended at once, a burst as one signed batch, each transition tracked at its own offset."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from events.admin import AppendFailed
from events.producer import Appended
from events.types import InstanceRegistered
from registrar.healthcheck.checker import Checker, Settings
from registrar.healthcheck.hysteresis import UNHEALTHY, Transition


class _Producer:
    def __init__(self) -> None:
        self.sent = []

    async def append(self, env):
        self.sent.append(env)
        return Appended(env.event_id, env.type, env.key, env.topic, 0, len(self.sent) - 1, 0)


async def test_a_probe_detail_with_control_characters_reaches_the_log_escaped_and_bounded():
    checker = Checker(Settings(bootstrap="localhost:9092", checker_id="c1"))
    checker._producer = producer = _Producer()
    reg = InstanceRegistered(service="web", instance_id="web-1", address="10.0.0.1", port=8080)
    await checker._append_batch([(Transition("web/web-1", "healthy", UNHEALTHY, 3, "HTTP 503: \x1b[2J\u202e" + "x" * 5000), reg)])
    reason = producer.sent[0].payload.reason
    assert reason.startswith("3 consecutive failures (HTTP 503: \\x1b[2J\\u202e")
    assert reason.isprintable() and len(reason) <= 256


class _BatchingProducer(_Producer):
    """Records each append as the list of envelopes it carried; ``hold`` keeps an append waiting for the broker."""

    def __init__(self) -> None:
        super().__init__()
        self.appends: list[list] = []
        self.hold: asyncio.Event | None = None

    async def append(self, env):
        self.appends.append([env])
        if self.hold is not None:
            await self.hold.wait()
        return await super().append(env)

    async def append_batch(self, envs):
        self.appends.append(list(envs))
        if self.hold is not None:
            await self.hold.wait()
        done = []
        for env in envs:
            done.append(await _Producer.append(self, env))
        return done


def _failing(n: int) -> list[tuple[Transition, InstanceRegistered]]:
    return [(Transition(f"web/web-{i}", "healthy", UNHEALTHY, 3, "3 consecutive failures (refused)"),
             InstanceRegistered(service="web", instance_id=f"web-{i}", address=f"10.0.0.{i}", port=8080))
            for i in range(n)]


async def _sent(checker: Checker) -> None:
    while checker._appends:
        await asyncio.wait(list(checker._appends))


async def test_a_lone_transition_is_appended_at_once_and_signed_alone():
    checker = Checker(Settings(bootstrap="localhost:9092", checker_id="c1", insecure_events=True))
    checker._producer = producer = _BatchingProducer()
    [(transition, reg)] = _failing(1)
    checker._queue_append(transition, reg)
    await _sent(checker)
    assert [[env.payload.instance_id for env in append] for append in producer.appends] == [["web-0"]]
    assert checker._awaiting == {"web/web-0": (TopicPartition("meshlog.health", 0), 0)}
    assert checker.status()["appended"] == 1 and checker.status()["appended_batches"] == 0


async def test_a_zone_failing_at_once_is_appended_as_one_batch_and_what_fails_meanwhile_as_the_next():
    checker = Checker(Settings(bootstrap="localhost:9092", checker_id="c1", insecure_events=True))
    checker._producer = producer = _BatchingProducer()
    producer.hold = asyncio.Event()
    failing = _failing(6)
    for transition, reg in failing[:4]:  # decided in one turn of the loop: probes that timed out together
        checker._queue_append(transition, reg)
    await asyncio.sleep(0)  # the sender took the four and waits for the broker
    for transition, reg in failing[4:]:
        checker._queue_append(transition, reg)
    producer.hold.set()
    await _sent(checker)
    assert [[env.payload.instance_id for env in append] for append in producer.appends] == [
        ["web-0", "web-1", "web-2", "web-3"], ["web-4", "web-5"]]
    # each transition is awaited at its own offset, as if appended alone
    assert checker._awaiting == {f"web/web-{i}": (TopicPartition("meshlog.health", 0), i) for i in range(6)}
    assert checker.status()["appended"] == 6 and checker.status()["appended_batches"] == 2


async def test_a_batch_the_broker_did_not_acknowledge_is_decided_again_instance_by_instance():
    checker = Checker(Settings(bootstrap="localhost:9092", checker_id="c1", insecure_events=True))

    class _Down(_BatchingProducer):
        async def append_batch(self, envs):
            raise AppendFailed("append at localhost:9092 was not acknowledged: KafkaTimeoutError")

    checker._producer = _Down()
    failing = _failing(3)
    for transition, reg in failing:
        checker.tracker.track(transition.key, "healthy")
        checker.tracker.get(transition.key).pending = UNHEALTHY  # as ``record`` leaves a decided transition
        checker._queue_append(transition, reg)
    await _sent(checker)
    assert [checker.tracker.get(t.key).pending for t, _reg in failing] == [None, None, None]
    assert checker._awaiting == {}
    assert checker.status()["append_failures"] == 3 and checker.status()["appended"] == 0

