"""Matching the projector's attested runs against the records a replay reads, before any of them is decoded.

``AttestedRuns`` holds the runs of the attestations replay believed
(``replay.attestations``: signed by a projector identity held when logged).
A read (``replay.source.iter_cut``) takes one ``RunScreen`` from it and puts
each partition's fetched records through ``offer`` before the merge gate
sees them; the decoder then asks ``covers(record)`` of each record it
decodes (``events.record_decoder``): a covered record is decoded without its
signature fields and its envelope carries ``events.envelope.ATTESTED_RUN``,
which the verifier takes instead of the signature's check
(``Verifier.verdict``).

Invariants:
- A record is covered only if the run it lies in was matched whole in this
  read: the records found at offsets ``first``..``last`` of that partition
  are exactly ``records`` many and their values hash to the run's digest
  (``projector.attestations.RunHasher``). Anything else (other bytes, a
  record more or less, a cut that starts or ends inside the run, a run
  overlapping one already matched) leaves its records uncovered, to be
  verified the full way: a run can only ever stand for the bytes the
  projector verified, and a mismatch costs time, never trust.
- No record reaches the merge gate before its run is decided: ``offer``
  holds back the records of a run not yet read to its end (at most one run
  per partition), and hands them over once it is; ``finish`` hands over what
  a partition still holds when its read ends (uncovered). Each partition's
  records come out in the order they went in.
- ``covers`` expects each partition's records in offset order (the merge
  order keeps it), and forgets the runs a partition has passed: memory stays
  that of the runs not yet read.
- Pure: no I/O, no clock.
"""

from __future__ import annotations

import bisect
import operator
from collections import deque
from typing import Iterable

from projector.attestations import Run, RunHasher

_OFFSET = operator.attrgetter("offset")
_VALUE = operator.attrgetter("value")


class AttestedRuns:
    """The believed runs, by partition; ``screen()`` for each read."""

    __slots__ = ("_by_partition", "runs", "records")

    def __init__(self, runs: Iterable[Run] = ()) -> None:
        by_partition: dict[tuple[str, int], set[Run]] = {}
        for run in runs:
            by_partition.setdefault((run.topic, run.partition), set()).add(run)  # a run attested twice counts once
        self._by_partition = {key: tuple(sorted(found, key=lambda r: (r.first, -r.last)))
                              for key, found in by_partition.items()}
        self.runs = sum(map(len, self._by_partition.values()))
        self.records = sum(run.records for found in self._by_partition.values() for run in found)

    def __bool__(self) -> bool:
        return bool(self._by_partition)

    def screen(self) -> "RunScreen":
        return RunScreen(self._by_partition)

    def as_runs(self) -> list[Run]:
        return [run for found in self._by_partition.values() for run in found]


class _Open:
    """A run being read: its hash so far, the records held back until it is decided."""

    __slots__ = ("run", "hasher", "held")

    def __init__(self, run: Run) -> None:
        self.run = run
        self.hasher = RunHasher()
        self.held: list = []


class RunScreen:
    """One read's matching of runs and records (see the module docstring)."""

    __slots__ = ("_todo", "_open", "_good", "matched", "mismatched", "unread")

    def __init__(self, by_partition: dict[tuple[str, int], tuple[Run, ...]]) -> None:
        self._todo = {key: deque(runs) for key, runs in by_partition.items()}
        self._open: dict[tuple[str, int], _Open] = {}
        # (topic, partition) -> the (first, last) offsets of runs matched, not yet passed by ``covers``
        self._good: dict[tuple[str, int], deque] = {}
        self.matched = 0  # runs matched whole
        self.mismatched = 0  # runs whose records were read and did not match (other bytes or count)
        self.unread = 0  # runs only partly in the read (a cut starting or ending inside), or overlapping another

    def offer(self, topic: str, partition: int, records: list) -> list:
        """The records of one fetch of a partition (in offset order) that may go on to the merge gate now."""
        key = (topic, partition)
        todo = self._todo.get(key)
        if not todo and key not in self._open:
            return records
        out: list = []
        i, n = 0, len(records)
        while i < n:
            current = self._open.get(key)
            if current is None:
                offset = records[i].offset
                while todo and todo[0].last < offset:  # passed: begun before this read, or overlapping a matched run
                    todo.popleft()
                    self.unread += 1
                if not todo:
                    out += records[i:]
                    break
                run = todo[0]
                if run.first > offset:  # records before the next run: nothing to match
                    j = bisect.bisect_left(records, run.first, lo=i, key=_OFFSET)
                    out += records[i:j]
                    i = j
                    continue
                todo.popleft()
                if run.first < offset:  # the read starts inside it (or its first record is not there): unmatched
                    self.unread += 1
                    continue
                current = self._open[key] = _Open(run)
            last = current.run.last
            j = bisect.bisect_right(records, last, lo=i, key=_OFFSET)
            part = records[i:j]
            current.hasher.update(list(map(_VALUE, part)))
            current.held += part
            i = j
            if j < n or (part and part[-1].offset == last):  # read to its end: decided
                del self._open[key]
                self._decide(key, current)
                out += current.held
        return out

    def finish(self, topic: str, partition: int) -> list:
        """What a partition still holds back when its read ends (its run cut short: uncovered)."""
        current = self._open.pop((topic, partition), None)
        if current is None:
            return []
        self.unread += 1
        return current.held

    def _decide(self, key: tuple[str, int], current: _Open) -> None:
        run = current.run
        if current.hasher.records == run.records and current.hasher.digest() == run.digest:
            self.matched += 1
            self._good.setdefault(key, deque()).append((run.first, run.last))
        else:
            self.mismatched += 1

    def covers(self, record) -> bool:
        """Whether ``record`` lies in a run matched whole in this read."""
        good = self._good.get((record.topic, record.partition))
        if not good:
            return False
        offset = record.offset
        while good[0][1] < offset:
            good.popleft()
            if not good:
                return False
        return good[0][0] <= offset

    def as_dict(self) -> dict:
        return {"runs_matched": self.matched, "runs_mismatched": self.mismatched, "runs_unread": self.unread}
