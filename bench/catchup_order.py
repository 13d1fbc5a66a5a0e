"""How far from the merge order does a projector fold a backlog? (issue 15 §3 follow-up)

Reads the event topics of an existing log from offset 0 the way the projector fetches them
(read_committed, 8 MB per partition, batches of ``--max-batch``), twice:

1. ``fetch order``: each batch sorted by ``events.topics.merge_order`` (what the projector did
   before ``events.merge_gate``): counts the records that come after a record logged later,
   and by how much;
2. ``merge gate``: the same fetches through the projector's own fetch shell
   (``projector.merged_fetch``: ``events.merge_gate``, fetching from the starving partitions,
   filling a batch): the same count (0 expected), and the gate's own CPU.

Given a broker (``--bootstrap`` or $MESHLOG_KAFKA_BOOTSTRAP) it reads the log there as it is,
appending nothing, e.g. the one ``python bench/replay.py`` leaves (it prints the broker)::

    MESHLOG_KAFKA_BOOTSTRAP=127.0.0.1:PORT python bench/catchup_order.py

Without one it starts a fresh local broker (``meshlog.kafka_local.kafka_for_tests``), appends
``--events`` of bench/replay.py's history (default 200,000) and measures that; the broker is
stopped at the end. ``--events`` with a broker appends to its log first.

``--projector`` also times the whole projector's catch-up: ``projector run --insecure-events`` on
a fresh data dir against that log, until it logs ``caught up at`` (wall and CPU seconds; it
appends snapshots and adopts the published views, as any new projector would). The log must
be unsigned (bench/replay.py's is).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402

from events import topics  # noqa: E402
from events.admin import partitions_of  # noqa: E402
from events.kafka_security import connection_kwargs  # noqa: E402
from events.merge_gate import DEFAULT_HOLD_S, MergeGate  # noqa: E402
from projector.merged_fetch import MergedFetch  # noqa: E402

EVENT_TOPICS = (topics.REGISTRATIONS, topics.HEALTH, topics.RULES)


class Inversions:
    """Counts records folded after one that sorts later in the merge order."""

    def __init__(self) -> None:
        self.seen = 0
        self.late = 0
        self.worst_ms = 0
        self._max: tuple | None = None

    def fold(self, records: list) -> None:
        for r in records:
            k = topics.merge_order(r.timestamp, r.topic, r.partition, r.offset)
            self.seen += 1
            if self._max is not None and k < self._max:
                self.late += 1
                self.worst_ms = max(self.worst_ms, self._max[0] - r.timestamp)
            else:
                self._max = k

    def line(self, name: str, wall: float, batches: int, extra: str = "") -> str:
        share = self.late / self.seen if self.seen else 0.0
        return (f"{name:<12} {self.seen:>9,} records in {batches:>4} batches, {wall:6.1f} s: {self.late:>9,} folded "
                f"after a later record ({share:.1%}), up to {self.worst_ms:,} ms late{extra}")


async def consumer_for(bootstrap: str) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    consumer = AIOKafkaConsumer(
        **connection_kwargs(bootstrap), group_id=None, enable_auto_commit=False, isolation_level="read_committed",
        auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20, fetch_min_bytes=1,
    )
    await consumer.start()
    found = await partitions_of(consumer, EVENT_TOPICS)
    tps = [TopicPartition(t, p) for t in EVENT_TOPICS for p in found.get(t, [])]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    return consumer, tps


async def caught_up(consumer: AIOKafkaConsumer, tps: list[TopicPartition], ends: dict) -> bool:
    for tp in tps:
        if await consumer.position(tp) < ends[tp]:
            return False
    return True


async def fetch_order(bootstrap: str, max_batch: int) -> str:
    consumer, tps = await consumer_for(bootstrap)
    try:
        ends = await consumer.end_offsets(tps)
        count, batches, t0 = Inversions(), 0, time.perf_counter()
        while not await caught_up(consumer, tps, ends):
            got = await consumer.getmany(*tps, timeout_ms=1000, max_records=max_batch)
            records = [r for recs in got.values() for r in recs]
            while records and len(records) < max_batch:
                more = await consumer.getmany(*tps, timeout_ms=0, max_records=max_batch - len(records))
                if not more:
                    break
                records += [r for recs in more.values() for r in recs]
            if records:
                records.sort(key=lambda r: topics.merge_order(r.timestamp, r.topic, r.partition, r.offset))
                count.fold(records)
                batches += 1
        return count.line("fetch order", time.perf_counter() - t0, batches)
    finally:
        await consumer.stop()


class TimedGate(MergeGate):
    """The merge gate, noting the CPU its own calls take."""

    __slots__ = ("cpu",)

    def __init__(self, hold_s: float) -> None:
        super().__init__(hold_s)
        self.cpu = 0.0

    def offer(self, partition, records):
        c0 = time.process_time()
        super().offer(partition, records)
        self.cpu += time.process_time() - c0

    def take(self, positions, ends, now, limit):
        c0 = time.process_time()
        try:
            return super().take(positions, ends, now, limit)
        finally:
            self.cpu += time.process_time() - c0

    def starving(self, positions, ends):
        c0 = time.process_time()
        try:
            return super().starving(positions, ends)
        finally:
            self.cpu += time.process_time() - c0


async def through_gate(bootstrap: str, max_batch: int) -> str:
    """The same fetches through the projector's own fetch shell (``projector.merged_fetch``)."""
    consumer, tps = await consumer_for(bootstrap)
    merged = MergedFetch(consumer, tps, hold_s=DEFAULT_HOLD_S, reader="bench", logger=logging.getLogger("bench"))
    merged.gate = gate = TimedGate(DEFAULT_HOLD_S)
    try:
        ends = await consumer.end_offsets(tps)
        count, batches, t0 = Inversions(), 0, time.perf_counter()
        while not (await caught_up(consumer, tps, ends) and merged.held == 0):
            ready = await merged.fetch(timeout_ms=1000, max_records=max_batch)
            if ready:
                count.fold(ready)
                batches += 1
        return count.line("merge gate", time.perf_counter() - t0, batches,
                          f"; the gate's CPU {gate.cpu:.2f} s ({gate.cpu / max(count.seen, 1) * 1e6:.2f} µs per record)")
    finally:
        await consumer.stop()


def projector_catch_up(bootstrap: str) -> str:
    """``projector run`` on a fresh data dir until it has caught up: (wall s, CPU s) as a line."""
    import resource
    import signal
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="meshlog-catchup-") as tmp:
        log_path = Path(tmp) / "projector.log"
        with open(log_path, "wb") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "projector"), "run", "--bootstrap", bootstrap, "--data-dir",
                 str(Path(tmp) / "data"), "--insecure-events"],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            try:
                deadline = time.monotonic() + 900
                while b"caught up at" not in log_path.read_bytes():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"projector exited or took over 900 s:\n{log_path.read_text()[-2000:]}")
                    time.sleep(0.1)
                wall = time.perf_counter() - t0
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        stalls = log_path.read_text(errors="replace").count("is behind and has not moved")
    return (f"{'projector':<12} caught up in {wall:.1f} s wall, {cpu.ru_utime + cpu.ru_stime:.1f} CPU-s "
            f"(until its stop); {stalls} partitions passed by the gate")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", default=os.environ.get("MESHLOG_KAFKA_BOOTSTRAP"),
                    help="the broker holding the log (default $MESHLOG_KAFKA_BOOTSTRAP)")
    ap.add_argument("--max-batch", type=int, default=20_000, help="records per batch, as `projector run` (20000)")
    ap.add_argument("--projector", action="store_true", help="also time a fresh `projector run` catching up")
    ap.add_argument("--events", type=int, default=None,
                    help="append this many events of bench/replay.py's history first (default: none given a "
                         "broker; 200000 on the local broker started without one)")
    args = ap.parse_args()
    if args.events is not None and args.events < 1:
        ap.error("--events: at least 1")
    if args.max_batch < 1:
        ap.error("--max-batch: at least 1")
    with contextlib.ExitStack() as stack:
        bootstrap = args.bootstrap
        if not bootstrap:
            from meshlog.kafka_local import kafka_for_tests

            # no broker given (nor $MESHLOG_KAFKA_BOOTSTRAP): a fresh one of its own, stopped at the end
            bootstrap = stack.enter_context(kafka_for_tests())
            if args.events is None:
                args.events = 200_000
        if args.events:
            print(append_history(bootstrap, args.events), flush=True)
        print(asyncio.run(fetch_order(bootstrap, args.max_batch)), flush=True)
        print(asyncio.run(through_gate(bootstrap, args.max_batch)), flush=True)
        if args.projector:
            print(projector_catch_up(bootstrap), flush=True)
    return 0


def append_history(bootstrap: str, events: int) -> str:
    """Append ``events`` of bench/replay.py's history (its mesh, 500 services x 4 instances) to the event
    topics, creating them if missing; a line saying what was appended."""
    import uuid

    from events.admin import ensure_topics
    from tests.support.benches import bench_module

    bench_replay = bench_module("replay", registered_as="bench_replay")  # its name is the ``replay`` package's
    asyncio.run(ensure_topics(bootstrap))
    run = f"co{uuid.uuid4().hex[:6]}"
    secs, n = asyncio.run(bench_replay.append(bootstrap, bench_replay.History(500, 4, run), events, run))
    return f"log: {n:,} events of bench/replay.py's history appended to {bootstrap} in {secs:.1f} s"


if __name__ == "__main__":
    raise SystemExit(main())
