"""A checker folds in the projector's order, the merge order, whatever order the fetch hands records over in.

Story: reviews/r1, signed by its own sidecar, registers with node id ``shared`` on partition 1 of the
registrations topic; a millisecond later ratings/x1, signed by its own sidecar, claims the same node id on
partition 0. The projector and replay fold r1 first and refuse x1 (``node_id_taken``). A consumer hands a
partition's records over before the next one's, partition 0 first here (as aiokafka drains its fetch buffer),
so a checker folding in fetch order accepted x1 and refused r1: it probed the claimant and never the instance
the proxies were told about.
"""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from aiokafka import TopicPartition

from events import topics
from events.codec import encode
from events.merge_gate import DEFAULT_HOLD_S
from projector.merged_fetch import MergedFetch
from registrar.healthcheck.checker import Checker, Settings
from tests.unit.projector.signed import SignedLog, Trust, sidecar
from tests.unit.replay.fake_consumer import FakeConsumer, Rec

REG0, REG1 = TopicPartition(topics.REGISTRATIONS, 0), TopicPartition(topics.REGISTRATIONS, 1)
HEALTH0 = TopicPartition(topics.HEALTH, 0)


@pytest.fixture(scope="module")
def trust() -> Trust:
    return Trust()


def two_claims_of_one_node(trust: Trust) -> dict[TopicPartition, list[Rec]]:
    log = SignedLog(trust)
    first = log.by(sidecar("reviews", "r1")).register("reviews", "r1", "10.0.0.2", 9080, node_id="shared",
                                                       sidecar=(15001, 15002))
    second = log.by(sidecar("ratings", "x1")).register("ratings", "x1", "10.0.0.3", 9080, node_id="shared",
                                                        sidecar=(15001, 15002))
    assert first.timestamp_ms < second.timestamp_ms

    def rec(tp: TopicPartition, ev) -> Rec:
        return Rec(tp.topic, tp.partition, 0, ev.timestamp_ms, encode(ev.envelope))

    return {REG0: [rec(REG0, second)], REG1: [rec(REG1, first)], HEALTH0: []}


def test_a_checker_refuses_the_later_claim_of_a_node_id_as_the_projector_does(trust):
    for seed in range(8):  # fetches of random sizes, partitions skipped at random
        logs = two_claims_of_one_node(trust)
        c = Checker(Settings(bootstrap="h:1", checker_id="hc-1"))
        c.verifier.update(trust.identity_events)
        consumer = FakeConsumer(logs, random.Random(seed))
        source = list(logs)
        consumer.assign(source)
        c._reader = consumer
        c._merged = MergedFetch(consumer, source, hold_s=DEFAULT_HOLD_S, reader="test", logger=logging.getLogger())
        asyncio.run(c._catch_up(source, asyncio.Event()))
        assert sorted(c.state.instances) == ["reviews/r1"], seed
        assert c.state.node_instance("shared") is not None and c.state.node_instance("shared").reg.instance_id == "r1"
