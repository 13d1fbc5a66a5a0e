"""When things happened, by kind and by service: the console's timeline index (pure; no I/O).

The index knows, for every logged fact, its broker timestamp, its kind, the
service it is about and where it sits in Kafka (topic, partition, offset) —
never its payload and never mesh state (that is the fold's job, at a cursor).

Invariants:
- Per kind and per service, timestamps are kept sorted (records arrive in
  merge order, so adding is an append; a late fact such as a rejection
  recorded after newer events is inserted in place).
- ``window(from, to, buckets)`` counts with bisections over those sorted
  arrays: its cost grows with (kinds + shown services) x buckets x
  log(events) plus two bisections per other service, not with how many
  events the window holds, so a window over the whole 1M-event bench log
  answers about as fast as a window over one second.
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
from identity.spiffe import sidecar_service

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
    """The one service an event is filed under (its entity: service, rule host, rejected rule's name, a
    sidecar identity's service)."""
    for attr in ("service", "host", "name"):
        value = getattr(payload, attr, None)
        if isinstance(value, str):
            return value
    spiffe_id = getattr(payload, "spiffe_id", None)
    if isinstance(spiffe_id, str):
        return sidecar_service(spiffe_id) or NO_SERVICE
    return NO_SERVICE


@dataclass(slots=True)
class _Kind:
    """One kind's events: times (sorted) and, in step, each event's service and place in Kafka."""

    ts: array = field(default_factory=lambda: array("q"))
    service: array = field(default_factory=lambda: array("I"))
    topic: array = field(default_factory=lambda: array("H"))
    partition: array = field(default_factory=lambda: array("H"))
    offset: array = field(default_factory=lambda: array("q"))

    def add(self, ts: int, service: int, topic: int, partition: int, offset: int) -> None:
        i = len(self.ts) if not self.ts or self.ts[-1] <= ts else bisect_right(self.ts, ts)
        for column, value in ((self.ts, ts), (self.service, service), (self.topic, topic),
                              (self.partition, partition), (self.offset, offset)):
            if i == len(column):
                column.append(value)
            else:
                column.insert(i, value)


def _insert(ts_list: array, ts: int) -> None:
    if not ts_list or ts_list[-1] <= ts:
        ts_list.append(ts)
    else:
        ts_list.insert(bisect_right(ts_list, ts), ts)


def _counts(ts: array, edges: list[int], n: int) -> tuple[list[int], int, int]:
    """Per-bucket counts of sorted ``ts`` between ``edges`` (n+1 of them), and the slice they cover."""
    lo, hi = bisect_left(ts, edges[0]), bisect_left(ts, edges[-1])
    if lo == hi:
        return [0] * n, lo, hi
    pos = [lo] + [bisect_left(ts, e, lo, hi) for e in edges[1:-1]] + [hi]
    return [pos[i + 1] - pos[i] for i in range(n)], lo, hi


class TimelineIndex:
    """Kept twice over: by kind (with each event's service and place) and by service (times only), so a
    window costs (kinds + busiest services) x buckets bisections, and the other services two each."""

    def __init__(self) -> None:
        self._kinds: dict[str, _Kind] = {}
        self._services: dict[str, array] = {}
        self._service_names: list[str] = []
        self._service_ids: dict[str, int] = {}
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
        sid = self._service_ids.get(service)
        if sid is None:
            sid = self._service_ids[service] = len(self._service_names)
            self._service_names.append(service)
            self._services[service] = array("q")
        group = self._kinds.get(kind)
        if group is None:
            group = self._kinds[kind] = _Kind()
        group.add(ts, sid, tid, partition, offset)
        _insert(self._services[service], ts)
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
        by_kind: list[dict] = []
        slices: list[tuple[_Kind, int, int]] = []
        all_counts = [0] * n
        for kind in sorted(self._kinds):
            g = self._kinds[kind]
            if not g.ts or g.ts[-1] < from_ms or g.ts[0] > to_ms:
                continue
            counts, lo, hi = _counts(g.ts, edges, n)
            if lo == hi:
                continue
            slices.append((g, lo, hi))
            all_counts = [a + b for a, b in zip(all_counts, counts)]
            by_kind.append({"kind": kind, "total": hi - lo, "counts": counts})
        total = sum(all_counts)
        totals = []
        for name, ts in self._services.items():
            if ts and ts[-1] >= from_ms and ts[0] <= to_ms:
                k = bisect_left(ts, to_ms + 1) - bisect_left(ts, from_ms)
                if k:
                    totals.append((-k, name))
        totals.sort()
        by_service = []
        rest = list(all_counts)
        for _neg, name in totals[:services]:
            counts, lo, hi = _counts(self._services[name], edges, n)
            by_service.append({"service": name, "total": hi - lo, "counts": counts})
            rest = [a - b for a, b in zip(rest, counts)]
        if len(totals) > services:
            by_service.append({"service": OTHER_SERVICES, "total": sum(rest), "counts": rest})
        points = None
        if total <= max_points:
            points = []
            for kind_name, (g, lo, hi) in zip((k["kind"] for k in by_kind), slices):
                for i in range(lo, hi):
                    points.append({"timestamp_ms": g.ts[i], "kind": kind_name,
                                   "service": self._service_names[g.service[i]],
                                   "topic": self._topics[g.topic[i]], "partition": g.partition[i],
                                   "offset": g.offset[i]})
            points.sort(key=lambda p: (p["timestamp_ms"], p["topic"], p["partition"], p["offset"]))
        return {
            "from_ms": from_ms,
            "to_ms": to_ms,
            "width_ms": width,
            "buckets": n,
            "total": total,
            "by_kind": by_kind,
            "by_service": by_service,
            "points": points,
            "log": {"first_ms": self.first_ms, "last_ms": self.last_ms, "events": self.count},
        }
