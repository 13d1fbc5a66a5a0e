"""The health checker's transition records: what a probe saw is escaped and bounded before it is logged."""

from __future__ import annotations

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
    await checker._append(Transition("web/web-1", "healthy", UNHEALTHY, 3, "HTTP 503: \x1b[2J\u202e" + "x" * 5000), reg)
    reason = producer.sent[0].payload.reason
    assert reason.startswith("3 consecutive failures (HTTP 503: \\x1b[2J\\u202e")
    assert reason.isprintable() and len(reason) <= 256
