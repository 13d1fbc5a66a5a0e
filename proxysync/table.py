"""Fold of the ``meshlog.sync`` topic: one row per proxy (node) with its stream and what it holds.

Invariants:
- Pure and deterministic: ``SyncTable.apply`` looks only at the event (its
  payload, ``occurred_at`` and log position); no clock, no I/O. The same
  records give the same table for ``meshlog status`` and for ``replay``.
- A proxy has one current stream. A stream opened by the same node on any
  gateway supersedes the one before it (Envoy holds one ADS stream; after a
  ``kill -9`` of its gateway nothing else says the old stream ended), and a
  superseded or closed stream's later ACK/NACK records are ignored (a dying
  gateway may flush late). A fact from a stream never seen opening (its
  opened record was dropped) makes that stream current.
- What a proxy holds survives a reconnect (Envoy keeps its config and sends
  it as ``initial_resource_versions``), so per-type sync state belongs to the
  node, not to the stream. An ACK replaces the type's held versions and clears
  an earlier NACK; a NACK leaves them as they were.
- Times are the gateway's ``occurred_at`` (when it saw the ACK), in ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from events import types as t
from events.envelope import Logged

#: superseded/closed streams remembered per proxy (to ignore their late records and to show where it was)
PREVIOUS_STREAMS = 4


@dataclass(slots=True)
class StreamInfo:
    gateway: str
    stream_id: str
    kind: str
    peer: str
    identity: str | None
    opened_ms: int
    closed_ms: int | None = None
    close_reason: str | None = None  # a ProxyStreamClosed reason, or "superseded"
    superseded_by: str | None = None  # "<gateway>/<stream_id>" of the stream that replaced it

    @property
    def ref(self) -> str:
        return f"{self.gateway}/{self.stream_id}"

    @property
    def open(self) -> bool:
        return self.closed_ms is None


@dataclass(frozen=True, slots=True)
class NackInfo:
    at_ms: int
    nonce: str
    reason: str
    rejected: dict[str, str]
    removed: tuple[str, ...]


@dataclass(slots=True)
class TypeSync:
    held: dict[str, str] = field(default_factory=dict)  # from the last ACK: name -> version
    acked_ms: int | None = None
    nonce: str | None = None
    truncated: bool = False
    nack: NackInfo | None = None  # the latest NACK since the last ACK


@dataclass(slots=True)
class ProxySync:
    node: str
    stream: StreamInfo
    previous: list[StreamInfo] = field(default_factory=list)  # newest last
    types: dict[str, TypeSync] = field(default_factory=dict)

    def stream_named(self, gateway: str, stream_id: str) -> StreamInfo | None:
        for s in (self.stream, *self.previous):
            if s.gateway == gateway and s.stream_id == stream_id:
                return s
        return None


def _ms(logged: Logged) -> int:
    return int(logged.envelope.occurred_at.timestamp() * 1000)


class SyncTable:
    """node -> ``ProxySync``, folded from sync events in log order."""

    def __init__(self) -> None:
        self.proxies: dict[str, ProxySync] = {}
        self.records = 0
        self.last_ms: int | None = None

    def apply_all(self, records: Iterable[Logged]) -> "SyncTable":
        for logged in records:
            self.apply(logged)
        return self

    def apply(self, logged: Logged) -> None:
        p = logged.payload
        if not isinstance(p, (t.ProxyStreamOpened, t.ProxyStreamClosed, t.ProxyAcked, t.ProxyNacked)):
            return
        self.records += 1
        at = _ms(logged)
        self.last_ms = at if self.last_ms is None else max(self.last_ms, at)
        if isinstance(p, t.ProxyStreamOpened):
            self._open(p.node, StreamInfo(p.gateway, p.stream_id, p.kind, p.peer, p.identity, at))
            return
        proxy = self.proxies.get(p.node)
        stream = proxy.stream_named(p.gateway, p.stream_id) if proxy is not None else None
        if isinstance(p, t.ProxyStreamClosed):
            if stream is not None and stream.open:
                stream.closed_ms, stream.close_reason = at, p.reason
            return
        if stream is None:
            # its opened record was lost: the stream is real and newer than what we know
            self._open(p.node, StreamInfo(p.gateway, p.stream_id, "delta", "unknown", None, at))
            proxy = self.proxies[p.node]
        elif stream is not proxy.stream or not stream.open:
            return  # a late record of a stream that was replaced or ended
        sync = proxy.types.get(p.type_url)
        if sync is None:
            sync = proxy.types[p.type_url] = TypeSync()
        if isinstance(p, t.ProxyAcked):
            sync.held, sync.acked_ms, sync.nonce, sync.truncated, sync.nack = dict(p.held), at, p.nonce, p.truncated, None
        else:
            sync.nack = NackInfo(at, p.nonce, p.reason, dict(p.rejected), tuple(p.removed))

    def _open(self, node: str, stream: StreamInfo) -> None:
        proxy = self.proxies.get(node)
        if proxy is None:
            self.proxies[node] = ProxySync(node, stream)
            return
        old = proxy.stream
        if old.open:
            old.closed_ms, old.close_reason, old.superseded_by = stream.opened_ms, "superseded", stream.ref
        proxy.previous.append(old)
        del proxy.previous[:-PREVIOUS_STREAMS]
        proxy.stream = stream
