"""The live readers' fetch (``projector.merged_fetch``): whatever the consumer hands over first, the records come
out in the merge order, across calls too, and a reader's positions never count a record still held.

Stories over an in-memory consumer that hands over random slices, partition by partition, with partitions
skipped at random (``tests.unit.replay.fake_consumer``); the gate's own decisions are tested in
tests/unit/events/test_merge_gate.py, the projector's loop on a real broker in
tests/integration/test_projector_merge_order.py.
"""

from __future__ import annotations

import asyncio
import logging
import random

from aiokafka import TopicPartition

from events import topics
from projector.merged_fetch import MergedFetch
from tests.unit.replay.fake_consumer import FakeConsumer, Rec

TPS = [TopicPartition(topics.REGISTRATIONS, 0), TopicPartition(topics.REGISTRATIONS, 1),
       TopicPartition(topics.HEALTH, 0), TopicPartition(topics.RULES, 0)]


def random_log(rnd: random.Random, n: int) -> dict[TopicPartition, list[Rec]]:
    """``n`` records spread over the partitions, broker times ascending per partition, ties across them."""
    logs: dict[TopicPartition, list[Rec]] = {tp: [] for tp in TPS}
    clock = 1_000
    for _ in range(n):
        clock += rnd.choice((0, 0, 1, 3))
        tp = rnd.choice(TPS)
        logs[tp].append(Rec(tp.topic, tp.partition, len(logs[tp]), clock, b"x"))
    return logs


def key(r: Rec) -> tuple:
    return topics.merge_order(r.timestamp, r.topic, r.partition, r.offset)


class Recording(FakeConsumer):
    """Notes each getmany's timeout."""

    def __init__(self, *a) -> None:
        super().__init__(*a)
        self.timeouts: list[int] = []

    async def getmany(self, *tps, timeout_ms=0, max_records=None):
        self.timeouts.append(timeout_ms)
        return await super().getmany(*tps, timeout_ms=timeout_ms, max_records=max_records)


def read_all(logs, seed: int, max_records: int) -> tuple[list[Rec], list[tuple[dict, list[Rec]]], Recording]:
    consumer = Recording(logs, random.Random(seed))
    consumer.assign(TPS)
    merged = MergedFetch(consumer, TPS, hold_s=60.0, reader="test", logger=logging.getLogger("test"))
    total = sum(len(v) for v in logs.values())
    out: list[Rec] = []
    steps = []

    async def run() -> None:
        for _ in range(10_000):
            if len(out) == total and not merged.held:
                return
            got = await merged.fetch(timeout_ms=100, max_records=max_records)
            assert len(got) <= max_records
            out.extend(got)
            steps.append((dict(merged.positions), list(out)))
        raise AssertionError("the reader never caught up")

    asyncio.run(run())
    return out, steps, consumer


def test_records_come_out_in_the_merge_order_across_fetches_whatever_the_fetch_order():
    for seed in range(30):
        rnd = random.Random(seed)
        logs = random_log(rnd, rnd.randint(1, 80))
        out, _steps, _consumer = read_all(logs, seed, max_records=rnd.choice((1, 3, 10, 1000)))
        assert out == sorted((r for recs in logs.values() for r in recs), key=key), seed


def test_positions_count_only_what_was_released():
    for seed in range(30):
        rnd = random.Random(seed)
        logs = random_log(rnd, 60)
        _out, steps, _consumer = read_all(logs, seed, max_records=4)
        for positions, released in steps:
            for tp in TPS:
                k = f"{tp.topic}/{tp.partition}"
                done = sum(1 for r in released if (r.topic, r.partition) == (tp.topic, tp.partition))
                # every record below the position was released; the position may pass the log's end
                assert min(positions[k], len(logs[tp])) == done, (seed, k)


class Eager(Recording):
    """Hands over every partition's whole rest at once."""

    async def getmany(self, *tps, timeout_ms=0, max_records=None):
        self.timeouts.append(timeout_ms)
        out = {}
        for tp in tps or list(self.pos):
            recs = [r for r in self.logs[tp] if r.offset >= self.pos[tp]]
            if recs:
                out[tp] = recs
                self.pos[tp] = recs[-1].offset + 1
        return out


def test_what_a_batch_limit_left_releasable_goes_without_waiting_for_new_records():
    logs = random_log(random.Random(7), 13)
    consumer = Eager(logs, random.Random(0))
    consumer.assign(TPS)
    merged = MergedFetch(consumer, TPS, hold_s=60.0, reader="test", logger=logging.getLogger("test"))

    async def run() -> list[list[Rec]]:
        return [await merged.fetch(timeout_ms=100, max_records=2) for _ in range(7)]

    batches = asyncio.run(run())
    assert [len(b) for b in batches] == [2, 2, 2, 2, 2, 2, 1]
    # one wait for records, then the held ones go out; the last call looks for more without waiting
    assert consumer.timeouts == [100, 0]


class Slow(FakeConsumer):
    """Waits out ``timeout_ms`` when it has nothing to hand over, as a real poll does; never delivers ``stuck``."""

    def __init__(self, logs, rnd, stuck: TopicPartition | None = None) -> None:
        super().__init__(logs, rnd)
        self.stuck = stuck

    async def getmany(self, *tps, timeout_ms=0, max_records=None):
        asked = [tp for tp in (tps or list(self.pos)) if tp != self.stuck]
        got = await super().getmany(*asked, timeout_ms=timeout_ms, max_records=max_records) if asked else {}
        if not got and timeout_ms:
            await asyncio.sleep(timeout_ms / 1000)
        return got


def test_a_reader_busy_between_fetches_passes_no_partition():
    # every call comes 50 ms after the last, against a hold of 20 ms: a wall clock would pass partitions
    # that were never asked in the meantime; the fetch clock does not
    for seed in range(4):
        logs = random_log(random.Random(seed), 60)
        consumer = Slow(logs, random.Random(seed))
        consumer.assign(TPS)
        merged = MergedFetch(consumer, TPS, hold_s=0.02, reader="test", logger=logging.getLogger("test"))

        async def run() -> list[Rec]:
            out: list[Rec] = []
            while len(out) < 60:
                out += await merged.fetch(timeout_ms=5, max_records=3)
                assert not merged.gate.stalled, seed
                await asyncio.sleep(0.05)  # the reader's own work on the batch
            return out

        assert asyncio.run(run()) == sorted((r for recs in logs.values() for r in recs), key=key)


def test_a_partition_that_does_not_move_while_fetched_is_passed_after_the_hold(caplog):
    stuck = TPS[0]
    logs = random_log(random.Random(3), 40)
    assert logs[stuck]
    consumer = Slow(logs, random.Random(3), stuck=stuck)
    consumer.assign(TPS)
    merged = MergedFetch(consumer, TPS, hold_s=0.05, reader="test reader", logger=logging.getLogger("test"))
    others = sum(len(v) for tp, v in logs.items() if tp != stuck)

    async def run() -> list[Rec]:
        out: list[Rec] = []
        for _ in range(200):
            out += await merged.fetch(timeout_ms=10, max_records=100)
            if len(out) == others:
                return out
        raise AssertionError(f"{len(out)} of {others} released: the stuck partition held the rest back")

    with caplog.at_level(logging.WARNING, logger="test"):
        out = asyncio.run(run())
    assert f"{stuck.topic}/{stuck.partition}" in merged.gate.stalled
    assert "test reader: meshlog.registrations/0 is behind (records not delivered yet" in caplog.text
    assert out == sorted(out, key=key)
