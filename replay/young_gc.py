"""The cyclic GC for a long read: collections only where the reader asks, over the young objects only.

A replay read allocates millions of objects (records, events, the decoder's
memo, the folded state), most of them freed by reference counting a moment
later, the rest long-lived. Left automatic, the collector rescans the young
ones every few hundred allocations and the whole heap now and then: a
quarter or more of a node walk's CPU, and a seventh of the reading process's.

``young_gc_only()`` turns automatic collection off and freezes what exists
(nothing older is scanned again). The function it yields is called by the
reader between batches: it collects the young generations only once they
have grown by ``YOUNG_GROWTH`` objects net (allocations less those freed),
so a batch whose objects died with it costs no scan, and cyclic garbage is
freed within that growth (which doubles while collections find none). What
survives a young collection is old; the old generation (without what was
frozen) is collected too at the 1st, 2nd, 4th, 8th, ... young collection:
garbage that was still alive at a young collection is freed in time, and
the rescans of long-lived objects stay a constant factor of the read.

Invariants:
- Inside, no collection runs but the yielded function's; on exit automatic
  collection is as it was and nothing stays frozen. What was alive on exit is
  in the old generation: the next full collection frees what of it dies.
- Memory: cyclic garbage is freed at most ``Collector.growth`` objects (and
  one batch) after it is made if it was young -- ``YOUNG_GROWTH`` while the
  collections find garbage, twice what it was after one that found none --,
  at the next full collection if it had grown old (at most as many young
  collections later as came before).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator

# net growth of the young generation (tracked objects allocated less those freed) before a collection
YOUNG_GROWTH = 200_000


class Collector:
    """``collector()`` between batches: collects once the young generation grew by ``growth`` objects (every
    generation at the 1st, 2nd, 4th, 8th, ... time); returns the generation collected, or None.

    ``growth`` is ``YOUNG_GROWTH`` while collections find garbage and doubles after each that finds none: a
    read that makes no cyclic garbage (a node walk, a whole-mesh walk's renders: none found on bench/replay.py's
    logs) pays for a
    few collections, not for one per ``YOUNG_GROWTH`` (each walks every object the read keeps that is still in
    the young list, ~0.4 CPU-s apiece late in a 1,000,000-event walk)."""

    __slots__ = ("young", "next_full", "growth")

    def __init__(self) -> None:
        self.young = 0  # young collections so far
        self.next_full = 1  # the young collection that also collects the old generation
        self.growth = YOUNG_GROWTH

    def __call__(self) -> int | None:
        if gc.get_count()[0] < self.growth:
            return None
        self.young += 1
        generation = 1
        if self.young >= self.next_full:
            generation = 2
            self.next_full *= 2
        found = gc.collect(generation)
        self.growth = YOUNG_GROWTH if found else 2 * self.growth
        return generation


@contextmanager
def young_gc_only() -> Iterator[Collector]:
    """Automatic collection off, what exists frozen; yields a ``Collector`` (see the module docstring)."""
    was = gc.isenabled()
    gc.disable()
    gc.freeze()
    try:
        yield Collector()
    finally:
        # what the read left alive (the folded state, the decoder's memo: millions of objects, most of them still
        # in the young list however few the net count says) joins the old generation unscanned, with what was
        # frozen: the first automatic collections after it would each walk them all (~0.4 CPU-s apiece after a
        # 1,000,000-event walk, cyclic garbage found: none)
        gc.freeze()
        gc.unfreeze()
        if was:
            gc.enable()
