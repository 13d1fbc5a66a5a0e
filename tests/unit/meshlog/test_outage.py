"""meshlog.outage: an outage is logged when it starts, at a backoff, and when it ends."""

from __future__ import annotations

import asyncio
import logging

import pytest

from meshlog.outage import KafkaOutageLog, Outage


async def _until_recovered(caplog, logger_name: str, limit_s: float = 10.0) -> None:
    """Wait for the "recovered" line the loop's timer logs after the quiet window (bounded; a loaded
    machine may run the timer late, which is not what these tests are about)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline and not any(
            r.name == logger_name and "recovered" in r.getMessage() for r in caplog.records):
        await asyncio.sleep(0.05)


def test_first_failure_starts_the_outage_and_quotes_it():
    o = Outage("Kafka at k:9092")
    line = o.failure(100.0, "Unable connect to node with id 1")
    assert line is not None and line.startswith("Kafka at k:9092 failing: Unable connect to node with id 1")
    assert o.ongoing and o.failures == 1


def test_repeats_are_counted_and_reminded_at_a_doubling_backoff():
    o = Outage("K", quiet=5.0, first_reminder=5.0, max_reminder=20.0)
    lines = []
    for i in range(0, 600):  # 60 s of failures every 100 ms
        line = o.failure(i / 10, f"error {i}")
        if line is not None:
            lines.append((i / 10, line))
    # started at 0, reminders at 5, 15, 35, 55 (gaps 5, 10, 20, 20)
    assert [at for at, _ in lines] == [0.0, 5.0, 15.0, 35.0, 55.0]
    assert "still failing after 5s: 51 errors so far; latest: error 50" in lines[1][1]
    assert o.failures == 600


def test_the_end_comes_after_a_quiet_window_with_the_duration():
    o = Outage("K", quiet=5.0)
    for i in range(100):
        o.failure(10.0 + i / 10, "x")
    assert o.check(20.0) is None  # 0.1 s after the last failure
    assert o.ends_at() == pytest.approx(19.9 + 5.0)
    line = o.check(24.9)
    assert line == "K recovered: the outage ended after 9.9s (100 errors)"
    assert not o.ongoing and o.failures == 0
    assert o.check(100.0) is None  # said once
    o.failure(150.0, "once")
    assert o.check(160.0) == "K recovered: the outage ended after 0.0s (1 error)"
    assert o.failure(200.0, "again").startswith("K failing: again")  # a new outage starts afresh


def test_failure_text_is_bounded_and_escaped():
    line = Outage("K").failure(0.0, "boom\x1b[2J\n" + "y" * 100_000)
    assert "\x1b" not in line and "\n" not in line
    assert len(line) < 500


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_aiokafka_error_records_become_one_line(caplog):
    clock = _Clock()
    ours = logging.getLogger("test.outage.ours")
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="aiokafka")  # a CLI test may have left it at WARNING
    with KafkaOutageLog("Kafka at k:1", ours, clock=clock):
        client_log = logging.getLogger("aiokafka")
        fetcher_log = logging.getLogger("aiokafka.consumer.fetcher")
        for i in range(370):  # 10 s at the measured ~37 lines/s
            clock.now += 0.027
            client_log.error("Unable connect to node with id %s: %s", 1, "[Errno 111] Connect call failed")
            fetcher_log.error("Failed fetch messages from %s: %s", 1, "NodeNotReadyError")
        logging.getLogger("aiokafka.consumer.subscription_state").info("Updating subscribed topics")
    records = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert records[0][0] == "test.outage.ours"
    assert records[0][2].startswith("Kafka at k:1 failing: aiokafka: Unable connect to node with id 1")
    assert [r[0] for r in records].count("test.outage.ours") == 2  # started + one reminder at 5 s
    assert not [r for r in records if r[0].startswith("aiokafka") and r[1] != "INFO"]
    assert ("aiokafka.consumer.subscription_state", "INFO", "Updating subscribed topics") in records
    # detached: aiokafka's records reach the log again
    caplog.clear()
    logging.getLogger("aiokafka").error("after")
    assert [r.getMessage() for r in caplog.records] == ["after"]


def test_a_group_rebalancing_is_routine_not_an_outage(caplog):
    # projector workers and checkers share shards through consumer groups: every peer that starts or stops
    # makes aiokafka warn "Heartbeat failed ... because it is rebalancing"; that is the group working
    ours = logging.getLogger("test.outage.group")
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="aiokafka")
    with KafkaOutageLog("Kafka at k:4", ours, clock=_Clock()):
        logging.getLogger("aiokafka.consumer.group_coordinator").warning(
            "Heartbeat failed for group %s because it is rebalancing", "meshlog-projector")
    records = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert records == [("aiokafka.consumer.group_coordinator", "INFO",
                        "Heartbeat failed for group meshlog-projector because it is rebalancing")]


async def test_the_end_is_logged_by_a_timer_on_the_loop(caplog):
    caplog.set_level(logging.INFO)
    ours = logging.getLogger("test.outage.timer")
    seen: list[str] = []  # every failure the outage counted: a client an earlier test left may log one too
    with KafkaOutageLog("Kafka at k:2", ours, quiet=0.3) as outage:
        counted = outage.failure
        outage.failure = lambda detail: (seen.append(detail), counted(detail))[1]
        for _ in range(5):
            logging.getLogger("aiokafka").error("Unable to update metadata from %s", [1])
            await asyncio.sleep(0.05)
        await _until_recovered(caplog, "test.outage.timer")  # no failure for longer than the quiet window
    lines = [r.getMessage() for r in caplog.records if r.name == "test.outage.timer"]
    assert len(lines) == 2
    assert lines[0].startswith("Kafka at k:2 failing: aiokafka: Unable to update metadata from [1]")
    assert lines[1].startswith("Kafka at k:2 recovered: the outage ended after 0.")
    assert seen.count("aiokafka: Unable to update metadata from [1]") == 5
    assert lines[1].endswith(f"({len(seen)} errors)")


async def test_our_own_retry_failures_join_the_same_outage(caplog):
    caplog.set_level(logging.INFO)
    ours = logging.getLogger("test.outage.own")
    with KafkaOutageLog("Kafka at k:3", ours, quiet=0.2) as outage:
        outage.failure("publishing failed (KafkaTimeoutError: ); retrying in 0.5s")
        logging.getLogger("aiokafka.producer.sender").warning("Cannot send %r to %s", "ProduceRequest", 1)
        await _until_recovered(caplog, "test.outage.own")
    lines = [r.getMessage() for r in caplog.records if r.name == "test.outage.own"]
    assert lines[0].startswith("Kafka at k:3 failing: publishing failed")
    assert lines[1].endswith("(2 errors)")
