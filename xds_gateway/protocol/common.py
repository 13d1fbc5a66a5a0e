"""Records, helpers and the stream bookkeeping shared by the delta and state-of-the-world machines."""

from __future__ import annotations

import functools
import hashlib
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, TypeVar

from .limits import DEFAULT_STREAM_LIMITS, StreamLimits
from .resources import CORE_TYPES, type_rank

__all__ = ["Acked", "Nack", "ProtocolError", "StreamMachine", "AllowFn", "CLIENT_TEXT_MAX", "entry_hash", "content_version",
           "order_segments"]

#: ``allowed(type_url, name)``: may this node subscribe to this name explicitly?
AllowFn = Callable[[str, str], bool]

_MASK64 = (1 << 64) - 1
_EMPTY: dict = {}
_CORE_SET = frozenset(CORE_TYPES)

#: The most characters of a client's free text (a NACK's message, a type URL or nonce we do not
#: know) a machine keeps in a ``Nack``/``ProtocolError``: a stream keeps ``max_records`` of each,
#: and one request may carry megabytes.
CLIENT_TEXT_MAX = 1024


@dataclass(frozen=True)
class Nack:
    """A client's rejection of one response, kept for logs and metrics."""

    stream_id: str
    node_id: str
    type_url: str
    nonce: str
    code: int
    message: str
    #: (name, version) pairs the rejected response carried; empty when the
    #: nonce was no longer pending (stale or unknown).
    resources: tuple[tuple[str, str], ...] = ()
    #: names the rejected response removed (delta only)
    removed: tuple[str, ...] = ()
    #: the nonce was not one of this stream's pending nonces for the type
    stale: bool = False


@dataclass(frozen=True)
class Acked:
    """A client's ACK of a response: what it holds of the type now (plain data, for the sync log)."""

    type_url: str
    nonce: str
    #: name -> version of every resource of the type the client holds after applying the response
    held: dict[str, str]


class StreamMachine:
    """What the delta and state-of-the-world machines keep alike about one stream.

    The stream's identity, what the node may see (``allowed`` restricts
    explicit subscriptions, a refused name is as if it did not exist;
    ``wildcard_allowed=False`` makes a wildcard cover nothing), the current
    view, the per-type states in ``_types`` (each with ``seen``, ``pending``,
    ``dirty``, ``wildcard`` and ``acked``), the bounded records of NACKs and
    unanswerable requests, and the ACK/NACK facts for the gateway's sync log
    (with ``report_sync``). ``served_types`` are the type URLs this gateway
    answers; ``limits`` caps what one client may make the stream hold
    (:mod:`.limits`). Protocol decisions stay in the subclasses.
    """

    def __init__(
        self,
        stream_id: str,
        view,
        *,
        allowed: AllowFn | None = None,
        wildcard_allowed: bool = True,
        served_types: Iterable[str] = CORE_TYPES,
        max_records: int = 64,
        report_sync: bool = False,
        limits: StreamLimits = DEFAULT_STREAM_LIMITS,
    ) -> None:
        self.stream_id = stream_id
        self.node_id = ""
        self._view = view
        self._allowed = allowed
        self._wildcard_allowed = wildcard_allowed
        # the default set is shared by every stream (a frozenset per stream was ~200 bytes each at 10k streams)
        self._served = _CORE_SET if served_types is CORE_TYPES else frozenset(served_types)
        self._limits = limits
        self._types: dict = {}  # type URL -> the subclass's per-type state
        self._seq = 0
        # made at the first record: most streams never have one (two deques cost 1.2 kB per stream)
        self._max_records = max_records
        self._nacks: deque[Nack] | None = None
        self._errors: deque[ProtocolError] | None = None
        self.nack_count = 0
        self.ack_count = 0
        self.error_count = 0
        self.stale_nonce_count = 0
        self.responses_sent = 0
        # ACK/NACK facts for the sync log, oldest first, until the shell takes them
        self._learned: list[Acked | Nack] | None = [] if report_sync else None

    # ------------------------------------------------------------------ inputs

    def _served_request(self, req) -> bool:
        """Note the node id of the first request that carries one; False (recorded in ``errors``) for a type not served."""
        if not self.node_id and req.HasField("node"):
            self.node_id = req.node.id
        t = req.type_url
        if t in self._served:
            return True
        self.error_count += 1
        if self._errors is None:
            self._errors = deque(maxlen=self._max_records)
        self._errors.append(ProtocolError(self.stream_id, self.node_id, "unknown_type_url", t[:CLIENT_TEXT_MAX],
                                          "type not served by this gateway" if t else "empty type_url"))
        return False

    def set_scope(self, *, allowed: AllowFn | None, wildcard_allowed: bool) -> None:
        """Change what this node may see (an unknown node became known); the next ``on_view`` applies it."""
        self._allowed = allowed
        self._wildcard_allowed = wildcard_allowed

    def _take_view(self, view) -> None:
        """Adopt a new view; a requested type whose mapping is a new object is dirty (views are never mutated)."""
        old, self._view = self._view, view
        for t, ts in self._types.items():
            if ts.seen and view.get(t) is not old.get(t):
                ts.dirty = True

    def _record_nack(self, nack: Nack) -> None:
        self.nack_count += 1
        if self._nacks is None:
            self._nacks = deque(maxlen=self._max_records)
        self._nacks.append(nack)
        if self._learned is not None:
            self._learned.append(nack)

    # ----------------------------------------------------------- introspection

    @property
    def view(self):
        return self._view

    @property
    def blocked(self) -> bool:
        """True while any response on the stream awaits its ACK/NACK."""
        for ts in self._types.values():
            if ts.pending:
                return True
        return False

    @property
    def has_deferred(self) -> bool:
        """True if view changes are waiting for the pending responses' ACKs."""
        return any(ts.dirty for ts in self._types.values())

    def types(self) -> tuple[str, ...]:
        """Type URLs the client has requested on this stream."""
        return tuple(t for t, ts in self._types.items() if ts.seen)

    def is_wildcard(self, type_url: str) -> bool:
        ts = self._types.get(type_url)
        return bool(ts and ts.wildcard)

    @property
    def nacks(self) -> tuple[Nack, ...]:
        """The most recent NACKs (bounded); ``nack_count`` counts all."""
        return tuple(self._nacks or ())

    @property
    def errors(self) -> tuple[ProtocolError, ...]:
        """The most recent unanswerable requests (bounded); ``error_count`` counts all."""
        return tuple(self._errors or ())

    def acked_versions(self, type_url: str) -> dict[str, str]:
        """What the client holds of a type, as far as its ACKs tell: name -> version."""
        ts = self._types.get(type_url)
        return dict(ts.acked) if ts else {}

    def take_learned(self) -> list:
        """The ACKs and NACKs (``Acked``/``Nack``) seen since the last call (only with ``report_sync``), oldest first."""
        learned = self._learned
        if not learned:
            return []
        self._learned = []
        return learned

    # --------------------------------------------------------------- internals

    def _view_of(self, type_url: str):
        return self._view.get(type_url) or _EMPTY

    def _permits(self, type_url: str, name: str) -> bool:
        return self._allowed is None or self._allowed(type_url, name)


@dataclass(frozen=True)
class ProtocolError:
    """A request the machine could not honour (it answered nothing)."""

    stream_id: str
    node_id: str
    kind: str  # "unknown_type_url"
    type_url: str
    detail: str


@functools.lru_cache(maxsize=1 << 14)
def entry_hash(name: str, version: str) -> int:
    """A 64-bit hash of one (name, version) entry, for order-free digests.

    Memoized: every stream sent a resource hashes the same entry, so most calls are a cache hit
    (16,384 entries, about 3 MB at most).
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(name.encode())
    h.update(b"\0")
    h.update(version.encode())
    return int.from_bytes(h.digest(), "big")


def digest_hex(acc: int) -> str:
    return format(acc & _MASK64, "016x")


def content_version(entries: Iterable[tuple[str, str]]) -> str:
    """Order-independent version string of a set of (name, version) entries."""
    acc = 0
    for name, version in entries:
        acc = (acc + entry_hash(name, version)) & _MASK64
    return digest_hex(acc)


S = TypeVar("S")


def order_segments(
    upserts: dict[str, S], removals: dict[str, S], merge: Callable[[S, S], S]
) -> list[tuple[str, S]]:
    """Make-before-break ordering of one batch of per-type work.

    ``upserts`` and ``removals`` map type URL -> that type's part of the batch.
    The result is: upserts in CDS, EDS, LDS, RDS (then other types) order,
    followed by removals in the reverse order (RDS, LDS, EDS, CDS). Adjacent
    segments of the same type are merged with ``merge`` (so a change touching
    one type only yields one response).
    """
    seq: list[tuple[str, S]] = []
    for t in sorted(upserts, key=type_rank):
        seq.append((t, upserts[t]))
    for t in sorted(removals, key=type_rank, reverse=True):
        seq.append((t, removals[t]))
    out: list[tuple[str, S]] = []
    for t, seg in seq:
        if out and out[-1][0] == t:
            out[-1] = (t, merge(out[-1][1], seg))
        else:
            out.append((t, seg))
    return out
