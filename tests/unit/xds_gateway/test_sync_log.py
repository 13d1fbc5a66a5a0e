"""The gateway's sync log: coalescing per stream and type, bounded queue, orderly close (no broker: a list sink)."""

from __future__ import annotations

import asyncio

from events.codec import decode, encode
from xds_gateway import metrics
from xds_gateway.protocol.common import Acked, Nack
from xds_gateway.sync_log import SyncLog

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


class ListSink:
    def __init__(self) -> None:
        self.records = []

    async def __call__(self, envs) -> None:
        # through the codec both ways: what a reader of the topic would get
        self.records += [decode(encode(e)) for e in envs]

    def types(self):
        return [(e.type, getattr(e.payload, "nonce", None)) for e in self.records]


def nack(nonce: str, message: str) -> Nack:
    return Nack("s1", "web", CDS, nonce, 3, message, (("a", "v2"),))


def dropped(reason: str) -> float:
    return metrics.SYNC_DROPPED.labels(reason)._value.get()


async def test_acks_of_one_stream_and_type_coalesce_to_the_latest_and_a_nack_is_kept():
    sink = ListSink()
    log = SyncLog(sink, "gw-1", window_s=0.3)
    log.start()
    log.opened("s1", "web", "delta", "ipv4:127.0.0.1:5000")
    log.learned("s1", [Acked(CDS, "s1-1", {"a": "v1"})])
    await asyncio.sleep(0.1)  # the first fact after a quiet spell goes out at once
    log.learned("s1", [Acked(CDS, "s1-2", {"a": "v2"}), nack("s1-3", "bad\ncluster"), Acked(CDS, "s1-4", {"a": "v4"}),
                       Acked(CDS, "s1-5", {"a": "v5"})])
    await asyncio.sleep(0.5)
    assert sink.types() == [("sync.stream_opened", None), ("sync.acked", "s1-1"), ("sync.nacked", "s1-3"),
                            ("sync.acked", "s1-5")]
    assert sink.records[-1].payload.held == {"a": "v5"}
    assert sink.records[2].payload.reason == "bad\\x0acluster"  # escaped before it is recorded
    assert sink.records[0].payload.gateway == "gw-1"
    await log.close()


async def test_close_flushes_pending_facts_then_records_open_streams_as_closed_by_the_gateway():
    sink = ListSink()
    log = SyncLog(sink, "gw-1", window_s=10)
    log.start()
    log.opened("s1", "web", "delta", "peer")
    log.learned("s1", [Acked(CDS, "s1-1", {"a": "v1"})])
    await asyncio.sleep(0.05)
    log.learned("s1", [Acked(CDS, "s1-2", {"a": "v2"})])  # waits for the 10 s window
    log.opened("s2", "api", "sotw", "peer")
    log.closed("s2", "client_closed")
    await log.close()
    assert sink.types() == [("sync.stream_opened", None), ("sync.acked", "s1-1"), ("sync.stream_opened", None),
                            ("sync.stream_closed", None), ("sync.acked", "s1-2"), ("sync.stream_closed", None)]
    assert [e.payload.reason for e in sink.records if e.type == "sync.stream_closed"] == ["client_closed",
                                                                                        "gateway_stopping"]


async def test_a_full_queue_drops_and_counts_instead_of_waiting():
    gate = asyncio.Event()
    sink = ListSink()

    async def slow(envs):
        await gate.wait()
        await sink(envs)

    log = SyncLog(slow, "gw-1", queue_size=3, batch=1)
    log.start()
    before = dropped("queue_full")
    for i in range(10):
        log.opened(f"s{i}", f"n{i}", "delta", "peer")  # returns at once, never waits for the sink
    await asyncio.sleep(0.05)
    assert dropped("queue_full") - before >= 6
    gate.set()
    await log.close()
    assert 1 <= len([e for e in sink.records if e.type == "sync.stream_opened"]) <= 4


async def test_an_invalid_record_is_dropped_and_counted_not_raised():
    sink = ListSink()
    log = SyncLog(sink, "gw-1")
    log.start()
    before = dropped("invalid")
    log.opened("s1", "web", "delta", "peer")
    log.learned("s1", [Acked("not a type url", "n", {"a": "v"})])
    await log.close()
    assert dropped("invalid") - before == 1
    assert [e.type for e in sink.records] == ["sync.stream_opened", "sync.stream_closed"]


def busy_log(sink: ListSink, busy, window_s: float) -> SyncLog:
    """A started sync log deferring while ``busy()``, one stream opened and its first ACK learned."""
    log = SyncLog(sink, "gw-1", window_s=window_s)
    log.defer_while(busy)
    log.start()
    log.opened("s1", "web", "delta", "peer")
    log.learned("s1", [Acked(CDS, "s1-1", {"a": "v1"})])
    return log


async def written(sink: ListSink, count: int, within_s: float) -> list:
    """The sink's record types once it holds ``count`` records (the wait is a bound against hanging)."""
    for _ in range(int(within_s / 0.02)):
        if len(sink.records) >= count:
            break
        await asyncio.sleep(0.02)
    return sink.types()


OPENED_AND_ACKED = [("sync.stream_opened", None), ("sync.acked", "s1-1")]


async def test_while_the_gateway_is_busy_nothing_is_written_then_everything_is_in_order():
    sink, busy = ListSink(), [True]
    log = busy_log(sink, lambda: busy[0], window_s=5.0)
    await asyncio.sleep(0.3)
    assert sink.records == []  # the gateway is fanning a change out: the records wait
    busy[0] = False
    assert await written(sink, 2, within_s=2.0) == OPENED_AND_ACKED
    await log.close()


async def test_a_gateway_that_is_always_busy_still_gets_its_records_written_a_window_late():
    sink = ListSink()
    log = busy_log(sink, lambda: True, window_s=0.3)
    await asyncio.sleep(0.1)
    assert sink.records == []
    assert await written(sink, 2, within_s=3.0) == OPENED_AND_ACKED
    await log.close()


async def test_close_does_not_wait_for_a_busy_gateway():
    sink = ListSink()
    log = busy_log(sink, lambda: True, window_s=60.0)
    await asyncio.sleep(0.05)
    await asyncio.wait_for(log.close(timeout_s=5.0), 10.0)  # a bound against hanging on the 60 s window
    assert sink.types() == [*OPENED_AND_ACKED, ("sync.stream_closed", None)]
