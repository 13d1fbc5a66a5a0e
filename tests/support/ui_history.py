"""A small known history for the console's tests: the demo's mesh and its canary, plus a hostile producer name.

``append_history(bootstrap, run)`` appends, one event at a time (each gets its
own broker timestamp): three ``reviews`` instances (v1-a, v1-b, v2-a) and a
``web`` sidecar node depending on reviews, the v1/v2 subsets policy, the
canary rule 90/10, then 50/50, a health flap of v1-b, then 100/0; the flap's
events are appended by a producer whose name carries HTML. It returns the
broker timestamps of the interesting moments.
"""

from __future__ import annotations

import asyncio

from events import types as t
from events.envelope import new_event
from events.producer import EventProducer

HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


def names(run: str) -> dict[str, str]:
    return {"reviews": f"reviews-{run}", "web": f"web-{run}", "node": f"web-1-{run}"}


async def append_history(bootstrap: str, run: str) -> dict[str, int]:
    n = names(run)
    reviews, web = n["reviews"], n["web"]
    marks: dict[str, int] = {}

    def inst(service: str, iid: str, port: int, labels: dict, **kw) -> t.InstanceRegistered:
        return t.InstanceRegistered(service=service, instance_id=iid, address="127.0.0.1", port=port, labels=labels, **kw)

    def rule(rev: int, v1: int, v2: int) -> t.RouteRuleUpserted:
        return t.RouteRuleUpserted(host=reviews, revision=rev, routes=(t.HttpRoute(destinations=(
            t.WeightedDestination(subset="v1", weight=v1), t.WeightedDestination(subset="v2", weight=v2))),))

    steps: list[tuple[str | None, t.Payload, str]] = [
        (None, inst(reviews, "reviews-v1-a", 9081, {"version": "v1"}), "ui-test"),
        (None, inst(reviews, "reviews-v1-b", 9082, {"version": "v1"}), "ui-test"),
        (None, inst(reviews, "reviews-v2-a", 9083, {"version": "v2"}), "ui-test"),
        ("registered", inst(web, "web-1", 9090, {}, node_id=n["node"],
                            sidecar=t.SidecarPorts(inbound_port=15006, outbound_port=15001), depends_on=(reviews,)),
         "ui-test"),
        ("policy", t.DestinationPolicyUpserted(service=reviews, revision=1, subsets=(
            t.Subset(name="v1", labels={"version": "v1"}), t.Subset(name="v2", labels={"version": "v2"}))), "ui-test"),
        ("canary-90-10", rule(1, 90, 10), "ui-test"),
        ("canary-50-50", rule(2, 50, 50), "ui-test"),
        ("unhealthy", t.InstanceHealthChanged(service=reviews, instance_id="reviews-v1-b", status="unhealthy",
                                              reason="probe failed", observer="checker-1"), HOSTILE),
        ("healthy", t.InstanceHealthChanged(service=reviews, instance_id="reviews-v1-b", status="healthy",
                                            reason="probe ok", observer="checker-1"), HOSTILE),
        ("canary-100-0", rule(3, 100, 0), "ui-test"),
    ]
    async with EventProducer(bootstrap) as producer:
        for mark, payload, who in steps:
            appended = await producer.append(new_event(payload, producer=who))
            if mark:
                marks[mark] = appended.timestamp_ms
            await asyncio.sleep(0.03)  # distinct broker timestamps: a cursor can fall between any two events
    return marks
