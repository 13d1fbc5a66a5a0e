"""Tiny fakes for the projector service's unit tests (no broker)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timezone

from events.codec import encode
from events.envelope import Envelope
from events import types as t

FIXED = datetime(2020, 1, 1, 10, 0, tzinfo=timezone.utc)


@dataclass
class Rec:
    """Looks like an aiokafka ConsumerRecord."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple = ()


def envelope(payload: t.Payload, event_id: str = "e") -> Envelope:
    return Envelope(event_id, payload.TYPE, payload.SCHEMA_VERSION, FIXED, "test", payload)


class Log:
    """An in-memory event log: append payloads or raw bytes, get records with offsets and timestamps."""

    def __init__(self) -> None:
        self.records: dict[str, list[Rec]] = {}
        self.clock = 1_000_000

    def append(self, payload: t.Payload) -> Rec:
        return self.raw(payload.TOPIC, payload.key().encode(), encode(envelope(payload, f"e{self.clock}")))

    def raw(self, topic: str, key: bytes | None, value: bytes | None) -> Rec:
        recs = self.records.setdefault(topic, [])
        self.clock += 1
        rec = Rec(topic, 0, len(recs), self.clock, key, value)
        recs.append(rec)
        return rec


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list | None = None


@dataclass
class FakeProducer:
    """Records sends in order; optionally fails the next N sends."""

    sent: list[Sent] = field(default_factory=list)
    fail_next: int = 0

    async def send(self, topic, value=None, key=None, headers=None):
        fut = asyncio.get_running_loop().create_future()
        if self.fail_next:
            from aiokafka.errors import KafkaTimeoutError

            self.fail_next -= 1
            fut.set_exception(KafkaTimeoutError())
            return fut
        self.sent.append(Sent(topic, key, value, headers))
        meta = type("Meta", (), {"topic": topic, "partition": 0, "offset": len(self.sent) - 1})()
        fut.set_result(meta)
        return fut

    async def stop(self) -> None:
        pass

    def to(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]


def registered(service: str, instance: str, node: str | None = None, deps: tuple[str, ...] = (), port: int = 8080):
    return t.InstanceRegistered(
        service=service,
        instance_id=instance,
        address="10.0.0.1",
        port=port,
        node_id=node,
        sidecar=t.SidecarPorts(inbound_port=15001, outbound_port=15002) if node else None,
        depends_on=deps,
    )
