"""An in-memory stand-in for the few AIOKafkaConsumer calls replay makes, over hand-placed records.

Records sit where the test puts them (offset gaps for transaction markers,
equal timestamps, undecodable values), and fetches return random slices so
that fetch boundaries fall anywhere. The offset lookups follow Kafka's
contract: ``offsets_for_times`` gives, per partition, the earliest record
whose timestamp is >= the target (None if there is none), ``end_offsets``
the offset after the last record. The real broker is exercised in
tests/integration/test_replay.py.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndTimestamp


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    timestamp: int
    value: bytes | None
    key: bytes | None = None


class _Cluster:
    """The metadata a broker would give (``events.admin.partitions_of``): a topic has the partitions the
    test put records in, else one (a log whose topics were created with one partition)."""

    def __init__(self, logs: dict[TopicPartition, list[Rec]]) -> None:
        self.logs = logs

    async def fetch_all_metadata(self) -> "_Cluster":
        return self

    def partitions_for_topic(self, name: str) -> set[int]:
        return {tp.partition for tp in self.logs if tp.topic == name} or {0}


class FakeConsumer:
    def __init__(self, logs: dict[TopicPartition, list[Rec]], rnd: random.Random) -> None:
        self.logs = logs
        self.rnd = rnd
        self.pos: dict[TopicPartition, int] = {}
        self._client = _Cluster(logs)

    # ------------------------------------------------------------ metadata and offset lookups

    async def topics(self) -> set[str]:
        return {tp.topic for tp in self.logs}

    async def end_offsets(self, tps):
        return {tp: (self.logs[tp][-1].offset + 1 if self.logs.get(tp) else 0) for tp in tps}

    async def beginning_offsets(self, tps):
        return {tp: (self.logs[tp][0].offset if self.logs.get(tp) else 0) for tp in tps}

    async def offsets_for_times(self, timestamps):
        out = {}
        for tp, at_ms in timestamps.items():
            hit = next((r for r in self.logs.get(tp, ()) if r.timestamp >= at_ms), None)
            out[tp] = None if hit is None else OffsetAndTimestamp(hit.offset, hit.timestamp)
        return out

    # ------------------------------------------------------------ reading

    def assign(self, tps):
        self.pos = {tp: 0 for tp in tps}

    def seek(self, tp, offset):
        self.pos[tp] = offset

    async def position(self, tp):
        return self.pos[tp]

    def last_stable_offset(self, tp):
        # no open transactions here: every partition is stable up to its end (a live reader's merge gate asks)
        return self.logs[tp][-1].offset + 1 if self.logs.get(tp) else 0

    highwater = last_stable_offset

    async def getmany(self, *tps, timeout_ms=0, max_records=None):
        out = {}
        for tp in tps or list(self.pos):  # none named: every assigned partition, as aiokafka
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
