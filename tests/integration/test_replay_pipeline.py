"""Reading in a second process (replay.pipeline) gives what reading in this one gives, on a real broker.

The log: a random history appended in transactions (offset gaps from the markers), an undecodable
record among them. Read with the pipeline forced on (no length threshold) and off, the batches, the
rebuilt state and a walk's steps are the same.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from events import topics
from events.admin import ensure_topics
from replay import engine
from replay.engine import open_log, plan_cut, rebuild, walk
from replay.pipeline import iter_cut_in_child
from replay.source import iter_cut
from tests.integration.test_replay import append, append_raw
from tests.unit.replay.history import RandomHistory

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def log_until(kafka_bootstrap):
    asyncio.run(ensure_topics(kafka_bootstrap))
    history = RandomHistory(f"pp{RUN}", seed=5, services=5, instances=3)
    payloads = history.payloads(400)
    asyncio.run(append(kafka_bootstrap, payloads[:250], seed=3))
    asyncio.run(append_raw(kafka_bootstrap, topics.HEALTH, b"bad/1", b'{"not": "an event"}'))
    middle = int(time.time() * 1000)
    time.sleep(0.01)
    asyncio.run(append(kafka_bootstrap, payloads[250:], seed=4))
    time.sleep(0.01)
    return kafka_bootstrap, middle, int(time.time() * 1000)


def _exact(events):
    return [(lg, lg.envelope.signed_bytes) for lg in events]


def test_the_child_reads_the_same_batches_as_this_process(log_until):
    bootstrap, _middle, end = log_until

    async def both():
        async with open_log(bootstrap) as consumer:
            cut = await plan_cut(consumer, end)
            here = [b async for b in iter_cut(consumer, cut)]
        there = [b async for b in iter_cut_in_child(bootstrap, cut)]
        return here, there

    here, there = asyncio.run(both())
    events_here = [lg for b in here for lg in b.events]
    assert len(events_here) >= 400
    assert _exact([lg for b in there for lg in b.events]) == _exact(events_here)
    # the same records; their order across partitions is the order the fetches answered in, in either process
    assert sorted(u for b in there for u in b.undecodable) == sorted(u for b in here for u in b.undecodable) != []
    assert sum(b.records for b in there) == sum(b.records for b in here)


def test_rebuild_and_walk_through_the_child_equal_the_in_process_path(log_until, monkeypatch):
    bootstrap, middle, end = log_until

    async def run(through_child: bool):
        async with open_log(bootstrap) as consumer:
            base = await rebuild(consumer, middle, use_snapshot=False, bootstrap=bootstrap if through_child else None)
            walker, steps, _cut = await walk(consumer, base, end, bootstrap=bootstrap if through_child else None)
        return base, walker, steps

    monkeypatch.setattr(engine, "PARALLEL_MIN_EVENTS", 0)
    monkeypatch.setattr(engine, "PARALLEL", "1")  # whatever the host's load
    base_child, walker_child, steps_child = asyncio.run(run(True))
    base_here, walker_here, steps_here = asyncio.run(run(False))
    assert base_child.stats.get("reader") == "child process" and "reader" not in base_here.stats
    assert base_child.state == base_here.state and base_child.folded == base_here.folded > 0
    assert base_child.undecodable == base_here.undecodable
    assert walker_child.state == walker_here.state
    assert [(s.events, s.decisions, s.effect.changed, s.effect.removed) for s in steps_child] == \
        [(s.events, s.decisions, s.effect.changed, s.effect.removed) for s in steps_here]
    assert len(steps_here) >= 150
