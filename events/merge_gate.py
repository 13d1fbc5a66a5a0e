"""Reading partitions in the merge order: a sans-I/O gate between the fetch and the fold.

Every streaming reader of the event topics folds through it: the live projector (``projector.service``) and
replay (``replay.source.iter_cut``, which ends its partitions at a cut and never passes one: ``hold_s``
infinite). So the projector folds in the order replay folds in, by one piece of code.

Why the projector needs it: a consumer hands records over partition by partition (aiokafka's ``getmany``
drains one partition's fetched records before the next one's, up to ``max_records``). A projector catching
up on a backlog therefore folded later records of one partition before earlier ones of another: over a
1,000,000-event log read from offset 0 in batches of 20,000, 95 % of the records came after a record logged
later than them, by up to 63 s. Replay folds in ``events.topics.merge_order`` (broker time, then topic,
partition, offset). The fold decisions that read another key (a run-time subscription to a service whose
first registration sits on another partition, a ``restricted`` policy on the rules topic against a
subscription) then came out differently live and in replay, and two projector workers catching up could
publish different views of one node.

Invariants:
- Each partition's records are offered in offset order, as a consumer delivers them; LogAppendTime makes
  their merge keys ascend.
- A partition is *behind* while the consumer's position in it is short of its end: its high watermark for
  the live readers (records not delivered yet, visible or in an open transaction:
  ``projector.merged_fetch``), the cut's stop for replay; or while that end is unknown (no fetch answered
  for the partition yet). A partition that is not behind constrains nothing: whatever the broker appends
  to it later is stamped later (one broker's clock).
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

A transaction's records become visible at its commit but carry their append times: the live readers' shell
(``projector.merged_fetch``) ends a partition at its high watermark, so a partition with an open
transaction is behind and holds back what sorts after it until the commit (or until ``hold_s`` passes it).
What no gate here can order (so replay may still differ): brokers of a cluster stamp with their own
clocks; two records in the same millisecond on either side of a fetch. See docs/DESIGN.md, events.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from typing import Any, Iterable, Mapping

from events.topics import EVENT_TOPIC_RANK, merge_order

# How long (of the reader's clock) a partition that is behind and not moving (its leader unreachable, a
# transaction left open) may hold back what sorts after it; one being fetched releases the rest within a
# fetch, so only a stuck partition ever waits this long.
DEFAULT_HOLD_S = 2.0

_NOTHING = None  # a bound below every record: a behind partition has delivered nothing yet
_TIMESTAMP = operator.attrgetter("timestamp")
_OFFSET = operator.attrgetter("offset")


def _key(record: Any) -> tuple:
    return merge_order(record.timestamp, record.topic, record.partition, record.offset)


def _behind(positions: Mapping[str, int], ends: Mapping[str, int | None]) -> list[str]:
    """The partitions short of their end, or whose end is not known yet."""
    return [p for p, pos in positions.items() if (end := ends.get(p)) is None or pos < end]


def _count_upto(items: list, rank: tuple[int, int], bound: tuple) -> int:
    """How many of one partition's records (offset order; ``rank``: its (topic rank, partition)) have a merge
    key <= ``bound``. Within one partition the key is (time, rank, offset), so a bisection on time or offset
    answers it, with no key built per record."""
    at, bound_rank, offset = bound[0], bound[1:3], bound[3]
    if rank < bound_rank:  # a tie in time sorts before the bound
        return bisect.bisect_right(items, at, key=_TIMESTAMP)
    if rank > bound_rank:
        return bisect.bisect_left(items, at, key=_TIMESTAMP)
    return bisect.bisect_right(items, offset, key=_OFFSET)


class MergeGate:
    """``offer`` fetched records, ``take`` the ones every behind partition has moved past, in merge order."""

    __slots__ = ("hold_s", "_held", "_rank", "_frontier", "_moved", "_waiting_since", "stalled")

    def __init__(self, hold_s: float = DEFAULT_HOLD_S) -> None:
        self.hold_s = hold_s
        self._held: dict[str, list] = {}  # partition key -> records not yet released, offset order
        self._rank: dict[str, tuple[int, int]] = {}  # partition key -> (topic rank, partition), as merge_order
        self._frontier: dict[str, tuple] = {}  # partition key -> merge key of the last record offered
        self._moved: dict[str, int] = {}  # partition key -> the consumer position last seen
        self._waiting_since: dict[str, float] = {}  # partition key -> since when it bounds the release unmoved
        self.stalled: set[str] = set()

    def offer(self, partition: str, records: list) -> None:
        """Records of ``partition`` (its key, ``topic/partition``), in offset order, after those offered before."""
        if records:
            last = records[-1]
            held = self._held.get(partition)
            if held is None:
                held = self._held[partition] = []
                self._rank[partition] = (EVENT_TOPIC_RANK.get(last.topic, 99), last.partition)
            held.extend(records)
            self._frontier[partition] = _key(last)

    @property
    def held(self) -> int:
        return sum(len(v) for v in self._held.values())

    def first_held_offset(self, partition: str) -> int | None:
        """The offset of ``partition``'s first record not released yet (None: none held)."""
        items = self._held.get(partition)
        return items[0].offset if items else None

    def take(self, positions: Mapping[str, int], ends: Mapping[str, int | None], now: float, limit: int) -> list:
        """The held records no behind partition can precede any more, in merge order, at most ``limit``.

        ``positions``: the consumer's position per partition (every partition read); ``ends``: where
        each partition ends for this reader (the live readers: its high watermark, None while not known yet;
        replay: the cut's stop); ``now``: a clock that only moves forward, for ``hold_s`` (the live readers':
        their time spent fetching)."""
        behind = _behind(positions, ends)
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
        if bound is _NOTHING or limit <= 0:
            return []
        return self._release(bound, limit)

    def starving(self, positions: Mapping[str, int], ends: Mapping[str, int | None]) -> list[str]:
        """The partitions to fetch from next: those that bound the release; none if nothing is held back."""
        if not any(self._held.values()):
            return []
        return self._bound(_behind(positions, ends))[1]

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

    def _release(self, bound: tuple | bool, limit: int) -> list:
        """Remove and return, in merge order, the first ``limit`` held records whose key is <= ``bound``
        (True: any key)."""
        counts = {}
        total = 0
        for p, items in self._held.items():
            n = len(items) if bound is True else _count_upto(items, self._rank[p], bound) if items else 0
            if n:
                counts[p] = n
                total += n
        if not total:
            return []
        merged = self._merge(counts)
        if total > limit:
            # the first ``limit``: each partition's share of them is a prefix of what it could release
            cut = _key(merged[limit - 1])
            counts = {p: _count_upto(self._held[p], self._rank[p], cut) for p in counts}
            merged = merged[:limit]
        for p, n in counts.items():
            del self._held[p][:n]
        return merged

    def _merge(self, counts: dict[str, int]) -> list:
        """The first ``counts[p]`` held records of each partition p, merged in merge order: the runs are
        chained in (topic rank, partition) order and sorted by time alone. The sort is stable, so a tie in
        time keeps that order, which is the merge order's own tie-break (timsort merges the runs in C)."""
        parts = sorted(counts, key=self._rank.__getitem__)
        if len(parts) == 1:
            return self._held[parts[0]][:counts[parts[0]]]
        runs = (itertools.islice(self._held[p], counts[p]) for p in parts)
        return sorted(itertools.chain.from_iterable(runs), key=_TIMESTAMP)
