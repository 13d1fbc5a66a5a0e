"""replay.source.iter_cut: the streamed merge equals a full sort by (timestamp, topic, partition, offset).

The consumer here is an in-memory stand-in for the few calls iter_cut makes
(assign, seek, getmany, position) so that fetch boundaries, offset gaps
(transaction markers) and undecodable records can be placed at will; the
real broker is exercised in tests/integration/test_replay.py.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import pytest
from aiokafka import TopicPartition

from events import topics
from events.codec import encode
from events.envelope import new_event
from replay.source import Cut, iter_cut, merge_key, read_cut
from tests.unit.replay.history import RandomHistory


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    timestamp: int
    value: bytes | None
    key: bytes | None = None


class FakeConsumer:
    def __init__(self, logs: dict[TopicPartition, list[Rec]], rnd: random.Random) -> None:
        self.logs = logs
        self.rnd = rnd
        self.pos: dict[TopicPartition, int] = {}

    def assign(self, tps):
        self.pos = {tp: 0 for tp in tps}

    def seek(self, tp, offset):
        self.pos[tp] = offset

    async def position(self, tp):
        return self.pos[tp]

    async def getmany(self, *tps, timeout_ms=0, max_records=None):
        out = {}
        for tp in tps:
            if self.rnd.random() < 0.3:
                continue  # nothing arrived for this partition in this poll
            recs = [r for r in self.logs[tp] if r.offset >= self.pos[tp]][: self.rnd.randint(1, 7)]
            if recs:
                out[tp] = recs
                self.pos[tp] = recs[-1].offset + 1
            else:
                # past the last record: skip over a trailing gap (a transaction marker)
                self.pos[tp] = max(self.pos[tp], (self.logs[tp][-1].offset + 2) if self.logs[tp] else 0)
        await asyncio.sleep(0)
        return out


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
