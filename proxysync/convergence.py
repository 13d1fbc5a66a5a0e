"""Convergence: from an event's append to the last affected proxy's ACK of the views it caused.

``convergences(changes, sync_records)`` is pure. ``changes`` are the steps of
a replay walk that changed some node's view: (a key, the event's broker time,
node -> the view it was told after the step). ``sync_records`` are the
``meshlog.sync`` events in log order, from the beginning of the topic (what a
proxy held before the window matters).

Invariants:
- A node counts for a change only if its proxy had an open stream when the
  event was appended (a node with no proxy cannot converge).
- A node reaches a change at the first ACK after which everything it holds
  matches what it was told (``proxysync.compare``, the same matching as
  ``meshlog status``); the time is the gateway's ACK time.
- A later change of the same node before it reached this one supersedes it
  there (the proxy never holds the earlier view as such); such nodes and
  those not reached by the end of the sync records are reported, not timed.
- ``acceptance`` answers for one node and one change when its proxy accepted
  it: at its own reaching ACK, or, if superseded, at the reaching ACK of the
  first later change it did reach (that view carries the change forward),
  named as ``via``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Mapping, Sequence

from events.envelope import Logged
from proxysync.compare import SYNCED, compare_proxy
from proxysync.table import SyncTable

Versions = Mapping[str, Mapping[str, str]]


@dataclass(slots=True)
class Convergence:
    event_ms: int
    proxies: int = 0  # affected nodes with a connected proxy
    reached: int = 0
    superseded: int = 0  # changed again before they reached this view
    last_ms: int | None = None  # event append -> the last reaching ACK
    slowest: str | None = None
    times_ms: list[int] = field(default_factory=list)  # per reaching proxy
    nodes: set[str] = field(default_factory=set)  # the counted (connected) nodes
    acked_ms: dict[str, int] = field(default_factory=dict)  # node -> the gateway's time of its reaching ACK
    superseded_by: dict[str, Hashable] = field(default_factory=dict)  # node -> the later change it got first

    @property
    def pending(self) -> int:
        return self.proxies - self.reached - self.superseded

    def as_dict(self) -> dict:
        return {"proxies": self.proxies, "reached": self.reached, "superseded": self.superseded,
                "not_reached": self.pending, "last_ack_ms": self.last_ms, "slowest": self.slowest,
                "median_ms": int(statistics.median(self.times_ms)) if self.times_ms else None}


def _synced(told: Versions, table: SyncTable, node: str) -> bool:
    statuses = compare_proxy(told, table.proxies.get(node), None)
    return all(s.state == SYNCED for s in statuses.values())


def convergences(changes: Sequence[tuple[Hashable, int, Mapping[str, Versions]]],
                 sync_records: Iterable[Logged]) -> dict[Hashable, Convergence]:
    out: dict[Hashable, Convergence] = {}
    pending: dict[str, tuple[Hashable, Versions]] = {}  # node -> the change it has not reached yet
    table = SyncTable()
    records = iter(sync_records)
    upcoming = next(records, None)

    def apply(record: Logged) -> None:
        table.apply(record)
        node = getattr(record.payload, "node", None)
        waiting = pending.get(node)
        if waiting is None or record.envelope.type != "sync.acked":
            return
        key, told = waiting
        if _synced(told, table, node):
            del pending[node]
            c = out[key]
            c.reached += 1
            c.acked_ms[node] = int(record.envelope.occurred_at.timestamp() * 1000)
            took = c.acked_ms[node] - c.event_ms
            c.times_ms.append(took)
            if c.last_ms is None or took > c.last_ms:
                c.last_ms, c.slowest = took, node

    for key, event_ms, views in sorted(changes, key=lambda c: c[1]):
        while upcoming is not None and upcoming.timestamp_ms <= event_ms:
            apply(upcoming)
            upcoming = next(records, None)
        c = out[key] = Convergence(event_ms)
        for node, told in views.items():
            proxy = table.proxies.get(node)
            if proxy is None or not proxy.stream.open:
                continue
            c.proxies += 1
            c.nodes.add(node)
            earlier = pending.get(node)
            if earlier is not None:
                out[earlier[0]].superseded += 1
                out[earlier[0]].superseded_by[node] = key
            pending[node] = (key, told)
    while upcoming is not None:
        apply(upcoming)
        upcoming = next(records, None)
    return out


@dataclass(frozen=True, slots=True)
class Acceptance:
    state: str  # ACCEPTED, NOT_YET (no reaching ACK in the sync records read), NO_PROXY (none connected)
    acked_ms: int | None = None  # the gateway's time of the reaching ACK
    after_ms: int | None = None  # the change's append -> that ACK
    via: Hashable | None = None  # the later change whose reaching ACK carried this one (superseded)


ACCEPTED, NOT_YET, NO_PROXY = "ACCEPTED", "NOT_YET", "NO_PROXY"


def acceptance(results: Mapping[Hashable, Convergence], key: Hashable, node: str) -> Acceptance:
    """When ``node``'s proxy accepted change ``key`` (``results`` from ``convergences``)."""
    first = results.get(key)
    if first is None or node not in first.nodes:
        return Acceptance(NO_PROXY)
    via, c = key, first
    while node not in c.acked_ms:
        via = c.superseded_by.get(node)
        if via is None:
            return Acceptance(NOT_YET)
        c = results[via]  # a later change: the chain only moves forward, so it ends
    acked = c.acked_ms[node]
    return Acceptance(ACCEPTED, acked, acked - first.event_ms, None if via == key else via)


def summary_text(doc: Mapping) -> str:
    """One line from ``Convergence.as_dict()``."""
    if not doc or not doc["proxies"]:
        return ""
    line = f"reached {doc['reached']:,} of {doc['proxies']:,} proxies"
    if doc["reached"]:
        line += f" (median {doc['median_ms']} ms); slowest {doc['slowest']} {doc['last_ack_ms']} ms"
    notes = [f"{doc['superseded']} changed again first" if doc["superseded"] else "",
             f"{doc['not_reached']} not yet" if doc["not_reached"] else ""]
    notes = [n for n in notes if n]
    return line + (f" ({', '.join(notes)})" if notes else "")
