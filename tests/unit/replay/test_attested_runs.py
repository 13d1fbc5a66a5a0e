"""Stories: a read matches the projector's attested runs against the bytes it finds, before the merge.

``replay.attested_runs.RunScreen`` is fed each partition's records as they
are fetched (in slices cut anywhere) and says which records lie in a run
matched whole; what it hands on to the merge is every record, in the order
fed, a run's records only once the run is decided.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from projector.attestations import Run, run_digest, runs_of
from replay.attested_runs import AttestedRuns
from tests.unit.replay.fake_consumer import Rec

H = "meshlog.health"


def log(offsets, topic: str = H, partition: int = 0) -> list[Rec]:
    return [Rec(topic, partition, o, 1000 + o, f"record {topic}/{partition}@{o}".encode()) for o in offsets]


def attested(records, good=lambda r: True) -> AttestedRuns:
    return AttestedRuns(runs_of((r.topic, r.partition, r.offset, r.value, good(r)) for r in records))


def read(runs: AttestedRuns, records: list[Rec], cuts: list[int]):
    """Feed ``records`` in slices ending at ``cuts``, then end the partition: (what went on, in order, the
    screen)."""
    screen, out, start = runs.screen(), [], 0
    for end in [*cuts, len(records)]:
        out += screen.offer(records[0].topic, records[0].partition, records[start:end])
        start = end
    out += screen.finish(records[0].topic, records[0].partition)
    return out, screen


def test_a_run_read_whole_covers_its_records_and_a_slice_boundary_inside_it_only_holds_them_back():
    records = log([0, 1, 2, 4, 5])  # offset 3: a transaction marker, seen by neither the projector nor replay
    runs = attested(records, good=lambda r: r.offset != 4)  # 4: not well signed, it ends the run
    screen = runs.screen()
    assert screen.offer(H, 0, records[:2]) == []  # the run 0..2 is not read to its end: held back
    assert screen.offer(H, 0, records[2:]) == records  # decided: handed on, in order
    assert [screen.covers(r) for r in records] == [True, True, True, False, True]
    assert screen.as_dict() == {"runs_matched": 2, "runs_mismatched": 0, "runs_unread": 0}


def test_other_bytes_or_a_record_more_or_less_leave_a_run_unmatched():
    records = log([0, 1, 2])
    runs = attested(records)
    altered = [records[0], Rec(H, 0, 1, 1001, b"something else"), records[2]]
    missing = [records[0], records[2]]
    for found in (altered, missing):
        out, screen = read(runs, found, [1])
        assert out == found and not any(screen.covers(r) for r in found)
        assert screen.mismatched == 1
    # the projector saw 0 and 2 only (1 came later, say, in an open transaction): the reader finds one more
    out, screen = read(AttestedRuns([Run(H, 0, 0, 2, 2, run_digest([records[0].value, records[2].value]))]),
                       records, [])
    assert screen.mismatched == 1 and not any(screen.covers(r) for r in records)


def test_a_cut_that_starts_or_ends_inside_a_run_leaves_it_unmatched():
    records = log(range(6))
    runs = AttestedRuns(runs_of((H, 0, r.offset, r.value, True) for r in records[:3])
                        + runs_of((H, 0, r.offset, r.value, True) for r in records[3:]))
    out, screen = read(runs, records[1:5], [2])  # from a snapshot at offset 1, to a cut at 5
    assert out == records[1:5] and not any(screen.covers(r) for r in out)
    assert screen.as_dict() == {"runs_matched": 0, "runs_mismatched": 0, "runs_unread": 2}


def test_a_run_overlapping_one_matched_is_not_applied_and_a_run_attested_twice_counts_once():
    records = log(range(6))
    first = runs_of((H, 0, r.offset, r.value, True) for r in records[:4])
    overlapping = runs_of((H, 0, r.offset, r.value, True) for r in records[2:])
    runs = AttestedRuns(first + first + overlapping)
    assert runs.runs == 2
    out, screen = read(runs, records, [3])
    assert out == records
    assert [screen.covers(r) for r in records] == [True] * 4 + [False] * 2
    assert screen.as_dict() == {"runs_matched": 1, "runs_mismatched": 0, "runs_unread": 1}


def test_partitions_are_matched_apart_and_records_outside_every_run_pass_at_once():
    a, b = log(range(3)), log(range(3), partition=1)
    runs = attested(a)  # partition 0 only
    screen = runs.screen()
    assert screen.offer(H, 1, b) == b and screen.offer(H, 0, a) == a
    assert [screen.covers(r) for r in a + b] == [True] * 3 + [False] * 3


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40), st.randoms(use_true_random=False), st.data())
def test_whatever_the_slices_every_record_goes_on_once_in_order_and_exactly_the_matched_runs_are_covered(
        good, rnd: random.Random, data):
    """Runs of the records found good (some altered on the log after), fed in random slices."""
    offsets = sorted(rnd.sample(range(3 * len(good)), len(good)))  # gaps: markers and aborted records
    records = log(offsets)
    runs = attested(records, good=lambda r: good[records.index(r)])
    altered = data.draw(st.sets(st.integers(0, len(records) - 1), max_size=3))
    found = [Rec(H, 0, r.offset, r.timestamp, b"altered") if i in altered else r for i, r in enumerate(records)]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(found)), max_size=6)))
    out, screen = read(runs, found, cuts)
    assert out == found
    covered = {r.offset for r in found if screen.covers(r)}
    # a run is matched iff none of its records was altered; the covered offsets are exactly those runs'
    expected = {o for run in runs.as_runs() for o in offsets if run.first <= o <= run.last
                if not any(run.first <= found[i].offset <= run.last for i in altered)}
    assert covered == expected
    assert screen.matched + screen.mismatched == runs.runs
