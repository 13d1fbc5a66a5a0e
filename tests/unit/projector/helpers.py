"""Building logged events quickly, for stories about the fold and the render.

``Log`` hands out offsets per topic and a broker clock that only moves when
told (``at=`` sets it); every event gets a fixed ``occurred_at`` and
producer, so nothing depends on the wall clock.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable

from events import types as t
from events.envelope import Logged, new_event
from projector.fold import fold_many, fold_with_decisions
from projector.state import MeshState, empty_state

OCCURRED = datetime(2024, 1, 1, tzinfo=timezone.utc)


def logged(payload: t.Payload, *, ts: int, offset: int = 0, partition: int = 0, topic: str | None = None) -> Logged:
    return Logged(
        envelope=new_event(payload, producer="test", occurred_at=OCCURRED),
        topic=topic or payload.TOPIC,
        partition=partition,
        offset=offset,
        timestamp_ms=ts,
    )


class Log:
    """An append-only event log across topics, as a broker would number it."""

    def __init__(self, start_ms: int = 1_000) -> None:
        self.now = start_ms
        self.offsets: dict[str, int] = {}
        self.events: list[Logged] = []

    def append(self, payload: t.Payload, at: int | None = None) -> Logged:
        if at is not None:
            self.now = at
        else:
            self.now += 1
        off = self.offsets.get(payload.TOPIC, 0)
        self.offsets[payload.TOPIC] = off + 1
        ev = logged(payload, ts=self.now, offset=off)
        self.events.append(ev)
        return ev

    # shorthands -------------------------------------------------------------

    def register(self, service: str, instance_id: str, address: str = "10.0.0.1", port: int = 8080, *,
                 at: int | None = None, sidecar: tuple[int, int] | None = None, **kw) -> Logged:
        sc = None if sidecar is None else t.SidecarPorts(inbound_port=sidecar[0], outbound_port=sidecar[1])
        return self.append(
            t.InstanceRegistered(service=service, instance_id=instance_id, address=address, port=port, sidecar=sc, **kw),
            at,
        )

    def deregister(self, service: str, instance_id: str, *, at: int | None = None) -> Logged:
        return self.append(t.InstanceDeregistered(service=service, instance_id=instance_id), at)

    def health(self, service: str, instance_id: str, status: str, *, at: int | None = None) -> Logged:
        return self.append(
            t.InstanceHealthChanged(service=service, instance_id=instance_id, status=status, observer="checker"), at
        )

    def subscribe(self, service: str, instance_id: str, dependency: str, *, origin: str = "explicit",
                  at: int | None = None) -> Logged:
        return self.append(t.DependencySubscribed(service=service, instance_id=instance_id, dependency=dependency,
                                                  origin=origin), at)

    def unsubscribe(self, service: str, instance_id: str, dependency: str, *, at: int | None = None) -> Logged:
        return self.append(t.DependencyUnsubscribed(service=service, instance_id=instance_id, dependency=dependency),
                           at)

    def policy(self, service: str, revision: int, subsets: dict[str, dict[str, str]] | None = None, **kw) -> Logged:
        subs = tuple(t.Subset(name=n, labels=l) for n, l in (subsets or {}).items())
        return self.append(t.DestinationPolicyUpserted(service=service, revision=revision, subsets=subs, **kw))

    def delete_policy(self, service: str, revision: int) -> Logged:
        return self.append(t.DestinationPolicyDeleted(service=service, revision=revision))

    def rule(self, host: str, revision: int, *routes: t.HttpRoute) -> Logged:
        return self.append(t.RouteRuleUpserted(host=host, revision=revision, routes=routes))

    def delete_rule(self, host: str, revision: int) -> Logged:
        return self.append(t.RouteRuleDeleted(host=host, revision=revision))


def route(*dests: tuple, prefix: str | None = None, exact: str | None = None,
          headers: Iterable[t.HeaderMatch] = (), timeout_ms: int | None = None,
          retries: t.RetryPolicy | None = None) -> t.HttpRoute:
    """``route(("v1", 90), ("v2", 10))`` or ``route((None, 100, "other-svc"))``: (subset, weight[, service])."""
    destinations = tuple(
        t.WeightedDestination(subset=d[0], weight=d[1], service=d[2] if len(d) > 2 else None) for d in dests
    )
    return t.HttpRoute(
        match=t.RouteMatch(path_prefix=prefix, path_exact=exact, headers=tuple(headers)),
        destinations=destinations,
        timeout_ms=timeout_ms,
        retries=retries,
    )


def fold_log(events: Iterable[Logged], state: MeshState | None = None) -> tuple[MeshState, list[t.Decision]]:
    """Fold one event at a time (the reference path), collecting decisions."""
    s = state if state is not None else empty_state()
    decisions: list[t.Decision] = []
    for ev in events:
        s, d = fold_with_decisions(s, ev)
        decisions.extend(d)
    return s, decisions


def fold_batch(events: Iterable[Logged]) -> MeshState:
    return fold_many(empty_state(), events)[0]
