"""What a proxy was told against what it ACKed: the one place that matching lives.

``compare_proxy(told, proxy, view_changed_ms)`` is pure. ``told`` is the
node's view (type URL -> name -> version, as ``meshlog.views.membership``
holds it live, or as replay renders it at an instant); ``proxy`` is the
node's row of ``proxysync.table.SyncTable`` (None: never seen on a stream).
Per type the result is one of:

- ``SYNCED``: the proxy ACKed exactly the names and versions it was told.
- ``NACKED``: its latest answer for the type was a NACK (with Envoy's
  reason); it keeps what it held before, shown in the differences.
- ``STALE``: it ACKed something else: the change was sent (or is being held
  back by make-before-break), not ACKed yet. ``since_ms`` is when the view
  last changed (the membership record's time): how long it has been waiting.
- ``NOT_SENT``: no ACK or NACK for the type on record.

Differences list every name whose ACKed version is not the told one
(``None`` = not held / not told).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from proxysync.table import ProxySync, TypeSync

SYNCED, STALE, NACKED, NOT_SENT = "SYNCED", "STALE", "NACKED", "NOT SENT"


@dataclass(frozen=True, slots=True)
class Difference:
    name: str
    told: str | None
    acked: str | None
    rejected: str | None = None  # the version a NACKed response carried


@dataclass(frozen=True, slots=True)
class TypeStatus:
    type_url: str
    state: str
    since_ms: int | None = None  # STALE: the view changed then; NACKED: the NACK's time; SYNCED: the ACK's
    reason: str | None = None  # NACKED: the proxy's words
    differences: tuple[Difference, ...] = ()

    def as_dict(self) -> dict:
        return {
            "type_url": self.type_url,
            "state": self.state,
            "since_ms": self.since_ms,
            "reason": self.reason,
            "differences": [
                {"name": d.name, "told": d.told, "acked": d.acked, "rejected": d.rejected} for d in self.differences
            ],
        }


def differences(told: Mapping[str, str], sync: TypeSync | None) -> tuple[Difference, ...]:
    held = sync.held if sync is not None else {}
    rejected = sync.nack.rejected if sync is not None and sync.nack is not None else {}
    out = []
    for name in sorted(told.keys() | held.keys()):
        if told.get(name) != held.get(name):
            out.append(Difference(name, told.get(name), held.get(name), rejected.get(name)))
    return tuple(out)


def compare_type(type_url: str, told: Mapping[str, str], sync: TypeSync | None,
                 view_changed_ms: int | None) -> TypeStatus:
    if sync is None or (sync.acked_ms is None and sync.nack is None):
        if not told:
            return TypeStatus(type_url, SYNCED)
        return TypeStatus(type_url, NOT_SENT, differences=differences(told, None))
    diff = differences(told, sync)
    if sync.nack is not None:
        return TypeStatus(type_url, NACKED, sync.nack.at_ms, sync.nack.reason, diff)
    if not diff:
        return TypeStatus(type_url, SYNCED, sync.acked_ms)
    return TypeStatus(type_url, STALE, view_changed_ms, None, diff)


def compare_proxy(told: Mapping[str, Mapping[str, str]], proxy: ProxySync | None,
                  view_changed_ms: int | None) -> dict[str, TypeStatus]:
    """Per type URL (those told, and those the proxy answered), the proxy's status."""
    types = sorted(set(told) | (set(proxy.types) if proxy is not None else set()))
    synced = proxy.types if proxy is not None else {}
    return {u: compare_type(u, told.get(u, {}), synced.get(u), view_changed_ms) for u in types}
