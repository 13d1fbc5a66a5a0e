"""When things happened, by kind and by service: the console's timeline index (pure; no I/O).

The index knows, for every logged fact, its broker timestamp, its kind, the
service it is about and where it sits in Kafka (topic, partition, offset) —
never its payload and never mesh state (that is the fold's job, at a cursor).

Invariants:
- Per (kind, service) group, timestamps are kept sorted (records arrive in
  merge order, so adding is an append; a late fact such as a rejection
  recorded after newer events is inserted in place).
- ``window(from, to, buckets)`` counts with bisections over those sorted
  arrays: its cost grows with groups x buckets x log(events), not with how
  many events the window holds, so a window over the whole 1M-event bench
  log answers as fast as a window over one second.
- Windows are inclusive ``[from_ms, to_ms]``; bucket ``i`` covers
  ``[from_ms + i*width, from_ms + (i+1)*width)`` cut at ``to_ms``; every
  event in the window is in exactly one bucket, so the row totals add up.
- Individual events are returned only when the window holds at most
  ``max_points`` of them (a page cannot draw a million marks; it draws bars).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from events import types as t

# kinds the log has besides event types
REJECTED = "rule.rejected"
DEAD_LETTER = "dead_letter"
NO_SERVICE = ""
OTHER_SERVICES = "(other services)"
MAX_BUCKETS = 2000


def event_kind(payload: t.Payload, type_name: str) -> str:
    """The timeline row of an event: its type, and for a health transition the status it went to."""
    if isinstance(payload, t.InstanceHealthChanged):
        return f"{type_name}:{payload.status}"
    return type_name


def event_service(payload: t.Payload) -> str:
    """The one service an event is filed under (its entity: service, rule host, rejected rule's name)."""
    for attr in ("service", "host", "name"):
        value = getattr(payload, attr, None)
        if isinstance(value, str):
            return value
    return NO_SERVICE


@dataclass(slots=True)
class _Group:
    ts: array = field(default_factory=lambda: array("q"))
    topic: array = field(default_factory=lambda: array("H"))
    partition: array = field(default_factory=lambda: array("H"))
    offset: array = field(default_factory=lambda: array("q"))

    def add(self, ts: int, topic: int, partition: int, offset: int) -> None:
        if not self.ts or self.ts[-1] <= ts:
            self.ts.append(ts)
            self.topic.append(topic)
            self.partition.append(partition)
            self.offset.append(offset)
            return
        i = bisect_right(self.ts, ts)
        self.ts.insert(i, ts)
        self.topic.insert(i, topic)
        self.partition.insert(i, partition)
        self.offset.insert(i, offset)


class TimelineIndex:
    def __init__(self) -> None:
        self._groups: dict[tuple[str, str], _Group] = {}
        self._topics: list[str] = []
        self._topic_ids: dict[str, int] = {}
        self.count = 0
        self.first_ms: int | None = None
        self.last_ms: int | None = None

    def add(self, ts: int, kind: str, service: str, topic: str, partition: int, offset: int) -> None:
        tid = self._topic_ids.get(topic)
        if tid is None:
            tid = self._topic_ids[topic] = len(self._topics)
            self._topics.append(topic)
        group = self._groups.get((kind, service))
        if group is None:
            group = self._groups[(kind, service)] = _Group()
        group.add(ts, tid, partition, offset)
        self.count += 1
        self.first_ms = ts if self.first_ms is None else min(self.first_ms, ts)
        self.last_ms = ts if self.last_ms is None else max(self.last_ms, ts)

    def window(self, from_ms: int, to_ms: int, buckets: int, *, services: int = 20, max_points: int = 2000) -> dict:
        """Counts per bucket by kind and by service (the ``services`` busiest; the rest in one row), and the
        events themselves when there are at most ``max_points``."""
        if to_ms < from_ms:
            raise ValueError("to_ms is before from_ms")
        if not 1 <= buckets <= MAX_BUCKETS:
            raise ValueError(f"buckets must be 1..{MAX_BUCKETS}")
        span = to_ms - from_ms + 1
        width = max(1, -(-span // buckets))
        n = -(-span // width)
        edges = [from_ms + i * width for i in range(n)] + [to_ms + 1]
        by_kind: dict[str, list[int]] = {}
        by_service: dict[str, list[int]] = {}
        spans: list[tuple[tuple[str, str], _Group, int, int]] = []
        total = 0
        for key, g in self._groups.items():
            ts = g.ts
            if not ts or ts[-1] < from_ms or ts[0] > to_ms:
                continue
            lo, hi = bisect_left(ts, from_ms), bisect_left(ts, to_ms + 1)
            if lo == hi:
                continue
            pos = [lo] + [bisect_left(ts, e, lo, hi) for e in edges[1:-1]] + [hi]
            counts = [pos[i + 1] - pos[i] for i in range(n)]
            total += hi - lo
            spans.append((key, g, lo, hi))
            for row, name in ((by_kind, key[0]), (by_service, key[1])):
                acc = row.get(name)
                if acc is None:
                    row[name] = counts
                else:
                    row[name] = [a + b for a, b in zip(acc, counts)]
        service_rows = sorted(by_service.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
        if len(service_rows) > services:
            rest = [0] * n
            for _name, counts in service_rows[services:]:
                rest = [a + b for a, b in zip(rest, counts)]
            service_rows = service_rows[:services] + [(OTHER_SERVICES, rest)]
        points = None
        if total <= max_points:
            points = []
            for (kind, service), g, lo, hi in spans:
                for i in range(lo, hi):
                    points.append({"timestamp_ms": g.ts[i], "kind": kind, "service": service,
                                   "topic": self._topics[g.topic[i]], "partition": g.partition[i],
                                   "offset": g.offset[i]})
            points.sort(key=lambda p: (p["timestamp_ms"], p["topic"], p["partition"], p["offset"]))
        return {
            "from_ms": from_ms,
            "to_ms": to_ms,
            "width_ms": width,
            "buckets": n,
            "total": total,
            "by_kind": [{"kind": k, "total": sum(c), "counts": c} for k, c in sorted(by_kind.items())],
            "by_service": [{"service": s, "total": sum(c), "counts": c} for s, c in service_rows],
            "points": points,
            "log": {"first_ms": self.first_ms, "last_ms": self.last_ms, "events": self.count},
        }
