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


def _grow(keep: list) -> None:
    keep.extend([i] for i in range(1_200))  # live objects: the young generation grows past YOUNG_GROWTH


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
        _grow(keep)
        assert collect() == 2  # the first: every generation
        alive = Cycle()
        alive.me = alive
        old = weakref.ref(alive)
        _grow(keep)
        assert collect() == 2  # the second: every generation; ``alive`` survives it and is old now
        del alive
        _grow(keep)
        assert collect() == 1  # the third: the young generations only
        assert old() is not None
        _grow(keep)
        assert collect() == 2  # the fourth: every generation again (then the 8th, the 16th, ...)
        assert old() is None
        schedule = []
        for _ in range(12):
            _grow(keep)
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
