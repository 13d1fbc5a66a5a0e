"""Folding a live log in the order replay folds it: a sans-I/O gate between the fetch and the fold.

Why it exists: a consumer hands records over partition by partition (aiokafka's ``getmany`` drains one
partition's fetched records before the next one's, up to ``max_records``). A projector catching up on a
backlog therefore folded later records of one partition before earlier ones of another: over a
1,000,000-event log read from offset 0 in batches of 20,000, 95 % of the records came after a record logged
later than them, by up to 63 s. Replay folds in ``events.topics.merge_order`` (broker time, then topic,
partition, offset). The fold decisions that read another key (a run-time subscription to a service whose
first registration sits on another partition, a ``restricted`` policy on the rules topic against a
subscription) then came out differently live and in replay, and two projector workers catching up could
publish different views of one node.

Invariants:
- Each partition's records are offered in offset order, as a consumer delivers them; LogAppendTime makes
  their merge keys ascend.
- A partition is *behind* while the consumer's position in it is short of its last stable offset (visible
  records it has not delivered yet), or while that offset is unknown (no fetch answered for it yet). A
  partition that is not behind constrains nothing: whatever the broker appends to it later is stamped
  later (one broker's clock).
- A record is released only when its merge key is <= the *frontier* (the merge key of the last record
  offered) of every behind partition, so no behind partition can still deliver a record that sorts before
  it. Released records come out in merge order, at most ``limit`` per call; the rest stay held, in order.
- The partitions that bound the release (behind, with the smallest frontier or none yet) are ``starving()``:
  the shell fetches from them, not from all, so what is held stays about one fetch deep rather than a
  whole partition's backlog.
- Liveness over order, bounded and said: a partition that bounds the release and has not moved for
  ``hold_s`` (its leader unreachable, say) stops constraining until its position moves again. It is in
  ``stalled`` meanwhile, and the shell logs it: records folded past it may be decided differently by
  replay.

What no gate here can order (so replay may still differ): a transaction's records become visible at its
commit but carry their append times; brokers of a cluster stamp with their own clocks; two records in the
same millisecond on either side of a fetch. See docs/DESIGN.md, events.
"""

from __future__ import annotations

import bisect
import itertools
from typing import Any, Iterable, Mapping

from events.topics import merge_order

_NOTHING = None  # a bound below every record: a behind partition has delivered nothing yet


def _key(record: Any) -> tuple:
    return merge_order(record.timestamp, record.topic, record.partition, record.offset)


class MergeGate:
    """``offer`` fetched records, ``take`` the ones every behind partition has moved past, in merge order."""

    __slots__ = ("hold_s", "_held", "_frontier", "_moved", "_waiting_since", "stalled")

    def __init__(self, hold_s: float = 2.0) -> None:
        self.hold_s = hold_s
        self._held: dict[str, list] = {}  # partition key -> records not yet released, offset order
        self._frontier: dict[str, tuple] = {}  # partition key -> merge key of the last record offered
        self._moved: dict[str, int] = {}  # partition key -> the consumer position last seen
        self._waiting_since: dict[str, float] = {}  # partition key -> since when it bounds the release unmoved
        self.stalled: set[str] = set()

    def offer(self, partition: str, records: list) -> None:
        """Records of ``partition`` (its key, ``topic/partition``), in offset order, after those offered before."""
        if records:
            self._held.setdefault(partition, []).extend(records)
            self._frontier[partition] = _key(records[-1])

    @property
    def held(self) -> int:
        return sum(len(v) for v in self._held.values())

    def first_held_offset(self, partition: str) -> int | None:
        """The offset of ``partition``'s first record not released yet (None: none held)."""
        items = self._held.get(partition)
        return items[0].offset if items else None

    def take(self, positions: Mapping[str, int], stable_ends: Mapping[str, int | None], now: float,
             limit: int) -> list:
        """The held records no behind partition can precede any more, in merge order, at most ``limit``.

        ``positions``: the consumer's position per partition (every partition read); ``stable_ends``: its
        last stable offset per partition (None: not known yet); ``now``: a monotonic clock, for ``hold_s``."""
        behind = [p for p, pos in positions.items() if (end := stable_ends.get(p)) is None or pos < end]
        for p, pos in positions.items():
            if self._moved.get(p) != pos:
                self._moved[p] = pos
                self._waiting_since.pop(p, None)
                self.stalled.discard(p)
        if not any(self._held.values()):
            self._waiting_since.clear()
            return []
        bound, limiting = self._bound(behind)
        for p in limiting:
            since = self._waiting_since.setdefault(p, now)
            if now - since >= self.hold_s:
                self.stalled.add(p)
        for p in list(self._waiting_since):
            if p not in limiting:
                del self._waiting_since[p]
        if self.stalled & set(limiting):
            bound, _ = self._bound(behind)
        if bound is _NOTHING:
            return []
        ready = self._split(bound)
        if len(ready) > limit:
            # give back the largest keys: release exactly the first ``limit`` in merge order
            cut = _key(ready[limit - 1])
            self._give_back(ready, cut)
            ready = ready[:limit]
        return ready

    def starving(self, positions: Mapping[str, int], stable_ends: Mapping[str, int | None]) -> list[str]:
        """The partitions to fetch from next: those that bound the release; none if nothing is held back."""
        if not any(self._held.values()):
            return []
        behind = [p for p, pos in positions.items() if (end := stable_ends.get(p)) is None or pos < end]
        return self._bound(behind)[1]

    # ------------------------------------------------------------------ internals

    def _bound(self, behind: Iterable[str]) -> tuple[tuple | None | bool, list[str]]:
        """(the largest merge key that may be released, or ``_NOTHING``; the partitions that set it).
        True as the bound: no behind partition constrains, everything may go."""
        bound: tuple | None | bool = True
        limiting: list[str] = []
        for p in behind:
            if p in self.stalled:
                continue
            f = self._frontier.get(p)
            if f is None:
                if bound is not _NOTHING:
                    limiting = []
                bound = _NOTHING
                limiting.append(p)
            elif bound is _NOTHING:
                continue
            elif bound is True or f < bound:
                bound, limiting = f, [p]
            elif f == bound:
                limiting.append(p)
        return bound, limiting

    def _split(self, bound: tuple | bool) -> list:
        """Remove and return, merged, every held record whose key is <= ``bound`` (True: all)."""
        runs = []
        for p, items in self._held.items():
            if not items:
                continue
            if bound is True:
                runs.append(items)
                self._held[p] = []
                continue
            n = bisect.bisect_right(items, bound, key=_key)
            if n:
                runs.append(items[:n])
                self._held[p] = items[n:]
        if len(runs) == 1:
            return runs[0]
        return sorted(itertools.chain.from_iterable(runs), key=_key)

    def _give_back(self, ready: list, cut: tuple) -> None:
        """Put the records of ``ready`` above ``cut`` back in front of their partitions' held records."""
        back: dict[str, list] = {}
        for r in ready:
            if _key(r) > cut:
                back.setdefault(f"{r.topic}/{r.partition}", []).append(r)
        for p, items in back.items():
            self._held[p] = items + self._held.get(p, [])
