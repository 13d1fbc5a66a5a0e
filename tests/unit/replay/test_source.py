"""replay.source: the cut at T, and the streamed merge equals a full sort by (timestamp, topic, partition, offset).

The consumer is an in-memory stand-in (``fake_consumer``) so that fetch
boundaries, offset gaps (transaction markers), equal timestamps and
undecodable records can be placed at will; the real broker is exercised in
tests/integration/test_replay.py.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from aiokafka import TopicPartition

from events import topics
from events import types as t
from events.codec import encode
from events.envelope import new_event
from replay.source import Cut, iter_cut, merge_key, plan_cut, read_cut
from tests.unit.replay.fake_consumer import FakeConsumer, Rec
from tests.unit.replay.history import RandomHistory


def build(seed: int):
    rnd = random.Random(seed)
    h = RandomHistory("src", seed)
    logs: dict[TopicPartition, list[Rec]] = {TopicPartition(t.name, 0): [] for t in topics.EVENT_TOPICS}
    now = 1_000
    for p in h.payloads(300):
        tp = TopicPartition(p.TOPIC, 0)
        now += rnd.choice((0, 0, 1, 2))  # equal timestamps across topics are common
        recs = logs[tp]
        offset = (recs[-1].offset + rnd.choice((1, 1, 1, 2))) if recs else 0  # gaps: transaction markers
        value = encode(new_event(p)) if rnd.random() > 0.03 else b"{broken"
        recs.append(Rec(tp.topic, 0, offset, now, value))
    return rnd, logs


@pytest.mark.parametrize("seed", range(6))
def test_streamed_merge_equals_sorting_everything(seed):
    rnd, logs = build(seed)
    cut = Cut(start={tp: 0 for tp in logs}, stop={tp: (recs[-1].offset + 1 if recs else 0) for tp, recs in logs.items()})
    # stop some partitions early, start one late
    some = sorted(logs, key=lambda tp: tp.topic)[0]
    cut.stop[some] = logs[some][len(logs[some]) // 2].offset
    result = asyncio.run(read_cut(FakeConsumer(logs, rnd), cut))
    want = []
    bad = []
    for tp, recs in logs.items():
        for r in recs:
            if cut.start[tp] <= r.offset < cut.stop[tp]:
                if r.value == b"{broken":
                    bad.append((r.topic, r.partition, r.offset))
                else:
                    want.append((r.timestamp, r.topic, r.partition, r.offset))
    got = [(e.timestamp_ms, e.topic, e.partition, e.offset) for e in result.events]
    assert got == [w for w in sorted(want, key=lambda w: merge_key_of(*w))]
    assert sorted((u[0], u[1], u[2]) for u in result.undecodable) == sorted(bad)
    assert all("not valid JSON" in u[4] for u in result.undecodable)


def merge_key_of(ts, topic, partition, offset):
    class L:
        pass

    lg = L()
    lg.timestamp_ms, lg.topic, lg.partition, lg.offset = ts, topic, partition, offset
    return merge_key(lg)


def test_batches_are_each_in_order_and_never_go_back():
    rnd, logs = build(11)
    cut = Cut(start={tp: 0 for tp in logs}, stop={tp: recs[-1].offset + 1 for tp, recs in logs.items()})

    async def collect():
        keys = []
        async for batch in iter_cut(FakeConsumer(logs, rnd), cut):
            keys += [merge_key(e) for e in batch.events]
        return keys

    keys = asyncio.run(collect())
    assert keys == sorted(keys) and len(keys) == len(set(keys))


def test_empty_cut_reads_nothing():
    rnd, logs = build(1)
    cut = Cut(start={tp: 5 for tp in logs}, stop={tp: 5 for tp in logs})
    assert asyncio.run(read_cut(FakeConsumer(logs, rnd), cut)).events == []


# ---------------------------------------------------------------- the cut at T


T = 1_700_000_000_000
REG, HEALTH, RULES = (TopicPartition(t, 0) for t in (topics.REGISTRATIONS, topics.HEALTH, topics.RULES))


def registered(instance: str, offset: int, timestamp: int) -> Rec:
    payload = t.InstanceRegistered(service="cut", instance_id=instance, address="127.0.0.1", port=8080)
    return Rec(REG.topic, 0, offset, timestamp, encode(new_event(payload)))


def health(instance: str, offset: int, timestamp: int) -> Rec:
    payload = t.InstanceHealthChanged(service="cut", instance_id=instance, status="unhealthy", observer="test")
    return Rec(HEALTH.topic, 0, offset, timestamp, encode(new_event(payload)))


def read_at(logs, at_ms: int):
    async def go():
        consumer = FakeConsumer(logs, random.Random(at_ms))
        cut = await plan_cut(consumer, at_ms)
        return cut, await read_cut(consumer, cut)

    return asyncio.run(go())


def test_the_cut_at_t_holds_every_record_logged_at_exactly_t_and_none_after():
    logs = {
        # T-1, T, (a transaction marker), T, T+1
        REG: [registered("before", 0, T - 1), registered("at-1", 1, T), registered("at-2", 3, T),
              registered("after", 4, T + 1)],
        # the last record of a partition at exactly T: the cut is its end
        HEALTH: [health("before", 0, T - 1), health("at-1", 1, T)],
        RULES: [],
    }
    cut, result = read_at(logs, T)
    assert cut.stop == {REG: 4, HEALTH: 2, RULES: 0}
    assert [(e.topic, e.offset, e.timestamp_ms) for e in result.events] == [
        (REG.topic, 0, T - 1), (HEALTH.topic, 0, T - 1),
        (REG.topic, 1, T), (REG.topic, 3, T), (HEALTH.topic, 1, T),
    ]
    # one millisecond earlier, none of the records at T is in
    cut, result = read_at(logs, T - 1)
    assert cut.stop == {REG: 1, HEALTH: 1, RULES: 0}
    assert {e.timestamp_ms for e in result.events} == {T - 1}


def test_the_cut_starts_where_a_snapshot_left_off():
    logs = {REG: [registered(f"i{n}", n, T - 10 + n) for n in range(6)], HEALTH: [], RULES: []}
    cut = asyncio.run(plan_cut(FakeConsumer(logs, random.Random(1)), T, start_after={f"{REG.topic}/0": 4}))
    assert (cut.start[REG], cut.stop[REG]) == (4, 6) and cut.total == 2


def test_one_fetch_has_room_for_every_event_partition():
    """Else the broker fills a fetch with the first partitions only, and the merge holds what they deliver
    until the starved ones deliver too (on a long log: most of it, decoded, in memory)."""
    from replay.source import FETCH_MAX_BYTES, PARTITION_FETCH_BYTES

    partitions = sum(spec.partitions for spec in topics.EVENT_TOPICS)
    assert partitions * PARTITION_FETCH_BYTES <= FETCH_MAX_BYTES
    assert PARTITION_FETCH_BYTES >= topics.EVENT_MAX_MESSAGE_BYTES  # the largest event fits in one fetch
