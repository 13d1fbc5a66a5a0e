"""Registration sunk into the sidecar: the events it appends on the app's behalf.

The sidecar appends, with the events package's idempotent producer (acks=all):
- on start, ``InstanceRegistered`` (retried with backoff until it is
  acknowledged, so a sidecar started while the broker is away still registers
  once it returns);
- on drain, ``InstanceHealthChanged(draining)`` then, after the drain wait,
  ``InstanceDeregistered``.

Every append is bounded by ``timeout`` seconds; failures are returned as text
for the agent to log, never raised.
"""

from __future__ import annotations

import asyncio

from events.admin import BrokerUnavailable
from events.envelope import new_event
from events.producer import EventProducer
from events.types import InstanceDeregistered, InstanceHealthChanged, InstanceRegistered, Payload


def producer_identity(node_id: str) -> str:
    return f"meshlog-sidecar/{node_id}"


def draining(reg: InstanceRegistered, node_id: str) -> InstanceHealthChanged:
    return InstanceHealthChanged(service=reg.service, instance_id=reg.instance_id, status="draining",
                                 reason="sidecar received SIGTERM", observer=producer_identity(node_id))


def deregistered(reg: InstanceRegistered) -> InstanceDeregistered:
    return InstanceDeregistered(service=reg.service, instance_id=reg.instance_id, reason="sidecar drained")


async def append(bootstrap: str, payloads: list[Payload], node_id: str, timeout: float) -> str | None:
    """Append ``payloads`` in order (one producer); None on success, else why not (some may be in the log)."""
    try:
        async with EventProducer(bootstrap, timeout_s=timeout) as producer:
            for payload in payloads:
                await producer.append(new_event(payload, producer=producer_identity(node_id)))
    except BrokerUnavailable as exc:  # AppendFailed is a BrokerUnavailable too
        return str(exc)
    except (asyncio.TimeoutError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
