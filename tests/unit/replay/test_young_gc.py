"""replay.young_gc: a long read collects cyclic garbage only between its batches, and frees it in time."""

from __future__ import annotations

import gc
import weakref

import pytest

from replay import young_gc
from replay.young_gc import young_gc_only


class Cycle:
    pass


def _cycle() -> weakref.ref:
    garbage = Cycle()
    garbage.me = garbage
    return weakref.ref(garbage)


@pytest.fixture
def small_growth(monkeypatch):
    monkeypatch.setattr(young_gc, "YOUNG_GROWTH", 1_000)


def _grow(keep: list, collect=None) -> None:
    """Live objects: the young generation grows past what ``collect`` waits for (YOUNG_GROWTH at first)."""
    growth = young_gc.YOUNG_GROWTH if collect is None else collect.growth
    keep.extend([i] for i in range(growth + 200))


def test_no_automatic_collection_inside_and_the_collector_as_it_was_after(small_growth):
    was = gc.isenabled()
    with young_gc_only() as collect:
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0  # what existed on entry is not scanned again
        dead = _cycle()
        for _ in range(10_000):  # allocations that would have triggered automatic collections
            [object()]
        assert dead() is not None
        assert collect() is None  # the young objects did not grow: allocated and freed again
        assert dead() is not None
    assert gc.isenabled() is was
    assert gc.get_freeze_count() == 0


def test_young_garbage_is_freed_once_the_young_objects_grew(small_growth):
    keep: list = []
    with young_gc_only() as collect:
        dead = _cycle()
        _grow(keep)
        assert collect() is not None
        assert dead() is None


def test_garbage_that_grew_old_is_freed_by_a_later_full_collection(small_growth):
    keep: list = []
    with young_gc_only() as collect:
        _grow(keep, collect)
        assert collect() == 2  # the first: every generation
        alive = Cycle()
        alive.me = alive
        old = weakref.ref(alive)
        _grow(keep, collect)
        assert collect() == 2  # the second: every generation; ``alive`` survives it and is old now
        del alive
        _grow(keep, collect)
        assert collect() == 1  # the third: the young generations only
        assert old() is not None
        _grow(keep, collect)
        assert collect() == 2  # the fourth: every generation again (then the 8th, the 16th, ...)
        assert old() is None
        schedule = []
        for _ in range(12):
            _grow(keep, collect)
            schedule.append(collect())
        assert [i + 5 for i, g in enumerate(schedule) if g == 2] == [8, 16]


def test_what_the_read_left_alive_leaves_the_young_generations_unscanned_and_dies_at_a_full_collection():
    """A young collection after the read would walk everything it left alive (millions of objects after a long
    walk): on exit that is in the old generation; cyclic garbage among it is still freed (by a full collection)."""
    keep: list = []
    with young_gc_only():
        _grow(keep)
        alive = Cycle()
        alive.me = alive
        was_alive = weakref.ref(alive)
    young = {id(o) for generation in (0, 1) for o in gc.get_objects(generation)}
    assert id(keep[0]) not in young and id(alive) not in young
    del alive
    gc.collect()
    assert was_alive() is None


def test_collections_that_find_nothing_wait_longer_and_garbage_brings_the_growth_back(small_growth):
    keep: list = []
    with young_gc_only() as collect:
        gc.collect()  # nothing left over from before
        growths = []
        for _ in range(3):
            _grow(keep, collect)
            assert collect() is not None
            growths.append(collect.growth)
        assert growths == [2_000, 4_000, 8_000]  # no cyclic garbage: each collection waits twice as long
        keep.extend([i] for i in range(5_000))
        assert collect() is None  # grown by less than the 8,000 it waits for now
        dead = _cycle()
        _grow(keep, collect)
        assert collect() is not None and dead() is None
        assert collect.growth == young_gc.YOUNG_GROWTH  # garbage found: back to the first growth
