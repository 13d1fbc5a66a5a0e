"""A rebuilt state that left events out says how many and why.

Story: a log written on a plaintext broker holds unsigned events. Replayed
verifying (the default, as a projector refuses them by default) every one is
refused and the mesh is empty; before, the output said only "N events
folded", which read like an empty log. The count goes into the ``source``
block, the text line and a hint on stderr naming ``--insecure-events``.
"""

from __future__ import annotations

import asyncio
import logging
import random

from aiokafka import TopicPartition

from events import topics
from events import types as t
from events.codec import encode
from events.envelope import new_event
from identity.verifier import Verifier
from replay import text
from replay.cli import _say_refused
from replay.engine import rebuild
from tests.unit.replay.fake_consumer import FakeConsumer, Rec

T = 1_700_000_000_000
REG = TopicPartition(topics.REGISTRATIONS, 0)


def unsigned_log() -> dict[TopicPartition, list[Rec]]:
    return {REG: [Rec(REG.topic, 0, offset, T - 10 + offset, encode(new_event(
        t.InstanceRegistered(service="plain", instance_id=f"i{offset}", address="127.0.0.1", port=9000 + offset))))
        for offset in range(3)]}


def test_unsigned_events_replayed_verifying_are_refused_counted_and_said():
    rebuilt = asyncio.run(rebuild(FakeConsumer(unsigned_log(), random.Random(1)), T, verifier=Verifier()))
    assert not rebuilt.state.instances  # refused: nothing of them reaches the state
    assert rebuilt.refused == {"unsigned": 3}
    source = rebuilt.source()
    assert (source["events_folded"], source["events_refused"], source["refused_by_problem"]) == (3, 3, {"unsigned": 3})
    assert "3 events folded; 3 of them refused (unsigned 3)" in text._source_line({"source": source})


def test_the_same_log_replayed_insecurely_refuses_nothing_and_says_nothing_of_refusals():
    rebuilt = asyncio.run(rebuild(FakeConsumer(unsigned_log(), random.Random(2)), T, verifier=None))
    assert sorted(rebuilt.state.instances.keys()) == ["plain/i0", "plain/i1", "plain/i2"]
    assert rebuilt.refused == {}
    source = rebuilt.source()
    assert source["events_refused"] == 0 and source["refused_by_problem"] == {}
    assert "refused" not in text._source_line({"source": source})


def test_the_cli_says_what_was_refused_and_hints_at_insecure_events_only_for_unsigned_ones(caplog):
    with caplog.at_level(logging.WARNING, logger="replay"):
        _say_refused({})
        assert not caplog.records  # nothing refused, nothing said
        _say_refused({"not_permitted": 2})
        (count,) = [r.getMessage() for r in caplog.records]
        assert "left out 2 refused events (not_permitted 2)" in count and "--insecure-events" not in count
        caplog.clear()
        _say_refused({"unsigned": 3, "not_permitted": 1})
    count, hint = [r.getMessage() for r in caplog.records]
    assert "left out 4 refused events (not_permitted 1, unsigned 3)" in count
    assert "3 unsigned events were refused" in hint and "--insecure-events" in hint
