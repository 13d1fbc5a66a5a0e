"""The identities topic for the live projector: read far enough before each batch is verified.

The projector verifies every event it folds against the identity that held
the event's signing serial at the event's log time (``identity.verifier``).
That answer is only right if every identity fact logged at or before that
time has been folded into the verifier's registry; this module makes sure of
it, with its own consumer of ``meshlog.identities`` (no consumer group,
read_committed, from the beginning: the topic is small, one record per
issuance or revocation).

Invariants:
- ``cover(t)`` returns only once every identity record logged at or before
  broker time ``t`` is folded: it reads the topic to its end offset as of a
  moment after the batch's events were read. An identity record with
  LogAppendTime <= t was appended before an event logged at t (one broker
  clock per partition leader; with several brokers, up to their clock skew),
  so it is below that end. Hence live verification gives the answers replay
  gives (replay reads the whole topic, and the registry answers by log time).
- ``cover`` costs one ListOffsets request when the batch holds events newer
  than the last covered time, and nothing otherwise.
- With a mesh root configured (``identity.verifier.configured_roots``), an
  identity record the root did not sign is refused with a warning naming it
  (``Verifier.update``), and folded nowhere.
- An undecodable identity record is skipped with a warning (its writers are
  the CA servers; the registry ignores what it cannot read, as replay does).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from events import topics
from events.admin import BrokerUnavailable
from events.kafka_security import connection_kwargs
from events.undecodable import try_decode
from events.errors import EventValidationError
from identity.verifier import Verifier

log = logging.getLogger("projector.identities")


class IdentityFeed:
    """``await feed.start()``, then ``await feed.cover(max_ts)`` before verifying a batch."""

    def __init__(self, bootstrap: str, verifier: Verifier, *, timeout_s: float = 30.0) -> None:
        self.bootstrap = bootstrap
        self.verifier = verifier
        self.timeout_s = timeout_s
        self.covered_ms = -1  # every identity record logged at or before this is folded
        self.records = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []

    async def start(self, partitions: list[int]) -> None:
        """Read the topic's ``partitions`` from the beginning to their current end."""
        self._consumer = AIOKafkaConsumer(
            **connection_kwargs(self.bootstrap), group_id=None, enable_auto_commit=False,
            isolation_level="read_committed", auto_offset_reset="earliest", client_id="meshlog-projector-identities",
        )
        try:
            await asyncio.wait_for(self._consumer.start(), self.timeout_s)
        except (KafkaError, asyncio.TimeoutError, OSError) as exc:
            raise BrokerUnavailable(f"Kafka at {self.bootstrap} did not answer ({type(exc).__name__}: {exc})") from None
        self._tps = [TopicPartition(topics.IDENTITIES, p) for p in sorted(partitions)]
        self._consumer.assign(self._tps)
        await self._consumer.seek_to_beginning(*self._tps)
        await self.catch_up()
        log.info("identities: %d records folded (%d certificates, %d revocations)", self.records,
                 len(self.verifier.registry.certificates), len(self.verifier.registry.revocations))

    async def stop(self) -> None:
        if self._consumer is not None:
            try:
                await asyncio.wait_for(self._consumer.stop(), 10)
            finally:
                self._consumer = None

    async def catch_up(self) -> None:
        """Fold every identity record below the topic's current end."""
        consumer = self._consumer
        assert consumer is not None
        ends = await asyncio.wait_for(consumer.end_offsets(self._tps), self.timeout_s)
        pending = [tp for tp in self._tps if await consumer.position(tp) < ends[tp]]
        while pending:
            batch = await asyncio.wait_for(consumer.getmany(*pending, timeout_ms=1000), self.timeout_s)
            events = []
            for recs in batch.values():
                for r in recs:
                    got = try_decode(r)
                    if isinstance(got, EventValidationError):
                        log.warning("identities: skipping undecodable record %s/%d/%d", r.topic, r.partition, r.offset)
                    else:
                        events.append(got)
            self.records += len(events)
            refused = self.verifier.identities_refused
            self.verifier.update(events)
            new = self.verifier.identities_refused - refused
            if new:  # not signed by the mesh root: folded nowhere (the first 10 of a batch named, the rest counted)
                for lg, why in self.verifier.refused_identities[-min(new, 100):][:10]:
                    log.warning("identities: refused %s/%d/%d: %s", lg.topic, lg.partition, lg.offset, why)
                log.warning("identities: %d refused in this read, %d in all", new, self.verifier.identities_refused)
            pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]

    async def cover(self, ts_ms: int | None) -> None:
        """Return once every identity record logged at or before ``ts_ms`` is folded."""
        if ts_ms is None or ts_ms <= self.covered_ms:
            return
        await self.catch_up()
        self.covered_ms = ts_ms
