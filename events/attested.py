"""The received digests that believed attestations name, kept in the order they were attested.

A replay reads the event topics in the merge order the projector folded them
in, and the projector attests what it found good in its fold order: the next
signed record replay sees is nearly always the next digest the attestations
list. So the digests are kept as one byte string, in order (``body``), and
each reader (``events.record_decoder``, ``identity.verifier``) keeps its own
cursor into it. A record is attested if its digest is the one at the reader's
cursor (one ``startswith`` on memory read in sequence), and otherwise if it is
in the set of all of them (``in``), which is built on the first such miss.
Measured on a million digests: a set lookup ~260 ns (two cache misses: its
table and the stored key), building the set ~0.6-0.9 us a digest; the cursor
~150 ns and nothing to build.

Invariants:
- Membership is exactly set membership of the digests added, whatever the
  order records come in: the cursor step confirms only a 32-byte digest that
  ``body`` holds at a 32-byte boundary (``at``), and anything else asks the
  set, which holds every digest of ``body``.
- ``add`` only appends (the set, once built, is kept up to date): a cursor
  stays valid, and nothing once attested stops being so.
- A reader that takes a record out of order (a record no attestation names,
  or an order the projector did not fold in) pays what a set paid before; its
  cursor stays where it was, so order that resumes is found again.
"""

from __future__ import annotations

from typing import Iterable, Iterator

#: a received digest: SHA-256 (``events.envelope.received_digest_of``)
DIGEST_BYTES = 32


class AttestedDigests:
    """Attested received digests: ``at(digest, cursor)`` for readers in order, ``digest in attested`` for any."""

    __slots__ = ("body", "_set")

    def __init__(self, digests: Iterable[bytes] = ()) -> None:
        self.body = bytearray()  # every digest added, back to back, in the order added
        self._set: set[bytes] | None = None  # the same digests, built on the first lookup that needs it
        self.add(digests)

    @classmethod
    def of_body(cls, body: bytes) -> "AttestedDigests":
        """From digests already back to back (an attestation's body, or ``bytes(other.body)``)."""
        attested = cls()
        attested.add_body(body)
        return attested

    def add(self, digests: Iterable[bytes]) -> None:
        digests = list(digests)
        if any(len(d) != DIGEST_BYTES for d in digests):
            raise ValueError(f"a received digest is {DIGEST_BYTES} bytes")
        self.add_body(b"".join(digests))

    def add_body(self, body: bytes) -> None:
        if len(body) % DIGEST_BYTES:
            raise ValueError(f"digests back to back: a multiple of {DIGEST_BYTES} bytes, not {len(body)}")
        self.body += body
        if self._set is not None:
            self._set.update(_split(bytes(body)))

    def at(self, digest: bytes, cursor: int) -> bool:
        """Whether ``digest`` is the one at ``cursor`` (a multiple of 32): what readers inline as
        ``len(digest) == 32 and body.startswith(digest, cursor)``; the caller then moves its cursor by 32."""
        return len(digest) == DIGEST_BYTES and self.body.startswith(digest, cursor)

    def __contains__(self, digest: object) -> bool:
        found = self._set
        if found is None:
            if not self.body:
                return False  # nothing attested (a live projector's verifier): no set to build
            found = self._set = set(_split(bytes(self.body)))
        return digest in found

    def __len__(self) -> int:
        return len(self.body) // DIGEST_BYTES

    def __bool__(self) -> bool:
        return bool(self.body)

    def __iter__(self) -> Iterator[bytes]:
        return iter(_split(bytes(self.body)))


def _split(body: bytes) -> list[bytes]:
    return [body[i: i + DIGEST_BYTES] for i in range(0, len(body), DIGEST_BYTES)]
