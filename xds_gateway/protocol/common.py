"""Records and helpers shared by the delta and state-of-the-world machines."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable, TypeVar

from .resources import type_rank

__all__ = ["Acked", "Nack", "ProtocolError", "ReportsSync", "AllowFn", "CLIENT_TEXT_MAX", "entry_hash", "content_version",
           "order_segments"]

#: ``allowed(type_url, name)``: may this node subscribe to this name explicitly?
AllowFn = Callable[[str, str], bool]

_MASK64 = (1 << 64) - 1

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


class ReportsSync:
    """What both stream machines tell the gateway's sync log (each keeps ``_types[url].acked`` and ``_learned``)."""

    _types: dict
    _learned: list | None

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


@dataclass(frozen=True)
class ProtocolError:
    """A request the machine could not honour (it answered nothing)."""

    stream_id: str
    node_id: str
    kind: str  # "unknown_type_url"
    type_url: str
    detail: str


def entry_hash(name: str, version: str) -> int:
    """A 64-bit hash of one (name, version) entry, for order-free digests."""
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
