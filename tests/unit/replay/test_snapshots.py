"""replay.snapshots: a replay at T starts from the latest snapshot folded entirely at or before T.

"At or before" includes a snapshot whose last folded event was logged at
exactly T. Choosing an older one would still give the right state (replay
would only fold more), so these tests look at *which* snapshot was chosen.
The consumer is the in-memory stand-in of ``fake_consumer``.
"""

from __future__ import annotations

import asyncio
import random

from aiokafka import TopicPartition

from events import topics
from events import types as t
from events.codec import encode
from events.envelope import new_event
from projector.fold import fold_many
from projector.snapshots import MERGE_ORDER, encode_snapshot
from projector.state import empty_state, state_to_bytes
from events.record_decoder import RecordDecoder
from replay.engine import rebuild
from replay.snapshots import Candidate, choose, find_snapshot, valid_for
from tests.unit.replay.fake_consumer import FakeConsumer, Rec

T = 1_700_000_000_000
REG, HEALTH, RULES = (TopicPartition(name, 0) for name in (topics.REGISTRATIONS, topics.HEALTH, topics.RULES))
SNAP = TopicPartition(topics.SNAPSHOTS, 0)
REG_KEY = f"{topics.REGISTRATIONS}/0"


def candidate(offset: int, max_ts: int, next_offset: int) -> Candidate:
    return Candidate(offset, max_ts + 1,
                     {"max_timestamp_ms": max_ts, "next_offsets": {REG_KEY: next_offset}, "fold_order": MERGE_ORDER})


def test_a_snapshot_whose_last_event_is_at_exactly_t_is_valid_and_chosen():
    older = candidate(0, T - 5, 10)
    at_t = candidate(1, T, 20)
    past_t = candidate(2, T + 1, 30)
    assert valid_for(at_t, T) and not valid_for(at_t, T - 1)
    assert [c.offset for c in choose([older, at_t, past_t], T)] == [1, 0]
    assert [c.offset for c in choose([older, at_t, past_t], T - 1)] == [0]


# ---------------------------------------------------------------- through the log


def event_log() -> list[Rec]:
    """Registrations at T-5 .. T (offsets 0-5), then at T+1 and T+2 (offsets 6, 7)."""
    stamps = [T - 5, T - 4, T - 3, T - 2, T - 1, T, T + 1, T + 2]
    return [Rec(REG.topic, 0, offset, ts, encode(new_event(
        t.InstanceRegistered(service="snap", instance_id=f"i{offset}", address="127.0.0.1", port=9000 + offset))))
        for offset, ts in enumerate(stamps)]


def snapshot_of(events: list[Rec], count: int, offset: int, appended_ms: int, fold_order: str | None = MERGE_ORDER) -> Rec:
    """A snapshot record folding the first ``count`` events, appended at ``appended_ms``."""
    decode = RecordDecoder()
    state, _ = fold_many(empty_state(), [decode(r) for r in events[:count]])
    value = encode_snapshot(state_to_bytes(state), next_offsets={REG_KEY: count},
                            max_timestamp_ms=events[count - 1].timestamp, events=count,
                            fold_order=fold_order)
    return Rec(SNAP.topic, 0, offset, appended_ms, value, b"snapshot")


def mesh_log(at_t_appended_ms: int) -> dict[TopicPartition, list[Rec]]:
    events = event_log()
    return {
        REG: events, HEALTH: [], RULES: [],
        SNAP: [
            snapshot_of(events, 3, 0, T - 2),                   # folded up to T-3
            snapshot_of(events, 6, 1, at_t_appended_ms),        # folded up to exactly T
            snapshot_of(events, 8, 2, T + 3),                   # folded past T
        ],
    }


def test_find_snapshot_takes_the_one_folded_up_to_exactly_t():
    # appended at T itself, or later (the log was idle after T): either way it is the one
    for appended in (T, T + 1):
        logs = mesh_log(appended)
        chosen = asyncio.run(find_snapshot(FakeConsumer(logs, random.Random(appended)), T, {REG_KEY: 6}))
        assert chosen is not None
        assert (chosen.offset, chosen.snapshot.max_timestamp_ms, chosen.snapshot.events) == (1, T, 6)
        # a millisecond earlier it folded too much: the older one
        earlier = asyncio.run(find_snapshot(FakeConsumer(logs, random.Random(appended)), T - 1, {REG_KEY: 5}))
        assert (earlier.offset, earlier.snapshot.max_timestamp_ms) == (0, T - 3)


def test_a_replay_at_t_starts_from_that_snapshot_and_folds_nothing_more():
    logs = mesh_log(T + 1)
    rebuilt = asyncio.run(rebuild(FakeConsumer(logs, random.Random(2)), T))
    assert rebuilt.snapshot is not None and rebuilt.snapshot.offset == 1
    assert rebuilt.folded == 0  # every event at or before T is in the snapshot
    cold = asyncio.run(rebuild(FakeConsumer(logs, random.Random(3)), T, use_snapshot=False))
    assert cold.folded == 6 and cold.state == rebuilt.state
    assert sorted(i.reg.instance_id for i in rebuilt.state.instances.values()) == [f"i{n}" for n in range(6)]


def test_a_snapshot_folded_in_fetch_order_is_passed_over_with_a_warning(caplog):
    # the best snapshot's projector predates merge-ordered folding: its cut need not be a prefix of replay's
    logs = mesh_log(T)
    logs[SNAP][1] = snapshot_of(event_log(), 6, 1, T, fold_order=None)
    with caplog.at_level("WARNING", logger="replay.snapshots"):
        rebuilt = asyncio.run(rebuild(FakeConsumer(logs, random.Random(4)), T))
    assert rebuilt.snapshot is not None and rebuilt.snapshot.offset == 0  # the merge-ordered one before it
    assert rebuilt.folded == 3
    assert "1 snapshot(s) (offsets 1..1) passed over" in caplog.text and "fetch order" in caplog.text
    cold = asyncio.run(rebuild(FakeConsumer(logs, random.Random(5)), T, use_snapshot=False))
    assert cold.state == rebuilt.state
