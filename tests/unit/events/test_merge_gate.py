"""The merge gate: whatever order a consumer hands partitions over in, the fold gets the log in merge order."""

from __future__ import annotations

from typing import NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from events import topics
from events.merge_gate import MergeGate

REG, HEALTH, RULES = topics.REGISTRATIONS, topics.HEALTH, topics.RULES


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int


def key(r: Rec) -> tuple:
    return topics.merge_order(r.timestamp, r.topic, r.partition, r.offset)


def part(topic: str, partition: int, *timestamps: int, start: int = 0) -> list[Rec]:
    return [Rec(topic, partition, start + i, ts) for i, ts in enumerate(timestamps)]


def pk(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


def test_a_later_record_waits_for_a_partition_still_behind_it():
    """Partition 0 hands over t=10..50 first; partition 1 (behind: more in the log) has only reached t=20.
    Only what partition 1 cannot precede any more goes to the fold, in merge order."""
    gate = MergeGate()
    p0, p1 = part(REG, 0, 10, 20, 30, 40, 50), part(REG, 1, 15, 20)
    gate.offer(pk(REG, 0), p0)
    gate.offer(pk(REG, 1), p1)
    out = gate.take({pk(REG, 0): 5, pk(REG, 1): 2}, {pk(REG, 0): 5, pk(REG, 1): 9}, now=0.0, limit=100)
    assert [(r.partition, r.timestamp) for r in out] == [(0, 10), (1, 15), (0, 20), (1, 20)]
    assert gate.held == 3 and gate.first_held_offset(pk(REG, 0)) == 2 and gate.first_held_offset(pk(REG, 1)) is None
    # partition 1 delivers the rest of its records: t=35 and t=60; it is caught up, so nothing waits for it
    gate.offer(pk(REG, 1), part(REG, 1, 35, 60, start=2))
    out = gate.take({pk(REG, 0): 5, pk(REG, 1): 4}, {pk(REG, 0): 5, pk(REG, 1): 4}, now=0.1, limit=100)
    assert [(r.partition, r.timestamp) for r in out] == [(0, 30), (1, 35), (0, 40), (0, 50), (1, 60)]
    assert gate.held == 0


def test_a_tie_in_one_millisecond_is_broken_as_replay_breaks_it():
    """Registrations partition 1 and health partition 0 in one millisecond: registrations (topic rank) first,
    even though health was handed over first, and only once registrations/1 is known to have moved past it."""
    gate = MergeGate()
    gate.offer(pk(HEALTH, 0), part(HEALTH, 0, 100))
    ends = {pk(HEALTH, 0): 1, pk(REG, 1): 1}
    assert gate.take({pk(HEALTH, 0): 1, pk(REG, 1): 0}, ends, now=0.0, limit=10) == []
    gate.offer(pk(REG, 1), part(REG, 1, 100))
    out = gate.take({pk(HEALTH, 0): 1, pk(REG, 1): 1}, ends, now=0.0, limit=10)
    assert [r.topic for r in out] == [REG, HEALTH]


def test_a_partition_whose_end_is_not_known_yet_holds_everything_and_is_the_one_to_fetch():
    gate = MergeGate()
    gate.offer(pk(REG, 0), part(REG, 0, 1, 2, 3))
    positions, ends = {pk(REG, 0): 3, pk(RULES, 0): 0}, {pk(REG, 0): 3, pk(RULES, 0): None}
    assert gate.take(positions, ends, now=0.0, limit=10) == []
    assert gate.starving(positions, ends) == [pk(RULES, 0)]
    ends[pk(RULES, 0)] = 0  # the fetch answered: the rules partition is empty, so it constrains nothing
    assert [r.timestamp for r in gate.take(positions, ends, now=0.0, limit=10)] == [1, 2, 3]
    assert gate.starving(positions, ends) == []  # nothing held: fetch from every partition as usual


def test_caught_up_partitions_hold_nothing_back():
    """The live steady state: every partition delivered all it has; each batch goes to the fold at once."""
    gate = MergeGate()
    gate.offer(pk(REG, 0), part(REG, 0, 7))
    gate.offer(pk(HEALTH, 3), part(HEALTH, 3, 5))
    out = gate.take({pk(REG, 0): 1, pk(HEALTH, 3): 1, pk(RULES, 0): 40},
                    {pk(REG, 0): 1, pk(HEALTH, 3): 1, pk(RULES, 0): 40}, now=0.0, limit=10)
    assert [r.timestamp for r in out] == [5, 7]


def test_at_most_limit_records_go_and_the_rest_follow_in_order():
    gate = MergeGate()
    gate.offer(pk(REG, 0), part(REG, 0, 1, 3, 5, 7))
    gate.offer(pk(REG, 1), part(REG, 1, 2, 4, 6, 8))
    done = {pk(REG, 0): 4, pk(REG, 1): 4}
    first = gate.take(done, done, now=0.0, limit=3)
    second = gate.take(done, done, now=0.0, limit=3)
    third = gate.take(done, done, now=0.0, limit=3)
    assert [r.timestamp for r in first] == [1, 2, 3]
    assert [r.timestamp for r in second] == [4, 5, 6]
    assert [r.timestamp for r in third] == [7, 8] and gate.held == 0


def test_a_partition_that_stops_moving_is_waited_for_hold_s_then_named_and_passed():
    """Its leader is gone: the fold goes on after hold_s rather than stall every partition, and says which
    partition it passed; once it moves again it constrains again."""
    gate = MergeGate(hold_s=2.0)
    gate.offer(pk(REG, 0), part(REG, 0, 10, 20))
    gate.offer(pk(REG, 1), part(REG, 1, 5))
    positions, ends = {pk(REG, 0): 2, pk(REG, 1): 1}, {pk(REG, 0): 2, pk(REG, 1): 3}
    assert [r.timestamp for r in gate.take(positions, ends, now=0.0, limit=10)] == [5]
    assert gate.take(positions, ends, now=1.9, limit=10) == [] and not gate.stalled
    assert [r.timestamp for r in gate.take(positions, ends, now=2.0, limit=10)] == [10, 20]
    assert gate.stalled == {pk(REG, 1)}
    gate.offer(pk(REG, 0), part(REG, 0, 30, start=2))
    positions = {pk(REG, 0): 3, pk(REG, 1): 2}  # partition 1 moved (a record at t=25 on its way)
    ends = {pk(REG, 0): 3, pk(REG, 1): 3}
    assert gate.take(positions, ends, now=2.1, limit=10) == [] and not gate.stalled


def test_a_partition_waited_for_only_while_it_bounds_the_release():
    """Time spent not being the bound does not count towards hold_s: a partition that was merely behind a
    while ago is waited for in full once it becomes the bound."""
    gate = MergeGate(hold_s=2.0)
    gate.offer(pk(REG, 0), part(REG, 0, 10))
    gate.offer(pk(REG, 1), part(REG, 1, 50))
    positions, ends = {pk(REG, 0): 1, pk(REG, 1): 1}, {pk(REG, 0): 2, pk(REG, 1): 2}
    # both behind; partition 0 (t=10) bounds the release, partition 1 is merely behind
    assert [r.timestamp for r in gate.take(positions, ends, now=0.0, limit=10)] == [10]
    gate.offer(pk(REG, 0), part(REG, 0, 60, start=1))
    positions = {pk(REG, 0): 2, pk(REG, 1): 1}
    ends = {pk(REG, 0): 2, pk(REG, 1): 2}
    assert [r.timestamp for r in gate.take(positions, ends, now=5.0, limit=10)] == [50]
    assert not gate.stalled and gate.take(positions, ends, now=6.9, limit=10) == []
    assert [r.timestamp for r in gate.take(positions, ends, now=7.0, limit=10)] == [60]


@st.composite
def logs(draw):
    """A few partitions of non-decreasing broker times (ties across partitions likely)."""
    names = draw(st.lists(st.sampled_from([(REG, 0), (REG, 1), (REG, 2), (HEALTH, 0), (HEALTH, 1), (RULES, 0)]),
                          min_size=1, max_size=6, unique=True))
    out = {}
    for topic, partition in names:
        steps = draw(st.lists(st.integers(0, 3), max_size=12))
        times, now = [], 0
        for s in steps:
            now += s
            times.append(now)
        out[pk(topic, partition)] = part(topic, partition, *times)
    return out


@settings(max_examples=300, deadline=None)
@given(logs(), st.randoms(use_true_random=False), st.integers(1, 7))
def test_any_fetch_order_reaches_the_fold_in_merge_order(log, rnd, limit):
    """A consumer that hands over random chunks of random partitions (the starving ones when the gate names
    some, as the projector fetches): everything reaches the fold exactly once, in merge order."""
    gate = MergeGate()
    delivered = {p: 0 for p in log}
    ends = {p: len(rs) for p, rs in log.items()}
    out: list[Rec] = []
    for _ in range(1000):
        left = [p for p in log if delivered[p] < ends[p]]
        if not left and gate.held == 0:
            break
        if left:
            p = rnd.choice(gate.starving(delivered, ends) or left)
            chunk = log[p][delivered[p]:delivered[p] + rnd.randint(1, 4)]
            gate.offer(p, chunk)
            delivered[p] += len(chunk)
        out += gate.take(dict(delivered), ends, now=0.0, limit=limit)
    assert out == sorted((r for rs in log.values() for r in rs), key=key)
    assert not gate.stalled
