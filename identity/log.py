"""Reading and writing the identities topic (the I/O around ``identity.registry``).

``IdentityLog`` keeps a ``Registry`` folded from ``meshlog.identities`` and
can catch up to a given offset (``catch_up``) or to the current end
(``sync``). It holds nothing that the log cannot rebuild: a restarted
``ca serve`` replica reads the topic from the beginning.

Invariants:
- One reader at a time advances the fold (a lock); a caller waiting for
  offset O returns only once every record before O is folded, so a decision
  made after ``catch_up(O)`` sees all of the log up to O.
- Records that do not decode are skipped with a warning (counted in
  ``undecodable``), never folded and never fatal; the log keeps its bad
  records for ``replay``.
- Given ``admit`` (e.g. ``identity.verifier.Verifier.identity_refusal``: only
  what a configured mesh root signed), a record it refuses is skipped with a
  warning and counted in ``refused``: a forged revocation or issuance written
  by anyone the broker lets write this topic changes nothing here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from events import topics
from events.codec import decode_record
from events.envelope import Logged
from events.errors import EventValidationError
from identity.registry import EMPTY, Registry, fold_many
from replay.source import new_consumer

log = logging.getLogger("identity.log")

PARTITION = TopicPartition(topics.IDENTITIES, 0)


class LogUnavailable(RuntimeError):
    """The identities topic could not be read in time: the CA refuses rather than decide blind."""


class IdentityLog:
    def __init__(self, bootstrap: str, *, timeout_s: float = 15.0,
                 admit: Callable[[Logged], str | None] | None = None) -> None:
        self._bootstrap = bootstrap
        self._timeout_s = timeout_s
        self._admit = admit
        self.refused = 0
        self._consumer = new_consumer(bootstrap, request_timeout_ms=int(timeout_s * 1000))
        self._lock = asyncio.Lock()
        self.registry: Registry = EMPTY
        self.position = 0
        self.undecodable = 0

    async def __aenter__(self) -> "IdentityLog":
        try:
            await asyncio.wait_for(self._consumer.start(), self._timeout_s)
        except (asyncio.TimeoutError, KafkaError, OSError) as exc:
            await self.close()
            raise LogUnavailable(f"Kafka at {self._bootstrap} did not answer within {self._timeout_s:g}s "
                                 f"({type(exc).__name__})") from None
        try:
            known = await asyncio.wait_for(self._consumer.topics(), self._timeout_s)
        except (asyncio.TimeoutError, KafkaError) as exc:
            await self.close()
            raise LogUnavailable(f"Kafka at {self._bootstrap} did not list its topics ({type(exc).__name__})") from None
        if topics.IDENTITIES not in known:
            await self.close()
            raise LogUnavailable(f"topic {topics.IDENTITIES} does not exist: run `meshlog topics ensure`")
        self._consumer.assign([PARTITION])
        await self._consumer.seek_to_beginning(PARTITION)
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._consumer.stop(), self._timeout_s)
        except Exception:  # noqa: BLE001 - closing after a failure must not mask it
            pass

    async def end_offset(self) -> int:
        try:
            ends = await asyncio.wait_for(self._consumer.end_offsets([PARTITION]), self._timeout_s)
        except (asyncio.TimeoutError, KafkaError) as exc:
            raise LogUnavailable(f"end of {topics.IDENTITIES} unknown: {type(exc).__name__}") from None
        return ends[PARTITION]

    def _note_refused(self, logged: Logged, why: str) -> None:
        self.refused += 1
        log.warning("not folding %s at %s/%d: %s", logged.envelope.type, topics.IDENTITIES, logged.offset,
                    str(why)[:200])

    async def sync(self) -> Registry:
        """Fold everything logged until now."""
        return await self.catch_up(await self.end_offset())

    async def catch_up(self, offset: int) -> Registry:
        """Fold every record before ``offset``."""
        async with self._lock:
            deadline = time.monotonic() + self._timeout_s
            while self.position < offset:
                if time.monotonic() > deadline:
                    raise LogUnavailable(f"{topics.IDENTITIES} did not reach offset {offset} within "
                                         f"{self._timeout_s:g}s (at {self.position})")
                try:
                    fetched = await self._consumer.getmany(PARTITION, timeout_ms=200, max_records=5000)
                except KafkaError as exc:
                    raise LogUnavailable(f"reading {topics.IDENTITIES} failed: {type(exc).__name__}") from None
                events = []
                for record in fetched.get(PARTITION, ()):
                    try:
                        events.append(decode_record(record))
                    except EventValidationError as exc:
                        self.undecodable += 1
                        log.warning("skipping undecodable record %s/%d: %s", topics.IDENTITIES, record.offset,
                                    str(exc)[:200])
                if events and self._admit is not None:
                    events = admitted(events, self._admit, self._note_refused)
                if events:
                    self.registry = fold_many(self.registry, events)
                # by position, not by the last record: transaction markers leave offset gaps
                self.position = await self._consumer.position(PARTITION)
            return self.registry


def admitted(events: list[Logged], admit: Callable[[Logged], str | None],
             on_refused: Callable[[Logged], None] | Callable[[Logged, str], None]) -> list[Logged]:
    """The events ``admit`` finds nothing against (it returns a refusal reason, or None), in order; each
    refused one is handed to ``on_refused(event, reason)``."""
    out = []
    for logged in events:
        why = admit(logged)
        if why is None:
            out.append(logged)
        else:
            on_refused(logged, why)
    return out
