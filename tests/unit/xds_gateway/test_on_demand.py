"""The gateway's recorder of learned subscriptions: what it appends, and its bounds."""

from __future__ import annotations

import asyncio

from events import types as t
from xds_gateway.on_demand import LearnedSubscriptions, may_learn


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _recorder(sink, clock, **kw) -> LearnedSubscriptions:
    return LearnedSubscriptions(sink, "gw-1:18000", clock=clock, **kw)


def test_only_a_services_own_cluster_may_be_learned():
    assert may_learn("ratings") and may_learn("ratings.prod")
    assert not may_learn("ratings|v1")  # a subset: the service is what a node subscribes to
    assert not may_learn("web-1~local") and not may_learn("web-1~outbound")  # per-node names
    assert not may_learn("Ratings") and not may_learn("x" * 64) and not may_learn("")


def test_a_learned_subscription_is_appended_for_the_streams_instance_with_origin_learned():
    appended = []

    async def sink(batch):
        appended.extend(batch)

    async def run():
        rec = _recorder(sink, _Clock())
        rec.start()
        assert rec.learned(("web", "w1"), "ratings")
        await rec.close()

    asyncio.run(run())
    (env,) = appended
    assert env.payload == t.DependencySubscribed(service="web", instance_id="w1", dependency="ratings",
                                                 origin="learned")
    assert env.producer == "gw-1:18000"


def test_bounds_repeat_per_node_and_service_rate_and_what_cannot_be_recorded():
    queued = []
    clock = _Clock()
    rec = _recorder(lambda batch: queued.extend(batch), clock, repeat_s=10.0, rate=1.0, burst=2)
    assert not rec.learned(None, "ratings")  # a node the view does not know: no instance to record it for
    assert not rec.learned(("web", "w1"), "web-1~local")
    assert not rec.learned(("ratings", "r1"), "ratings")  # its own service: the event's rule refuses it
    assert rec.learned(("web", "w1"), "ratings")
    assert not rec.learned(("web", "w1"), "ratings")  # Envoy asks again at every request: once per 10 s
    assert rec.learned(("web", "w2"), "ratings")
    assert not rec.learned(("web", "w3"), "ratings")  # burst of 2 spent: over the process's rate
    clock.now += 1.0
    assert rec.learned(("web", "w3"), "ratings")
    clock.now += 10.0
    assert rec.learned(("web", "w1"), "ratings")  # asked again after the repeat window: recorded again


def test_a_broker_that_does_not_take_the_batch_is_survived():
    async def failing(batch):
        raise ConnectionError("broker down")

    async def run():
        rec = _recorder(failing, _Clock())
        rec.start()
        assert rec.learned(("web", "w1"), "ratings")
        await rec.close(timeout_s=2)

    asyncio.run(run())  # no exception: the held request simply ends as "does not exist"
