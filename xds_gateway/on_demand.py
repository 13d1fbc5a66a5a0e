"""Learned subscriptions: Envoy asked for a service's cluster on demand, and the log gets the fact.

Who records it, and why the gateway: the gateway is the one component that
sees Envoy's on-demand request (an explicit CDS subscription on the node's
delta ADS stream), and it knows which registered instance the stream speaks
for -- the node's owner in the view, and under TLS a client certificate the
gateway has checked against that owner. The sidecar agent never sees the
request (Envoy talks to the gateway directly). The gateway keeps no state
about it: it appends ``dependency.subscribed`` with origin ``learned`` for
that instance and holds the request (``DeltaStream``'s on-demand hold); the
projector folds the fact like any subscription -- or refuses it, recorded
as a decision on the rejections topic -- and renders the cluster into the
node's view, and the held request is answered from the view like any view
change. If nothing arrives within the hold, Envoy is told the cluster does
not exist. Another gateway replica, or this one after a restart, needs
nothing from before: the fact is in the log.

Invariants:
- ``may_learn`` accepts only a service's own cluster name (no subset, no
  per-node name) that is a valid service name: anything else is answered at
  once and never recorded.
- ``learned`` never blocks a stream: it queues and returns; one writer task
  appends.
- Bounded: one record per (node, dependency) per ``repeat_s`` (Envoy asks
  again on every request while the cluster is missing); at most ``burst``
  records at once and then ``rate`` per second for the whole process (token
  bucket); at most ``queue_size`` waiting. What goes over a bound is dropped,
  counted (``meshlog_on_demand_records_total{outcome}``) and warned about at
  a throttled rate; the held request then ends as "does not exist".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from typing import Awaitable, Callable, Sequence

from prometheus_client import Counter

from events import types as t
from events.codec import validate_payload
from events.envelope import Envelope, new_event
from events.errors import EventValidationError
from meshlog.logbounds import Throttle, ThrottledLog
from projector import naming

log = logging.getLogger(__name__)

Sink = Callable[[Sequence[Envelope]], Awaitable[None]]

RECORDS = Counter("meshlog_on_demand_records_total",
                  "Learned subscriptions from on-demand cluster requests, by outcome", ["outcome"])

#: Seconds a stream holds an on-demand cluster request before answering "does not exist" (xds-gateway --on-demand-hold).
DEFAULT_HOLD_S = 3.0


def may_learn(cluster: str) -> bool:
    """Is this cluster name one a node may subscribe to on demand (a service's own cluster)?"""
    parsed = naming.parse_cluster(cluster)
    return parsed is not None and parsed[1] is None and t.is_service_name(parsed[0])


class LearnedSubscriptions:
    """``learned(owner, cluster)`` from streams; ``start`` runs the writer; ``close`` drains it."""

    def __init__(self, sink: Sink, gateway: str, *, repeat_s: float = 10.0, rate: float = 50.0, burst: int = 200,
                 queue_size: int = 1000, remembered: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.gateway = gateway
        self._sink = sink
        self._repeat_s = repeat_s
        self._clock = clock
        self._bucket = Throttle(burst=burst, interval=1.0 / rate)
        self._recent: OrderedDict[tuple[str, str, str], float] = OrderedDict()  # (service, instance, dep) -> when
        self._remembered = remembered
        self._queue: deque[Envelope] = deque()
        self._queue_size = queue_size
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._warn = ThrottledLog(log)

    def learned(self, owner: tuple[str, str] | None, cluster: str) -> bool:
        """Record that ``owner``'s proxy asked for ``cluster``; True if a record was queued."""
        if owner is None or not may_learn(cluster):
            return self._count("not_learnable")
        service, instance_id = owner
        key = (service, instance_id, cluster)
        now = self._clock()
        last = self._recent.get(key)
        if last is not None and now - last < self._repeat_s:
            return self._count("repeat")
        try:
            payload = validate_payload(t.DependencySubscribed, dict(service=service, instance_id=instance_id,
                                                                    dependency=cluster, origin="learned"))
        except EventValidationError:
            return self._count("invalid")  # e.g. the instance's own service: it cannot depend on itself
        if len(self._queue) >= self._queue_size or self._bucket.admit(now) is None:
            self._warn.warning("on-demand subscriptions over their rate or queue bound: dropped (the request is "
                               "answered 'does not exist' when its hold ends)")
            return self._count("dropped")
        self._recent[key] = now
        self._recent.move_to_end(key)
        while len(self._recent) > self._remembered:
            self._recent.popitem(last=False)
        self._queue.append(new_event(payload, producer=self.gateway))
        self._wake.set()
        self._count("queued")
        return True

    @staticmethod
    def _count(outcome: str) -> bool:
        RECORDS.labels(outcome).inc()
        return outcome == "queued"

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_loop(), name="on-demand-write")

    async def close(self, timeout_s: float = 5.0) -> None:
        """Append what is queued (bounded in time), then stop."""
        try:
            await asyncio.wait_for(self._drain(), timeout_s)
        except TimeoutError:
            log.warning("on-demand: %d learned subscriptions not appended at shutdown", len(self._queue))
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _drain(self) -> None:
        while self._queue:
            await self._write_some()

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._write_some()

    async def _write_some(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(len(self._queue), 100))]
        try:
            await self._sink(batch)
        except Exception as exc:  # the broker did not take it: the held requests end as "does not exist"
            RECORDS.labels("append_failed").inc(len(batch))
            self._warn.warning("on-demand: %d learned subscriptions not appended: %s", len(batch),
                               type(exc).__name__)
            return
        RECORDS.labels("appended").inc(len(batch))
        for env in batch:
            log.info("on-demand: %s/%s learned a dependency on %s", env.payload.service, env.payload.instance_id,
                     env.payload.dependency)


__all__ = ["DEFAULT_HOLD_S", "LearnedSubscriptions", "may_learn"]
